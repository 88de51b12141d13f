"""jacobian=k for arch=resmlp: J^l = ∂x^l/∂x^0 with the identity path (`resmlp.propagate_jacobian`)
against autograd through one nn.Module per block, and its mean-field / free-probability moments
(`resmlp.predict_jacobian`) against measurement within Bonferroni-corrected standard errors
(Student t on R − 1 degrees of freedom over the replicates, family-wise ALPHA)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from harness.archs import resmlp
from harness.sim import reference
from harness.sim.runner import measure, sample_chunk
from harness.theory.meanfield import predict
from tests.conftest import small_spec

ALPHA = 0.01


def t_crit(m: int, R: int) -> float:
    return float(stats.t.isf(ALPHA / (2 * m), R - 1))


@pytest.mark.parametrize("overrides", [
    ("act=relu",),
    ("act=tanh", "residual.branch_depth=2", "bias_std=0.3", "residual.depth_scaling=sqrt"),
    ("act=softplus", "residual.branch_depth=2", "residual.nf=true", "residual.alpha=0.6"),
])
def test_jacobian_equals_autograd_through_the_blocks(overrides):
    spec = small_spec("arch=resmlp", "depth=3", "width=5", "batch=3", "replicates=2", "jacobian=2",
                      "dtype=float64", *overrides)
    weights, biases, x0, _ = sample_chunk(spec, 2, torch.Generator().manual_seed(4))
    out, eig = resmlp.ARCH.jacobian(spec, weights, biases, x0[:, :2])
    for r, net in enumerate(reference.ensemble(spec, weights, biases)):
        for l in range(spec.depth):
            lams = [torch.linalg.eigvalsh(J.T @ J) for J in
                    (torch.autograd.functional.jacobian(net[: l + 1], x0[r, b]) for b in range(2))]
            m1 = torch.stack([x.mean() for x in lams])
            m2 = torch.stack([x.square().mean() for x in lams])
            torch.testing.assert_close(out["jacobian_mean"][r, l], m1.mean(), rtol=1e-10, atol=0)
            torch.testing.assert_close(out["jacobian_var"][r, l], (m2 - m1**2).mean(), rtol=1e-8, atol=1e-12)
            torch.testing.assert_close(out["jacobian_rel_var"][r, l], (m2 / m1**2 - 1).mean(),
                                       rtol=1e-8, atol=1e-12)
            if l == spec.depth - 1:  # the last block's spectrum, ascending, per input
                for b in range(2):
                    torch.testing.assert_close(eig[r, b], lams[b], rtol=1e-8, atol=1e-10)


def test_relu_mean_is_one_plus_alpha_squared_per_block():
    """relu at He init, m = 1: χ^l = 2·D_relu = 1, so m₁ = (1 + α²)^l; φ = identity with
    Gaussian weights: x = α², r = −s₁ + μ₂/μ₁² − 1 = 1, v grows by (2x + x²)/(1 + x)² per block."""
    spec = small_spec("arch=resmlp", "act=relu", "scheme=kaiming_normal", "depth=5", "width=8",
                      "batch=2", "replicates=1", "jacobian=1", "residual.alpha=0.8")
    th = predict(spec)
    np.testing.assert_allclose(th["jacobian_mean"], 1.64 ** np.arange(1, 6), rtol=1e-12)
    lin = predict(small_spec("arch=resmlp", "act=linear", "scheme=kaiming_normal", "depth=5",
                             "width=8", "batch=2", "replicates=1", "jacobian=1", "residual.alpha=0.8"))
    x = 0.64  # α²σ²μ₁ = 0.64 · 1 · 1; Gaussian: r = −s₁ + μ₂/μ₁² − 1 = 1
    np.testing.assert_allclose(lin["jacobian_rel_var"], np.arange(1, 6) * (2 * x + x * x) / (1 + x) ** 2,
                               rtol=1e-12)


def test_fixup_jacobian_is_the_identity():
    """Every branch ends in a zero layer: J^l = I exactly, m₁ = 1 and no spread, as predicted."""
    spec = small_spec("arch=resmlp", "scheme=fixup", "residual.branch_depth=2", "depth=4",
                      "width=16", "batch=2", "replicates=2", "jacobian=2")
    m = measure(spec, progress=False)
    th = predict(spec)
    assert (m.values["jacobian_mean"] == 1.0).all() and (m.values["jacobian_rel_var"] == 0.0).all()
    np.testing.assert_array_equal(th["jacobian_mean"], 1.0)
    np.testing.assert_array_equal(th["jacobian_rel_var"], 0.0)


@pytest.mark.parametrize("overrides", [
    ("act=relu", "scheme=kaiming_normal", "residual.depth_scaling=sqrt"),
    pytest.param(("act=tanh", "scheme=kaiming_normal", "residual.alpha=0.5", "residual.branch_depth=2"),
                 marks=pytest.mark.slow),
])
def test_mean_and_first_block_spread_match_theory(overrides):
    """m₁ at every block and the relative variance v at block 1 (where J = I + αA exactly has
    the moments of the formula) within t·se; after block 1 a nonlinear φ's v has no theory (NaN:
    the branches' φ' correlate with the Jacobian so far) and the additive formula, computed here,
    is exceeded by the measurement."""
    R, L = 8, 5
    spec = small_spec("arch=resmlp", f"depth={L}", "width=128", "batch=2", f"replicates={R}",
                      "jacobian=1", *overrides)
    m = measure(spec, progress=False)
    th = predict(spec)
    t = t_crit(L + 2, R)
    M = m.values["jacobian_mean"]
    se = M.std(0, ddof=1) / math.sqrt(R)
    assert (np.abs(M.mean(0) - th["jacobian_mean"]) <= t * se).all(), (M.mean(0), th["jacobian_mean"], se)
    V = m.values["jacobian_rel_var"]
    se_v = V.std(0, ddof=1) / math.sqrt(R)
    assert abs(V[:, 0].mean() - th["jacobian_rel_var"][0]) <= t * se_v[0]
    assert np.isnan(th["jacobian_rel_var"][1:]).all() and np.isnan(th["jacobian_var"][1:]).all()
    additive = L * th["jacobian_rel_var"][0] if "sqrt" in str(overrides) else math.nan
    if math.isfinite(additive):  # equal blocks (α/√L, relu): the free sum is L·v^1
        assert V[:, -1].mean() - t * se_v[-1] > additive, (V[:, -1].mean(), additive)


@pytest.mark.slow
def test_linear_spread_composes_freely():
    """φ = identity: the blocks I + αW_l are free of each other, so v adds up exactly at large
    width (the O(l²/n) ratio bias is 1% here: width 512, depth 6)."""
    R, L = 8, 6
    spec = small_spec("arch=resmlp", "act=linear", "scheme=kaiming_normal", "residual.alpha=0.7",
                      f"depth={L}", "width=512", "batch=2", f"replicates={R}", "jacobian=1")
    m = measure(spec, progress=False)
    th = predict(spec)
    V = m.values["jacobian_rel_var"]
    se = V.std(0, ddof=1) / math.sqrt(R)
    t = t_crit(L, R)
    assert (np.abs(V.mean(0) - th["jacobian_rel_var"]) <= t * se).all(), (V.mean(0), se)


def test_criticality_and_band_say_why_they_do_not_apply():
    """A residual run's annotations read n/a with the residual reason, not "MLPs only"."""
    from harness.theory import criticality, finite_width

    for arch in ("arch=resmlp", "arch=resconv"):
        spec = small_spec(arch, "depth=3", "width=4", "image=4" if arch == "arch=resconv" else "batch=2")
        assert "no fixed point" in criticality.for_spec(spec).note
        assert "Hanin & Nica" in finite_width.undefined_reason(spec)
