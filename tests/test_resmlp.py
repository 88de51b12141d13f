"""arch=resmlp: the batched runner against one nn.Module per block with autograd, the config
keys' errors, and the mean-field theory against closed forms and the simulated ensemble."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import norm

from harness.archs import resmlp
from harness.bench import _naive_one
from harness.core import activations
from harness.core.validate import ConfigError
from harness.sim import reference
from harness.sim.runner import measure, sample_chunk
from harness.theory.meanfield import predict
from tests.conftest import small_spec

# Family-wise false-positive rate of each statistical test; per-comparison threshold
# z = Φ^{-1}(1 − ALPHA / (2m)) for m two-sided comparisons (Bonferroni).
ALPHA = 1e-3


def z_crit(m: int) -> float:
    return float(norm.isf(ALPHA / (2 * m)))


def reference_stats(spec, weights, biases, x0, cot):
    """One nn.Sequential of `ResidualBlock`s per replicate (`harness.sim.reference`); autograd
    for δ^l = ∂loss/∂x^l; per-example weight gradients one example at a time."""
    R, L, m = x0.shape[0], spec.depth, spec.residual_branch_depth
    out = {k: np.zeros((R, L)) for k in ("forward", "branch", "backward")}
    out["weight_grad"] = np.zeros((R, L * m))
    for r, net in enumerate(reference.ensemble(spec, weights, biases)):
        xs: list[torch.Tensor] = []  # x^l, with .grad = δ^l after backward
        fs: list[torch.Tensor] = []  # f_l, the branch output

        def keep_x(module, inputs, output, xs=xs):
            output.retain_grad()
            xs.append(output)

        def keep_f(module, inputs, output, fs=fs):
            fs.append(output)

        hooks = [blk.register_forward_hook(keep_x) for blk in net]
        hooks += [blk.layers[-1].register_forward_hook(keep_f) for blk in net]
        y = net(x0[r])
        for h in hooks:
            h.remove()
        (y * cot[r]).sum().backward()
        for l in range(L):
            out["forward"][r, l] = xs[l].detach().square().mean()
            out["branch"][r, l] = fs[l].detach().square().mean()
            out["backward"][r, l] = xs[l].grad.square().mean()
        linears = reference.layers(net)
        assert len(linears) == L * m
        per_example = np.zeros((x0.shape[1], L * m))
        for b in range(x0.shape[1]):
            net.zero_grad()
            (net(x0[r, b : b + 1]) * cot[r, b : b + 1]).sum().backward()
            per_example[b] = [lin.weight.grad.square().mean().item() for lin in linears]
        out["weight_grad"][r] = per_example.mean(0)
    return out


CASES = [
    ("act=relu",),
    ("act=tanh", "residual.branch_depth=2", "bias_std=0.3"),
    ("act=gelu", "residual.branch_depth=2", "residual.alpha=0.7", "residual.depth_scaling=sqrt"),
    ("act=selu", "residual.nf=true", "residual.alpha=0.4", "input_var=2.0"),
    ("act=softplus", "residual.branch_depth=2", "residual.nf=true", "residual.depth_scaling=linear",
     "bias_std=0.2"),
    ("act=linear", "residual.alpha=0"),
    ("act=relu", "scheme=fixup", "residual.branch_depth=2", "bias_std=0.1"),
]


@pytest.mark.parametrize("overrides", CASES, ids=lambda o: ",".join(o))
def test_batched_equals_residual_blocks_with_autograd(overrides):
    spec = small_spec("arch=resmlp", "depth=3", "width=6", "batch=4", "replicates=3",
                      "dtype=float64", "device=cpu", *overrides)
    g = torch.Generator().manual_seed(3)
    weights, biases, x0, cot = sample_chunk(spec, spec.replicates, g)
    assert len(weights) == spec.depth * spec.residual_branch_depth
    got = spec.architecture.propagate(spec, weights, biases, x0, cot)
    want = reference_stats(spec, weights, biases, x0, cot)
    for k, v in want.items():
        np.testing.assert_allclose(got[k].numpy(), v, rtol=1e-10, atol=1e-14, err_msg=k)
    # correlation: mean cosine of the stream between the inputs, from the reference's x^L
    net = reference.member(spec, weights, biases, 0)
    with torch.no_grad():
        y = net(x0[0])
    u = y / y.norm(dim=-1, keepdim=True)
    cos = (u @ u.T)[~torch.eye(4, dtype=torch.bool)].mean()
    np.testing.assert_allclose(got["correlation"][0, -1].item(), cos.item(), rtol=1e-10)


def test_residual_keys_are_rejected_for_other_architectures():
    with pytest.raises(ConfigError, match=r"residual.alpha applies to arch=resmlp"):
        small_spec("arch=mlp", "residual.alpha=0.5")
    with pytest.raises(ConfigError, match=r"residual.nf applies to arch=resmlp"):
        small_spec("arch=conv", "residual.nf=true")
    with pytest.raises(ConfigError, match="branch_depth must be 1 or 2"):
        small_spec("arch=resmlp", "residual.branch_depth=3")
    with pytest.raises(ConfigError, match="alpha must be a finite number ≥ 0"):
        small_spec("arch=resmlp", "residual.alpha=-1")
    with pytest.raises(ConfigError, match="unknown residual.depth_scaling"):
        small_spec("arch=resmlp", "residual.depth_scaling=cubic")
    with pytest.raises(ConfigError, match="one width"):
        small_spec("arch=resmlp", "depth=2", "widths=[4,5,4]")


def test_alpha_schedules_and_nf_betas():
    spec = small_spec("arch=resmlp", "depth=16", "residual.alpha=0.5", "residual.depth_scaling=sqrt",
                      "residual.nf=true", "input_var=2.0")
    np.testing.assert_allclose(resmlp.alphas(spec), 0.5 / 4)
    # β_1² = input_var, β_{l+1}² = β_l² + α_l²
    np.testing.assert_allclose(resmlp.betas2(spec), 2.0 + np.arange(16) * (0.5 / 4) ** 2)
    lin = small_spec("arch=resmlp", "depth=16", "residual.depth_scaling=linear")
    np.testing.assert_allclose(resmlp.alphas(lin), 1 / 16)


def test_nf_gamma_relu_closed_form():
    # std relu(z) = √(1/2 − 1/(2π))
    got = resmlp.nf_gamma(activations.get("relu"))
    assert got == pytest.approx(1 / math.sqrt(0.5 - 1 / (2 * math.pi)), rel=1e-10)
    # an odd φ has mean 0: γ = V_φ(1)^(-1/2)
    tanh = activations.get("tanh")
    assert resmlp.nf_gamma(tanh) == pytest.approx(float(tanh.V(1.0)) ** -0.5, rel=1e-10)


def test_relu_kaiming_theory_closed_form():
    """m = 1, relu, kaiming fan_in: B^l = 2·q/2 = q, so q^l = (1 + α²)^l q_0, g^l = (1 + α²)^{L-l}."""
    spec = small_spec("arch=resmlp", "act=relu", "depth=7", "residual.alpha=0.6", "input_var=0.5")
    p = predict(spec)
    l = np.arange(1, 8)
    a2 = 0.36
    np.testing.assert_allclose(p["forward"], 0.5 * (1 + a2) ** l, rtol=1e-13)
    np.testing.assert_allclose(p["branch"], 0.5 * (1 + a2) ** (l - 1), rtol=1e-13)
    np.testing.assert_allclose(p["backward"], (1 + a2) ** (7 - l), rtol=1e-13)
    # ∂loss/∂W^l moment = α² g^l E[relu(x^{l-1})²] = α² g^l q^{l-1}/2
    np.testing.assert_allclose(p["weight_grad"], a2 * (1 + a2) ** (7 - l) * 0.5 * (1 + a2) ** (l - 1) / 2,
                               rtol=1e-13)


def test_zero_alpha_is_identity_in_theory():
    spec = small_spec("arch=resmlp", "act=tanh", "depth=5", "residual.alpha=0", "input_corr=0.3",
                      "residual.branch_depth=2")
    p = predict(spec)
    np.testing.assert_allclose(p["forward"], 1.0, rtol=1e-14)
    np.testing.assert_allclose(p["correlation"], 0.3, rtol=1e-14)
    # exact arithmetic: every weight-gradient moment is α² = 0 times finite factors
    assert (p["weight_grad"] == 0.0).all(), p["weight_grad"]


def _check_against_theory(spec):
    m = measure(spec, progress=False)
    th = predict(spec)
    qs = [q for q in spec.quantities if q != "correlation"]
    n_cmp = sum(th[q].size for q in qs)
    z = z_crit(n_cmp)
    for q in qs:
        v = m.values[q]
        mean, sem = v.mean(0), v.std(0, ddof=1) / math.sqrt(v.shape[0])
        # pure sampling error: |mean − theory| ≤ z·s.e. (Bonferroni over every layer and quantity)
        bad = np.abs(mean - th[q]) > z * sem
        assert not bad.any(), (q, mean[bad], th[q][bad], sem[bad])


@pytest.mark.parametrize("overrides", [
    ("act=relu", "residual.branch_depth=2", "residual.depth_scaling=sqrt"),
    ("act=linear", "bias_std=0.3", "residual.alpha=0.5"),
])
def test_measured_agrees_with_theory_at_width_512(overrides):
    spec = small_spec("arch=resmlp", "depth=6", "width=512", "batch=16", "replicates=24",
                      "device=cpu", *overrides)
    _check_against_theory(spec)


@pytest.mark.slow
@pytest.mark.parametrize("overrides", [
    ("act=relu",),
    ("act=leaky_relu", "residual.branch_depth=2", "bias_std=0.2"),
    ("act=relu", "residual.nf=true", "residual.alpha=0.3", "residual.branch_depth=2"),
    ("act=tanh", "residual.branch_depth=2", "residual.depth_scaling=sqrt"),
    ("act=gelu", "residual.nf=true", "residual.alpha=0.5"),
])
def test_measured_agrees_with_theory_slow(overrides):
    spec = small_spec("arch=resmlp", "depth=12", "width=1024", "batch=32", "replicates=32",
                      "device=cpu", *overrides)
    _check_against_theory(spec)


def test_fixup_scales_and_errors():
    spec = small_spec("arch=resmlp", "scheme=fixup", "depth=9", "width=16", "residual.branch_depth=2",
                      "act=relu")
    # kaiming's 2/n inside the branch times L^(-1/(2m-2))² = 1/9; the last layer 0
    np.testing.assert_allclose(spec.weight_variances(), [2 / 16 / 9, 0.0] * 9, rtol=1e-14)
    g = torch.Generator().manual_seed(0)
    weights, _, _, _ = sample_chunk(spec, 2, g)
    assert all(bool((w == 0).all()) for w in weights[1::2])
    # drawn std of the first layers: √(2/16/9) within sampling error (2·16·16·9 entries; 5 s.e.)
    first = torch.cat([w.ravel() for w in weights[0::2]])
    assert abs(first.var().item() / (2 / 16 / 9) - 1) < 5 * math.sqrt(2 / first.numel())
    with pytest.raises(ConfigError, match="scheme fixup .* ≥ 2; got residual.branch_depth=1"):
        small_spec("arch=resmlp", "scheme=fixup")
    with pytest.raises(ConfigError, match="scheme fixup .* got no residual branches"):
        small_spec("arch=mlp", "scheme=fixup")


def test_fixup_output_is_depth_independent_and_last_layer_gradient_nonzero():
    for depth in (4, 16):
        spec = small_spec("arch=resmlp", "scheme=fixup", f"depth={depth}", "width=64", "batch=8",
                          "replicates=4", "residual.branch_depth=2", "input_var=1.5", "device=cpu")
        th = predict(spec)
        np.testing.assert_allclose(th["forward"], 1.5, rtol=1e-14)
        np.testing.assert_allclose(th["backward"], 1.0, rtol=1e-14)
        assert (th["weight_grad"][1::2] > 0).all() and (th["weight_grad"][0::2] == 0).all()
        m = measure(spec, progress=False)
        # the branches output exactly 0: the stream is x^0 at every block, exactly
        v = m.values["forward"]
        np.testing.assert_allclose(v, np.repeat(v[:, :1], depth, axis=1), rtol=1e-6)
        assert (m.values["weight_grad"][:, 1::2] > 0).all()
        assert (m.values["weight_grad"][:, 0::2] == 0).all()


def test_nf_linear_stream_follows_one_plus_l_alpha_squared():
    """Brock et al. 2021: with φ = identity (γ = 1) and unit-variance branches the NF stream has
    variance input_var + l·α²; the branch sees x/β_l of variance exactly 1."""
    spec = small_spec("arch=resmlp", "act=linear", "depth=10", "residual.nf=true",
                      "residual.alpha=0.3", "input_var=1.0")
    p = predict(spec)
    np.testing.assert_allclose(p["forward"], 1 + 0.09 * np.arange(1, 11), rtol=1e-12)
    np.testing.assert_allclose(p["branch"], 1.0, rtol=1e-12)


def test_ws_standardizes_rows_and_theory_removes_the_mean():
    spec = small_spec("arch=resmlp", "act=relu", "ws=true", "depth=3", "width=32",
                      "residual.branch_depth=2", "device=cpu")
    weights, _, _, _ = sample_chunk(spec, 2, torch.Generator().manual_seed(0))
    g = spec.gain
    for w in weights:  # every row: mean 0, Σ_j W_ij² = g²
        np.testing.assert_allclose(w.sum(-1).numpy(), 0.0, atol=1e-5)
        np.testing.assert_allclose(w.square().sum(-1).numpy(), g * g, rtol=1e-5)
    # relu, σ² = g² = 2, q_0 = 1: h₁ = 2 (V − M²)(1) = 2 (1/2 − 1/(2π)), B = 2 (1/2 − 1/(2π)) p
    p = predict(spec)
    var1 = 0.5 - 1 / (2 * math.pi)
    assert p["branch"][0] == pytest.approx(2 * var1 * 2 * var1, rel=1e-9)
    with pytest.raises(ConfigError, match="ws is implemented for arch=mlp, arch=resmlp, arch=resconv only"):
        small_spec("arch=conv", "ws=true")


@pytest.mark.parametrize("arch", [("arch=mlp", "depth=6"), ("arch=resmlp", "depth=6", "residual.nf=true",
                                                             "residual.alpha=0.5")])
def test_ws_measured_agrees_with_theory(arch):
    spec = small_spec(*arch, "act=relu", "ws=true", "width=512", "batch=16", "replicates=24",
                      "device=cpu")
    _check_against_theory(spec)


def test_bench_naive_loop_measures_what_the_runner_does():
    """harness.bench's naive baseline (hooks on one ResidualBlock network) gives the runner's
    numbers on the same weights, inputs and cotangents."""
    spec = small_spec("arch=resmlp", "depth=3", "width=6", "batch=4", "replicates=2", "act=tanh",
                      "dtype=float64", "device=cpu", "residual.branch_depth=2", "residual.alpha=0.5")
    weights, biases, x0, cot = sample_chunk(spec, 2, torch.Generator().manual_seed(5))
    got = spec.architecture.propagate(spec, weights, biases, x0, cot)
    for r, net in enumerate(reference.ensemble(spec, weights, biases)):
        rec = _naive_one(net, spec, x0[r], cot[r])
        for k in ("forward", "branch", "backward", "weight_grad"):
            np.testing.assert_allclose(rec[k], got[k][r].numpy(), rtol=1e-10, err_msg=k)
