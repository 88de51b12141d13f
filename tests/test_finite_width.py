"""The finite-width band of the forward moment (harness.theory.finite_width) against simulated networks.

- one input per network (batch 1): the second moment E[(F/q)²] = M_1 is exact, so the sample
  mean of (F/q)² over many networks must match exp(s²) within its standard error;
- pooled over a batch: the variance of ln(F/q) across networks against s_l² (standard error of
  a sample variance, √(2/(R−1)) s², Bonferroni over all layers and configs at α = 1e-3), and
  the fraction of networks inside the central 95% band against 0.95 (binomial standard error);
- the same comparison rejects a band that ignores the pooling (one input's spread).
"""

from __future__ import annotations

import math
from functools import cache

import numpy as np
import pytest

from harness.core.activations import get as get_activation
from harness.core.quadrature import gaussian_expectation_2d
from harness.sim.runner import measure
from harness.theory import finite_width as fw
from harness.theory.meanfield import predict
from tests.conftest import small_spec
from tests.test_theory import z_crit

POOLED = [  # relu at He init; linear and leaky_relu, where the pairs' correlation stays low
    ("act=relu", "scheme=kaiming", "width=128", "batch=16"),
    ("act=linear", "scheme=kaiming", "width=64", "batch=16"),
    ("act=leaky_relu", "act.negative_slope=0.5", "scheme=meanfield", "scheme.sigma_w2=1.6",
     "width=64", "batch=8", "input_corr=0.4"),
]
DEPTH, REPLICATES = 8, 600


@cache
def _simulate(*overrides: str, seed: int = 2):
    spec = small_spec(*overrides, f"depth={DEPTH}", f"replicates={REPLICATES}", f"seed={seed}")
    p = predict(spec)
    F = measure(spec, progress=False).values["forward"]
    return spec, p, F


def test_one_input_second_moment_is_exact():
    spec, p, F = _simulate("act=relu", "scheme=kaiming", "width=64", "batch=1")
    s2 = fw.log_variance(0.0, spec.widths, p["correlation"], 0.0, 1)
    r2 = (F / p["forward"]) ** 2
    se = r2.std(0, ddof=1) / math.sqrt(REPLICATES)
    z = (r2.mean(0) - np.exp(s2)) / se
    assert np.all(np.abs(z) <= z_crit(DEPTH)), np.round(z, 2)
    # and it is Hanin & Nica's 5β to leading order: s² ≈ 5 Σ_{k<l} 1/n_k + 2/n_0 + 2/n_l
    beta = 5 * np.arange(DEPTH) / 64 + 4 / 64
    np.testing.assert_allclose(s2, beta, rtol=0.2)


@pytest.mark.parametrize("overrides", POOLED, ids=lambda o: o[0])
def test_pooled_band_matches_simulation(overrides):
    spec, p, F = _simulate(*overrides)
    b = fw.band(spec, p["forward"], p["correlation"])
    assert b.lower is not None
    m = len(POOLED) * DEPTH * 2
    logr = np.log(F / p["forward"])
    z_var = (logr.var(0, ddof=1) - b.log_var) / (b.log_var * math.sqrt(2 / (REPLICATES - 1)))
    assert np.all(np.abs(z_var) <= z_crit(m)), np.round(z_var, 2)
    inside = ((F >= b.lower) & (F <= b.upper)).mean(0)
    z_cov = (inside - 0.95) / math.sqrt(0.95 * 0.05 / REPLICATES)
    assert np.all(np.abs(z_cov) <= z_crit(m)), np.round(z_cov, 2)
    cov = fw.coverage(b, F)
    assert cov["defined"] and cov["coverage"] == pytest.approx(inside.mean())


def test_the_band_comparison_can_fail():
    """One input's spread (batch 1) is far wider than the pooled statistic's for linear
    networks, whose inputs stay uncorrelated: the check above rejects it."""
    spec, p, F = _simulate(*POOLED[1])
    per_input = fw.log_variance(1.0, spec.widths, p["correlation"], 0.0, 1)
    z = (np.log(F / p["forward"]).var(0, ddof=1) - per_input) / (
        per_input * math.sqrt(2 / (REPLICATES - 1)))
    assert np.any(np.abs(z) > z_crit(DEPTH))


@pytest.mark.parametrize(
    "overrides, reason",
    [(("act=tanh",), "relu family"),
     (("scheme=kaiming_uniform",), "Gaussian weights"),
     (("scheme=he_normal",), "Gaussian weights"),  # Keras's "normal" is truncated
     (("bias_std=0.1",), "zero biases")],
)
def test_band_is_undefined_outside_its_theory(overrides, reason):
    spec = small_spec(*overrides, "depth=3", "width=8")
    assert reason in fw.undefined_reason(spec)
    assert fw.band(spec, np.ones(3), np.zeros(3)).lower is None


@pytest.mark.parametrize("a", [0.0, 0.01, 0.5, 1.0])
def test_cross_moment_closed_form_matches_quadrature(a):
    """E[φ(u_1)³ φ(u_2)] of φ(x) = max(x, a·x) in closed form (the band's σ²(c), module doc)
    against the 2-D Gauss quadrature it replaced, which resolves the kink to ~1e-15; 1e-12
    relative (absolute near a zero) leaves room for either's rounding."""
    act = get_activation("leaky_relu", negative_slope=a)
    for c in (-1.0, -0.7, -0.2, 0.0, 0.3, 0.9, 0.999, 1.0):
        quad = gaussian_expectation_2d(lambda x: act.phi(x) ** 3, act.phi, 1.0, c)
        closed = (1 + a**4) * fw._relu_J(c) - (a + a**3) * fw._relu_J(-c)
        assert closed == pytest.approx(quad, rel=1e-12, abs=1e-14), (a, c)
