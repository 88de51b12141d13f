"""Theory against closed forms, against an independent Monte-Carlo of the mean-field recursion,
and against the simulated network (seeded, tolerances from the replicate standard error)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import norm

from harness.core import activations
from harness.sim.runner import measure
from harness.theory.meanfield import predict, sigma_w2
from tests.conftest import small_spec

# Family-wise false-positive rate of each statistical test below; the per-comparison threshold is
# Bonferroni's z = Φ^{-1}(1 − α / (2m)) for m two-sided comparisons.
ALPHA = 1e-3


def z_crit(m: int) -> float:
    return float(norm.isf(ALPHA / (2 * m)))


def test_relu_kaiming_fan_in_keeps_forward_constant():
    spec = small_spec("act=relu", "scheme=kaiming", "mode=fan_in", "depth=30", "input_var=0.7")
    p = predict(spec)
    # q^1 = σ_w² q_0 = 2·0.7; q^{l+1} = 2 · q^l / 2
    np.testing.assert_allclose(p["forward"], 2 * 0.7, rtol=1e-14)
    np.testing.assert_allclose(p["activation"], 0.7, rtol=1e-14)


def test_relu_kaiming_fan_out_keeps_backward_constant_on_nonsquare_stack():
    spec = small_spec("act=relu", "scheme=kaiming", "mode=fan_out", "depth=4",
                      "widths=[10,40,20,80,5]")
    p = predict(spec)
    # fan_out: Var(W^{l+1}) = 2/n_{l+1}, so D · n_{l+1} · Var = 1/2 · 2 = 1 at every layer
    np.testing.assert_allclose(p["backward"], 1.0, rtol=1e-14)
    # forward with fan_out: q^1 = n_0 · 2/n_1 · q_0; q^{l+1} = n_l · 2/n_{l+1} · q^l / 2
    n = [10, 40, 20, 80, 5]
    q = [n[0] * 2 / n[1]]
    for l in range(1, 4):
        q.append(n[l] * 2 / n[l + 1] * q[-1] / 2)
    np.testing.assert_allclose(p["forward"], q, rtol=1e-14)


def test_linear_xavier_closed_form():
    spec = small_spec("act=linear", "scheme=xavier_uniform", "depth=3", "widths=[8,16,4,2]",
                      "bias_std=0.5")
    s2, b2 = sigma_w2(spec), 0.25
    q = [s2[0] * 1.0 + b2]
    for l in (1, 2):
        q.append(s2[l] * q[-1] + b2)
    np.testing.assert_allclose(predict(spec)["forward"], q, rtol=1e-14)
    # σ_w² = fan_in · 2/(fan_in + fan_out)
    np.testing.assert_allclose(s2, [8 * 2 / 24, 16 * 2 / 20, 4 * 2 / 6], rtol=1e-14)


@pytest.mark.parametrize("act_name", ["tanh", "gelu", "selu", "sigmoid", "softplus"])
def test_theory_equals_monte_carlo_of_the_recursion(act_name):
    """Iterate the mean-field map with sampled Gaussians instead of quadrature."""
    spec = small_spec(f"act={act_name}", "scheme=xavier", "depth=6", "width=32", "bias_std=0.2")
    p = predict(spec)
    act, s2, b2 = spec.activation, sigma_w2(spec), 0.04
    g = torch.Generator().manual_seed(7)
    N = 400_000
    z = torch.randn(N, generator=g, dtype=torch.float64)
    m = 2 * spec.depth - 1
    q = s2[0] * 1.0 + b2
    for l in range(spec.depth - 1):
        # the recursion's inputs are theory values, so each layer's MC error is independent
        q_th = p["forward"][l]
        phi2 = act.phi(math.sqrt(q_th) * z) ** 2
        V, se = phi2.mean().item(), phi2.std().item() / math.sqrt(N)
        assert abs(V - p["activation"][l]) <= z_crit(m) * se, (l, V, p["activation"][l])
        dphi2 = act.dphi(math.sqrt(q_th) * z) ** 2
        D, se_d = dphi2.mean().item(), dphi2.std().item() / math.sqrt(N)
        ratio = p["backward"][l] / p["backward"][l + 1] / s2[l + 1]  # square layers: = D(q^l)
        assert abs(D - ratio) <= z_crit(m) * se_d, (l, D, ratio)
        q = s2[l + 1] * V + b2
    del q


@pytest.mark.parametrize(
    "overrides",
    [
        ("act=relu", "scheme=kaiming", "bias_std=0.1"),
        ("act=relu", "scheme=kaiming", "mode=fan_out", "widths=[64,128,96,160,64,128,32,96,48]"),
        ("act=leaky_relu", "act.negative_slope=0.2", "scheme=xavier_normal"),
        ("act=linear", "scheme=orthogonal", "scheme.gain=1.1", "widths=[96,128,64,128,32,64,128,96,64]"),
    ],
)
def test_network_matches_theory_where_the_mean_is_exact(overrides):
    """For positively homogeneous φ and symmetric weights the mean-field expectations are exact
    at every width, so the replicate mean must agree with theory within its standard error."""
    spec = small_spec(*overrides, "depth=8", "width=128", "batch=32", "replicates=128", "seed=3")
    m, p = measure(spec, progress=False), predict(spec)
    comparisons = sum(v.shape[1] for v in m.values.values())
    for k, v in m.values.items():
        se = v.std(0, ddof=1) / math.sqrt(v.shape[0])
        z = (v.mean(0) - p[k]) / se
        assert np.all(np.abs(z) <= z_crit(comparisons)), (k, np.round(z, 2))


def test_the_comparison_above_can_fail():
    """The same check rejects a theory that is off by 5% (fan_in prediction, fan_out weights)."""
    spec_in = small_spec("act=relu", "depth=8", "width=128", "widths=[64,128,96,160,64,128,32,96,48]",
                         "batch=32", "replicates=128", "seed=3")
    spec_out = small_spec("act=relu", "depth=8", "widths=[64,128,96,160,64,128,32,96,48]",
                          "mode=fan_out", "batch=32", "replicates=128", "seed=3")
    v = measure(spec_out, progress=False).values["forward"]
    wrong = predict(spec_in)["forward"]
    z = (v.mean(0) - wrong) / (v.std(0, ddof=1) / math.sqrt(v.shape[0]))
    assert np.any(np.abs(z) > z_crit(v.shape[1]))


@pytest.mark.slow
@pytest.mark.parametrize("act_name", ["tanh", "gelu", "selu", "sigmoid", "elu", "silu", "softplus"])
def test_network_matches_theory_at_large_width(act_name):
    """Smooth activations carry an O(1/n) finite-width bias; at n = 2048 and depth 4 it is far
    below the replicate standard error."""
    spec = small_spec(f"act={act_name}", "scheme=xavier", "depth=4", "width=2048", "batch=32",
                      "replicates=24", "seed=5")
    m, p = measure(spec, progress=False), predict(spec)
    comparisons = sum(v.shape[1] for v in m.values.values())
    for k, v in m.values.items():
        se = v.std(0, ddof=1) / math.sqrt(v.shape[0])
        z = (v.mean(0) - p[k]) / se
        assert np.all(np.abs(z) <= z_crit(comparisons)), (k, np.round(z, 2))


def test_every_activation_has_finite_positive_theory():
    for name in activations.NAMES:
        p = predict(small_spec(f"act={name}", "depth=10"))
        for k, v in p.items():
            # a correlation is a cosine: 0 (odd φ, independent inputs) or negative is legitimate
            ok = np.abs(v) <= 1 if k == "correlation" else v > 0
            assert np.all(np.isfinite(v) & ok), (name, k)
