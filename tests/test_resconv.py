"""arch=resconv: the batched runner against one nn.Module per block (conv layers) with autograd,
and the position-resolved theory against the resmlp recursion (circular padding) and the
simulated ensemble."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from harness.bench import _naive_one
from harness.sim import reference
from harness.sim.runner import measure, sample_chunk
from harness.theory.meanfield import predict
from tests.conftest import small_spec
from tests.test_resmlp import z_crit

CASES = [
    ("act=relu",),
    ("act=tanh", "residual.branch_depth=2", "bias_std=0.3", "padding_mode=circular"),
    ("act=gelu", "residual.nf=true", "residual.alpha=0.5", "conv_dim=1", "image=7"),
    ("act=relu", "scheme=fixup", "residual.branch_depth=2"),
]


@pytest.mark.parametrize("overrides", CASES, ids=lambda o: ",".join(o))
def test_batched_equals_residual_conv_blocks_with_autograd(overrides):
    spec = small_spec("arch=resconv", "depth=2", "width=3", "image=5", "batch=3", "replicates=2",
                      "dtype=float64", "device=cpu", *overrides)
    weights, biases, x0, cot = sample_chunk(spec, 2, torch.Generator().manual_seed(2))
    got = spec.architecture.propagate(spec, weights, biases, x0, cot)
    L, m = spec.depth, spec.residual_branch_depth
    for r, net in enumerate(reference.ensemble(spec, weights, biases)):
        xs: list[torch.Tensor] = []

        def keep(module, inputs, output, xs=xs):
            output.retain_grad()
            xs.append(output)

        hooks = [blk.register_forward_hook(keep) for blk in net]
        y = net(x0[r])
        for h in hooks:
            h.remove()
        (y * cot[r]).sum().backward()
        fwd = [x.detach().square().mean().item() for x in xs]
        bwd = [x.grad.square().mean().item() for x in xs]
        np.testing.assert_allclose(got["forward"][r].numpy(), fwd, rtol=1e-10)
        np.testing.assert_allclose(got["backward"][r].numpy(), bwd, rtol=1e-10)
        means = [x.detach().mean((0, *range(2, x.dim()))).square().mean().item() for x in xs]
        np.testing.assert_allclose(got["channel_mean_sq"][r].numpy(), means, rtol=1e-9, atol=1e-15)
        convs = reference.layers(net)
        per_example = np.zeros((x0.shape[1], L * m))
        for b in range(x0.shape[1]):
            net.zero_grad()
            (net(x0[r, b : b + 1]) * cot[r, b : b + 1]).sum().backward()
            per_example[b] = [c.weight.grad.square().mean().item() for c in convs]
        np.testing.assert_allclose(got["weight_grad"][r].numpy(), per_example.mean(0), rtol=1e-10,
                                   atol=1e-30)


def test_circular_theory_is_the_resmlp_recursion():
    """Circular padding: every position sees every tap, so the pooled maps are resmlp's with
    σ² = fan_in·Var(W), and the weight gradient carries the factor P (a sum over positions)."""
    common = ("act=tanh", "depth=4", "width=8", "residual.branch_depth=2", "bias_std=0.2",
              "residual.alpha=0.7")
    conv = predict(small_spec("arch=resconv", "padding_mode=circular", "image=6", "kernel=3",
                              *common))
    # resmlp with the same σ²: Var(W) = 2/(C·9) at fan_in C·9 -> kaiming on an (n, n) matrix
    dense = predict(small_spec("arch=resmlp", *common))
    for k in ("forward", "branch", "backward"):
        np.testing.assert_allclose(conv[k], dense[k], rtol=1e-12, err_msg=k)
    np.testing.assert_allclose(conv["weight_grad"], 36 * dense["weight_grad"], rtol=1e-12)


def test_zero_padding_border_positions_lose_taps():
    spec = small_spec("arch=resconv", "act=relu", "depth=3", "width=8", "image=6")
    maps = spec.architecture.position_maps(spec)
    f = maps["forward"][-1]
    assert f[0, 0] < f[0, 3] < f[3, 3]  # corner < edge < centre


def test_measured_agrees_with_theory_circular_linear():
    """Linear φ (no channel-mean feedback): pooled forward/branch/backward within Bonferroni
    standard errors of the replicate means."""
    spec = small_spec("arch=resconv", "act=linear", "depth=4", "width=64", "image=6",
                      "padding_mode=circular", "batch=8", "replicates=16", "device=cpu",
                      "residual.alpha=0.5")
    meas, th = measure(spec, progress=False), predict(spec)
    qs = ("forward", "branch", "backward")
    z = z_crit(sum(th[q].size for q in qs))
    for q in qs:
        v = meas.values[q]
        sem = v.std(0, ddof=1) / math.sqrt(v.shape[0])
        assert (np.abs(v.mean(0) - th[q]) <= z * sem).all(), (q, v.mean(0), th[q], sem)


def test_bench_naive_loop_measures_what_the_runner_does():
    spec = small_spec("arch=resconv", "depth=2", "width=3", "image=5", "batch=3", "replicates=2",
                      "dtype=float64", "device=cpu", "residual.branch_depth=2", "act=tanh")
    weights, biases, x0, cot = sample_chunk(spec, 2, torch.Generator().manual_seed(4))
    got = spec.architecture.propagate(spec, weights, biases, x0, cot)
    for r, net in enumerate(reference.ensemble(spec, weights, biases)):
        rec = _naive_one(net, spec, x0[r], cot[r])
        for k in ("forward", "branch", "backward", "weight_grad"):
            np.testing.assert_allclose(rec[k], got[k][r].numpy(), rtol=1e-10, err_msg=k)
