"""Normalization layers (harness.core.norms): the batched runner against reference networks built
from torch's own nn.BatchNorm1d/2d, nn.LayerNorm and nn.RMSNorm with autograd, the config's checks,
and the registry's torch semantics."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import harness
from harness.bench import _naive_one
from harness.cli import compose_config
from harness.core import norms
from harness.core.spec import ConfigError, Spec
from harness.sim import memory, reference
from harness.sim.runner import replicate_generators, sample_chunk

NORMS = ("batchnorm", "layernorm", "rmsnorm")
ARCHS = {
    "mlp": ["arch=mlp", "depth=4", "width=6", "batch=5"],
    "conv": ["arch=conv", "depth=3", "width=3", "image=4", "batch=3", "kernel=3"],
    "resmlp": ["arch=resmlp", "depth=3", "width=6", "batch=5", "residual.branch_depth=2",
               "residual.alpha=0.7"],
    "resconv": ["arch=resconv", "depth=2", "width=3", "image=4", "batch=3", "conv_dim=1",
                "padding_mode=circular", "residual.branch_depth=2"],
}


def make(overrides: list[str]) -> Spec:
    return Spec.from_config(compose_config(["replicates=2", "dtype=float64", "device=cpu",
                                            "progress=false", "bias_std=0.3", "act=tanh",
                                            *overrides]))


def mean_cosine(h: torch.Tensor) -> float:
    """mean over pairs a ≠ b of cos(h_a, h_b), h (B, ...)."""
    u = h.reshape(h.shape[0], -1)
    u = u / u.norm(dim=1, keepdim=True)
    g = u @ u.T
    B = g.shape[0]
    return float((g.sum() - g.diagonal().sum()) / (B * (B - 1)))


def reference_stats(spec: Spec, weights, biases, x0, cot) -> dict[str, np.ndarray]:
    """Autograd through `reference.member` (torch's norm modules): per weighted layer its output
    o (retain_grad: ∂loss/∂o), per-example weight-gradient terms autograd.grad(<∂loss/∂o_b, o_b>,
    W) (example b's term of W.grad), and the block/layer moments the runner reports."""
    residual = spec.architecture.block(spec, 0, bias=True, device="cpu", dtype=torch.float64) is not None
    R = weights[0].shape[0]
    out: dict[str, list[list[float]]] = {}
    for r in range(R):
        net = reference.member(spec, weights, biases, r)
        lins = reference.layers(net)
        caught: dict[str, list[torch.Tensor]] = {"lin": [], "norm": [], "phi": [], "block": []}

        def hook(kind, caught=caught):
            def f(module, inputs, output):
                if output.requires_grad:
                    output.retain_grad()
                caught[kind].append(output)
            return f

        for lin in lins:
            lin.register_forward_hook(hook("lin"))
        for mod in net.modules():
            if isinstance(mod, reference.NORM_MODULES):
                mod.register_forward_hook(hook("norm"))
            if isinstance(mod, reference.Phi):
                mod.register_forward_hook(hook("phi"))
        if residual:
            for block in net:
                block.register_forward_hook(hook("block"))
        x = x0[r].clone().requires_grad_(False)
        y = net(x)
        (y * cot[r]).sum().backward(retain_graph=True)
        # every example's term of W.grad: the gradient of <δ_b, o_b> with δ_b fixed
        # (the retained .grad's are copied first: autograd.grad through o accumulates into them)
        deltas = [o.grad.detach().clone() for o in caught["lin"]]
        grads = {k: [t.grad.detach().clone() if t.grad is not None else None for t in v]
                 for k, v in caught.items()}
        wg = []
        for lin, o, d in zip(lins, caught["lin"], deltas, strict=True):
            terms = [torch.autograd.grad((o[b] * d[b]).sum(), lin.weight, retain_graph=True)[0]
                     for b in range(x.shape[0])]
            torch.testing.assert_close(sum(terms), lin.weight.grad)  # the terms add up to W.grad
            wg.append(float(np.mean([t.square().mean().item() for t in terms])))
        stats: dict[str, list[float]] = {"weight_grad": wg}
        ms = lambda t: float(t.detach().square().mean())  # noqa: E731
        if residual:
            m = spec.residual_branch_depth
            stream = caught["block"]
            stats["forward"] = [ms(t) for t in stream]
            stats["backward"] = [ms(t) for t in grads["block"]]
            stats["branch"] = [ms(caught["lin"][l * m + m - 1]) for l in range(spec.depth)]
            step = m if spec.norm_position == "pre" else 1
            stats["normed"] = [ms(t) for t in caught["norm"][::step]]
            if "correlation" in spec.quantities:
                stats["correlation"] = [mean_cosine(t.detach()) for t in stream]
        else:
            h = caught["lin"]
            stats["forward"] = [ms(t) for t in h]
            stats["backward"] = [ms(t) for t in deltas]
            stats["activation"] = [ms(t) for t in caught["phi"]]
            stats["normed"] = [ms(t) for t in caught["norm"]]
            if "correlation" in spec.quantities:
                stats["correlation"] = [mean_cosine(t.detach()) for t in h]
        for k, v in stats.items():
            out.setdefault(k, []).append(v)
    return {k: np.array(v) for k, v in out.items()}


@pytest.mark.parametrize("position", ["pre", "post"])
@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("arch", list(ARCHS))
def test_batched_equals_torch_modules_with_autograd(arch, norm, position):
    spec = make([*ARCHS[arch], f"norm={norm}", f"norm.position={position}"])
    weights, biases, x0, cot = sample_chunk(spec, 2, replicate_generators(spec, 0, 2))
    got = spec.architecture.propagate(spec, weights, biases, x0, cot)
    want = reference_stats(spec, weights, biases, x0, cot)
    for q in spec.quantities:
        if q in ("channel_mean_sq", "channel_var"):
            continue
        np.testing.assert_allclose(got[q].numpy(), want[q], rtol=1e-9, atol=1e-12, err_msg=q)


def test_norm_semantics_match_torch_functionals():
    """Norm.forward/backward against torch's F.batch_norm/layer_norm/rms_norm with autograd, on
    dense (R, B, n) and conv (B, R, C, P) layouts (eps large enough to matter)."""
    g = torch.Generator().manual_seed(1)
    h = torch.randn(2, 5, 7, generator=g, dtype=torch.float64) * 3 + 0.5
    cot = torch.randn(h.shape, generator=g, dtype=torch.float64)
    eps = 0.3
    cases = {
        "batchnorm": lambda t: torch.stack([nn.functional.batch_norm(t[r], None, None, training=True,
                                                                      eps=eps) for r in range(2)]),
        "layernorm": lambda t: nn.functional.layer_norm(t, (7,), eps=eps),
        "rmsnorm": lambda t: nn.functional.rms_norm(t, (7,), eps=eps),
    }
    for name, fn in cases.items():
        entry = norms.get(name)
        dims = entry.dims("dense")
        t = h.clone().requires_grad_(True)
        want = fn(t)
        (want * cot).sum().backward()
        y, s = entry.forward(h, dims, eps)
        torch.testing.assert_close(y, want.detach())
        torch.testing.assert_close(entry.backward(cot, y, s, dims), t.grad)
    # conv layout: (B, R, C, P); batchnorm per (R, C) over batch and positions
    hc = torch.randn(3, 2, 4, 5, generator=g, dtype=torch.float64)
    cc = torch.randn(hc.shape, generator=g, dtype=torch.float64)
    for name in norms.NAMES[1:]:
        entry = norms.get(name)
        dims = entry.dims("conv")
        t = hc.clone().requires_grad_(True)
        flat = t.reshape(3, 8, 5)  # (B, R·C, P): torch's (N, C, L)
        if entry.over_batch:
            want = nn.functional.batch_norm(flat, None, None, training=True, eps=eps)
        else:
            per = t.permute(1, 0, 2, 3)  # (R, B, C, P): per sample of network r over (C, P)
            f = nn.functional.layer_norm if entry.centre else nn.functional.rms_norm
            want = f(per, (4, 5), eps=eps).permute(1, 0, 2, 3)
        want = want.reshape(hc.shape)
        (want * cc).sum().backward()
        y, s = entry.forward(hc, dims, eps)
        torch.testing.assert_close(y, want.detach())
        torch.testing.assert_close(entry.backward(cc, y, s, dims), t.grad)


def test_eps_defaults_follow_torch():
    for dtype in (torch.float32, torch.float64):
        assert norms.get("batchnorm").resolve_eps(None, dtype) == nn.BatchNorm1d(3).eps
        assert norms.get("layernorm").resolve_eps(None, dtype) == nn.LayerNorm(3).eps
        # nn.RMSNorm(eps=None) uses torch.finfo(input.dtype).eps: check it numerically
        x = torch.randn(4, 3, dtype=dtype) * 1e-4
        e = norms.get("rmsnorm").resolve_eps(None, dtype)
        want = x * (x.square().mean(-1, keepdim=True) + e).rsqrt()
        torch.testing.assert_close(nn.RMSNorm(3, dtype=dtype)(x), want)
    spec = make([*ARCHS["mlp"], "norm=rmsnorm"])
    assert spec.norm_eps == float(torch.finfo(torch.float64).eps) and spec.norm_position == "pre"


@pytest.mark.parametrize("overrides, match", [
    (["norm=batchnorm", "batch=1"], "needs batch ≥ 2"),
    (["norm.position=pre"], "norm.position applies with a norm"),
    (["norm.eps=0.1"], "norm.eps applies with a norm"),
    (["norm=layernorm", "norm.position=middle"], "unknown norm.position"),
    (["norm=layernorm", "norm.eps=0"], "norm.eps must be"),
    (["norm=layernorm", "jacobian=2"], "jacobian=k is not defined with norm=layernorm"),
    (["norm=rmsnorm", "scheme=lsuv"], "scheme lsuv is not defined with norm=rmsnorm"),
    (["norm=layernorm", "arch=resmlp", "residual.nf=true"], "residual.nf=true"),
])
def test_config_errors(overrides, match):
    with pytest.raises(ConfigError, match=match) as e:
        Spec.from_config(compose_config(["depth=3", "width=8", "batch=4", "replicates=2", *overrides]))
    assert "\n" not in str(e.value)


def test_annotations_give_the_norms_reason():
    from harness import archs
    spec = make([*ARCHS["mlp"], "norm=layernorm"])
    assert "norm=layernorm" in archs.why_not(spec, "criticality")
    assert archs.why_not(make(ARCHS["mlp"]), "criticality") == ""
    bn = make([*ARCHS["mlp"], "norm=batchnorm"])  # the finite-batch theory (harness.theory.batchnorm)
    assert bn.architecture.theory_note(bn) == ""
    bn_res = make([*ARCHS["resmlp"], "norm=batchnorm"])  # harness.theory.batchnorm.predict_residual
    assert bn_res.architecture.theory_note(bn_res) == ""
    bn_conv = make(["arch=resconv", "padding_mode=circular", "norm=batchnorm"])
    assert bn_conv.architecture.theory_note(bn_conv).startswith("norm=batchnorm theory for conv stacks")
    assert spec.architecture.theory_note(spec) == ""


@pytest.mark.parametrize("overrides", [("arch=mlp", "norm=batchnorm"),
                                       ("arch=mlp", "norm=layernorm", "norm.position=post"),
                                       ("arch=resmlp", "norm=rmsnorm")])
def test_bench_naive_loop_measures_what_the_runner_does(overrides):
    """harness.bench's naive loop (torch's modules, hooks) and the batched runner on the same
    weights, inputs and cotangents: the same statistics."""
    spec = make([*overrides, "depth=3", "width=6", "batch=5"])
    weights, biases, x0, cot = sample_chunk(spec, 2, replicate_generators(spec, 0, 2))
    got = spec.architecture.propagate(spec, weights, biases, x0, cot)
    for r, net in enumerate(reference.ensemble(spec, weights, biases)):
        naive = _naive_one(net, spec, x0[r], cot[r])
        assert set(naive) >= {"forward", "backward", "weight_grad"}
        for k, v in naive.items():
            np.testing.assert_allclose(got[k][r].numpy(), v, rtol=1e-9, err_msg=k)


@pytest.mark.parametrize("arch", list(ARCHS))
def test_memory_preflight_counts_the_norm_buffers(arch):
    """A normalized replicate is budgeted more bytes than the plain one (N's saved outputs), and
    the normalized path has no low-memory variant (the preflight then refuses, not recomputes)."""
    plain = make(ARCHS[arch])
    normed = make([*ARCHS[arch], "norm=layernorm", "norm.position=post"])
    assert normed.architecture.bytes_per_replicate(normed) > plain.architecture.bytes_per_replicate(plain)
    assert normed.architecture.recompute_bytes(normed, 1) is None
    with pytest.raises(ConfigError, match="one replicate of this run needs"):
        memory.preflight(make([*ARCHS[arch], "norm=layernorm", "memory_budget_mb=0.001"]))


@pytest.mark.parametrize("position", ["pre", "post"])
def test_conv_with_batchnorm_runs_and_says_why_its_theory_is_missing(position):
    """BatchNorm has no position-resolved theory: a conv run measures every quantity (activation
    and normed at L−1 layers, like the other norms) with NaN theory and a one-line reason."""
    r = harness.run(*ARCHS["conv"], "norm=batchnorm", f"norm.position={position}")
    f = r.frame
    assert f["value"].notna().all() and f["theory"].isna().all()
    assert (f.groupby("quantity")["layer"].max()[["activation", "normed"]] == r.spec.depth - 1).all()
    note = r.spec.architecture.theory_note(r.spec)
    assert "norm=batchnorm" in note and "conv" in note
