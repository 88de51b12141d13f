"""φ'', the 2-D Gaussian quadrature, the correlation map and the measured `correlation`.

- φ'' against autograd of φ' (float64, off the kinks);
- E[φ(u_1)φ(u_2)] by 2-D quadrature against the relu family's closed forms (the arc-cosine
  kernel of Cho & Saul 2009) to 1e-10 of V_φ(q), against scipy's adaptive nested quad for
  tanh, and against seeded Monte Carlo for every activation (5 standard errors, 60
  comparisons: family-wise ≤ 3.4e-5); E[φ'φ'] likewise; dV/dq against a finite difference of
  scipy-quad V;
- the runner's mean cosine against an explicit loop over pairs; correlated inputs;
- the predicted correlation per layer against simulated networks at width 1024, where the
  O(1/n) bias of a mean of cosines is far below the standard error (Bonferroni z, α = 1e-3).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats

from harness.archs.mlp import mean_cosine
from harness.core import activations
from harness.core.activations import get
from harness.core.quadrature import gaussian_expectation_2d
from harness.sim.inputs import draw_inputs
from harness.sim.runner import measure
from harness.theory.meanfield import predict
from tests.conftest import small_spec
from tests.test_activations import ACTS, KINKED, _act_id, _autograd_dphi, _points
from tests.test_theory import z_crit

K_SE = 5.0


@pytest.mark.parametrize("act", ACTS, ids=_act_id)
def test_ddphi_matches_autograd(act):
    name, params = act
    a = get(name, **params)
    x = _points(name, params)
    if name in KINKED:  # φ' jumps at 0: compare off the kink
        x = x[x.abs() > 1e-9]
    xg = x.clone().requires_grad_(True)
    if a.dphi(xg).requires_grad:
        ref = _autograd_dphi(a.dphi, x)
    else:  # piecewise-constant φ' (relu family) carries no graph: its derivative is 0
        ref = torch.zeros_like(x)
    torch.testing.assert_close(a.ddphi(x), ref, rtol=1e-10, atol=1e-14)


# ---------------------------------------------------------------------------------------------
# 2-D quadrature

CS = [-1.0, -0.999, -0.6, 0.0, 0.3, 0.9, 0.999999, 1.0]


@pytest.mark.parametrize("q", [0.01, 1.0, 7.0, 100.0])
@pytest.mark.parametrize("act", [("relu", {}), ("leaky_relu", {"negative_slope": 0.2}),
                                 ("leaky_relu", {"negative_slope": 3.0}), ("linear", {})],
                         ids=_act_id)
def test_quadrature_matches_arc_cosine_closed_form(act, q):
    name, params = act
    a = get(name, **params)
    for c in CS:
        quad = gaussian_expectation_2d(a.phi, a.phi, q, c)
        assert abs(quad - a.C(q, c)) <= 1e-10 * float(a.V(q)), (c, quad, a.C(q, c))
    # the closed form itself: relu's kernel by its own formula (Cho & Saul 2009, degree 1)
    if name == "relu":
        for c in CS:
            th = math.acos(c)
            ref = q * (math.sin(th) + (math.pi - th) * c) / (2 * math.pi)
            assert a.C(q, c) == pytest.approx(ref, rel=1e-12, abs=1e-14 * q)


def test_quadrature_endpoints_are_one_dimensional():
    for name in activations.NAMES:
        a = get(name)
        assert gaussian_expectation_2d(a.phi, a.phi, 2.0, 1.0) == pytest.approx(float(a.V(2.0)), rel=1e-12)
        assert gaussian_expectation_2d(a.dphi, a.dphi, 2.0, 1.0) == pytest.approx(float(a.D(2.0)),
                                                                                   rel=1e-12)


def test_tanh_against_scipy_nested_quad():
    q, c = 3.0, 0.95
    s = math.sqrt(1 - c * c)

    def pdf(z):
        return math.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)

    def inner(z1):
        t = -c * z1 / s
        f = lambda z2: math.tanh(math.sqrt(q) * (c * z1 + s * z2)) * pdf(z2)  # noqa: E731
        return integrate.quad(f, -9, 9, points=[t] if abs(t) < 9 else None, epsabs=1e-13,
                              limit=200)[0]

    ref = integrate.quad(lambda z1: math.tanh(math.sqrt(q) * z1) * pdf(z1) * inner(z1),
                         -9, 9, points=[0.0], epsabs=1e-13, limit=200)[0]
    assert get("tanh").C(q, c) == pytest.approx(ref, abs=1e-10)


MC_POINTS = [(0.5, -0.6), (2.0, 0.4), (1.0, 0.95)]
N_MC = 1_000_000


@pytest.mark.parametrize("name", activations.NAMES)
def test_correlation_moments_match_monte_carlo(name):
    a = get(name)
    g = torch.Generator().manual_seed(len(name))
    z1 = torch.randn(N_MC, generator=g, dtype=torch.float64)
    z2 = torch.randn(N_MC, generator=g, dtype=torch.float64)
    for q, c in MC_POINTS:
        u1 = math.sqrt(q) * z1
        u2 = math.sqrt(q) * (c * z1 + math.sqrt(1 - c * c) * z2)
        for label, theory, samples in (("C", a.C(q, c), a.phi(u1) * a.phi(u2)),
                                       ("C'", a.C_prime(q, c), a.dphi(u1) * a.dphi(u2))):
            mean, se = samples.mean().item(), samples.std().item() / math.sqrt(N_MC)
            assert abs(theory - mean) <= K_SE * se, (label, q, c, theory, mean, se)


@pytest.mark.parametrize("name", ["tanh", "sigmoid", "selu", "elu", "gelu", "silu", "softplus"])
def test_V_slope_is_the_derivative_of_V(name):
    a = get(name)

    def V(q):  # independent: φ in torch, the integral by scipy
        f = lambda u: float(a.phi(torch.tensor(math.sqrt(q) * u, dtype=torch.float64)) ** 2)  # noqa: E731
        return integrate.quad(lambda u: f(u) * stats.norm.pdf(u), -14, 14, points=[0.0],
                              epsabs=1e-14, epsrel=1e-13, limit=200)[0]

    for q in (0.3, 1.0, 4.0):
        h = 1e-4 * q
        fd = (V(q + h) - V(q - h)) / (2 * h)
        assert float(a.V_slope(q)) == pytest.approx(fd, rel=1e-6), q


# ---------------------------------------------------------------------------------------------
# the measured statistic and the inputs


def test_mean_cosine_equals_explicit_pairs():
    g = torch.Generator().manual_seed(0)
    h = torch.randn(3, 7, 11, generator=g, dtype=torch.float64) + 0.4
    h[1, 2] = 0.0  # an input with no direction is left out
    got = mean_cosine(h)
    for r in range(3):
        cos = [torch.nn.functional.cosine_similarity(h[r, a], h[r, b], dim=0).item()
               for a in range(7) for b in range(7) if a != b and h[r, a].any() and h[r, b].any()]
        assert got[r].item() == pytest.approx(np.mean(cos), rel=1e-12)
    assert torch.isnan(mean_cosine(torch.zeros(1, 3, 4))).all()


@pytest.mark.parametrize("c", [0.0, 0.35, 0.9])
def test_inputs_have_the_chosen_correlation(c):
    spec = small_spec(f"input_corr={c}", "input_var=2.5", "width=512", "batch=16", "dtype=float64")
    x = draw_inputs(spec, 40, torch.Generator().manual_seed(2))
    # per network: the mean pairwise cosine is an average of B(B−1)/2 dependent pairs; over 40
    # networks the mean of those means is within K_SE standard errors of c
    cos = mean_cosine(x).numpy()
    assert abs(cos.mean() - c) <= K_SE * cos.std(ddof=1) / math.sqrt(len(cos)) + 1e-12
    m2 = x.square().mean((1, 2)).numpy()
    assert abs(m2.mean() - 2.5) <= K_SE * m2.std(ddof=1) / math.sqrt(len(m2))


# ---------------------------------------------------------------------------------------------
# theory against simulation

NETWORKS = [
    ("act=tanh", "scheme=meanfield", "scheme.sigma_w2=2", "scheme.sigma_b2=0.3", "input_corr=0.3"),
    ("act=relu", "scheme=kaiming"),
    ("act=gelu", "scheme=meanfield", "scheme.sigma_w2=1.5", "scheme.sigma_b2=0.1", "input_corr=0.6"),
]


def _z(spec, predicted):
    v = measure(spec, progress=False).values["correlation"]
    return (v.mean(0) - predicted) / (v.std(0, ddof=1) / math.sqrt(v.shape[0]))


@pytest.mark.parametrize("overrides", NETWORKS, ids=lambda o: o[0])
def test_correlation_theory_matches_simulation(overrides):
    spec = small_spec(*overrides, "depth=4", "width=1024", "batch=16", "replicates=8", "seed=1")
    z = _z(spec, predict(spec)["correlation"])
    assert np.all(np.abs(z) <= z_crit(spec.depth * len(NETWORKS))), np.round(z, 2)


def test_the_correlation_comparison_can_fail():
    """A theory that ignores the input correlation (c_0 = 0 instead of 0.3) is rejected."""
    spec = small_spec(*NETWORKS[0], "depth=4", "width=1024", "batch=16", "replicates=8", "seed=1")
    wrong = predict(small_spec(*NETWORKS[0][:-1], "depth=4", "width=1024"))["correlation"]
    assert np.any(np.abs(_z(spec, wrong)) > z_crit(spec.depth))
