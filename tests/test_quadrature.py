"""harness.core.quadrature.gaussian_expectation, checked against independent references.

- every registered activation's φ² and φ'² (plus a few non-default parameters), at
  q ∈ {1e-3, 0.1, 1, 3, 10, 100}: against scipy.integrate.quad (adaptive QUADPACK) of
  f(z)·N(z; 0, q) on (−∞, 0) and (0, ∞) separately, relative error ≤ 1e-10 (the accuracy the
  module and docs/theory.md, "Activation moments and quadrature", promise);
- Gaussian moments of polynomials, known in closed form: E[1] = 1, E[z²] = q, E[z⁴] = 3q²,
  E[z⁶] = 15q³, odd moments 0, to 1e-12;
- the interface: q = 0 gives f(0), non-finite q, array q keeps its shape, scalar q gives a
  0-d array.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import integrate

from harness.core import activations
from harness.core.quadrature import gaussian_expectation

QS = [1e-3, 0.1, 1.0, 3.0, 10.0, 100.0]

# every registered activation at its defaults, plus non-default parameters
ACTS = [(name, {}) for name in activations.NAMES] + [
    ("leaky_relu", {"negative_slope": 0.2}),
    ("elu", {"alpha": 0.5}),
    ("softplus", {"beta": 2.0}),
]


def _act_id(a):
    name, params = a
    return name + "".join(f"-{k}={v:g}" for k, v in params.items())


def _scipy_expectation(f, q: float) -> tuple[float, float]:
    """E_{z~N(0,q)}[f(z)] by scipy's adaptive quad, split at 0; (value, abserr estimate)."""
    norm = 1.0 / math.sqrt(2.0 * math.pi * q)

    def integrand(z: float) -> float:
        fz = float(f(torch.tensor([z], dtype=torch.float64))[0])
        return fz * norm * math.exp(-0.5 * z * z / q)

    value = err = 0.0
    for lo, hi in ((-math.inf, 0.0), (0.0, math.inf)):
        v, e = integrate.quad(integrand, lo, hi, epsabs=0.0, epsrel=1e-13, limit=500)
        value += v
        err += e
    return value, err


@pytest.mark.parametrize("q", QS)
@pytest.mark.parametrize("which", ["phi", "dphi"])
@pytest.mark.parametrize("act", ACTS, ids=_act_id)
def test_activation_moments_match_scipy_quad(act, which, q):
    name, params = act
    fn = getattr(activations.get(name, **params), which)

    def f(z):
        return fn(z) ** 2

    ref, ref_err = _scipy_expectation(f, q)
    # the reference must itself be much better than the 1e-10 we ask of the harness, or a
    # failure below would say nothing about the harness
    assert ref_err <= 1e-12 * abs(ref), f"scipy reference not converged: {ref} ± {ref_err}"
    got = float(gaussian_expectation(f, q))
    assert abs(got - ref) <= 1e-10 * abs(ref), f"{got!r} vs scipy {ref!r}"


# E[z^k] for z ~ N(0, q): (k−1)!!·q^{k/2} for even k, 0 for odd k
@pytest.mark.parametrize("q", QS)
@pytest.mark.parametrize(
    "k, moment",
    [(0, lambda q: 1.0), (2, lambda q: q), (4, lambda q: 3 * q**2), (6, lambda q: 15 * q**3)],
)
def test_even_polynomial_moments(k, moment, q):
    got = float(gaussian_expectation(lambda z: z**k, q))
    assert got == pytest.approx(moment(q), rel=1e-12, abs=0)


@pytest.mark.parametrize("q", QS)
@pytest.mark.parametrize("k", [1, 3, 5])
def test_odd_polynomial_moments_vanish(k, q):
    # relative to the scale of |z|^k, E|z^k| ~ q^{k/2}
    got = float(gaussian_expectation(lambda z: z**k + 0.0, q))
    assert abs(got) <= 1e-12 * q ** (k / 2)


@pytest.mark.parametrize(
    "f, f0",
    [
        (lambda z: z + 7.0, 7.0),
        (torch.cos, 1.0),
        (torch.sigmoid, 0.5),
        (lambda z: torch.exp(z) + z**2, 1.0),
    ],
)
def test_q_zero_gives_f_at_zero(f, f0):
    got = gaussian_expectation(f, 0.0)
    assert float(got) == f0


def test_non_finite_q():
    assert np.isnan(gaussian_expectation(lambda z: z**2, math.nan))
    assert np.isnan(gaussian_expectation(lambda z: z**2, -1.0))
    assert gaussian_expectation(lambda z: z**2, math.inf) == math.inf
    # q = inf is the limit ½ f(+∞) + ½ f(−∞): tanh² → 1, sigmoid → 1/2
    assert gaussian_expectation(lambda z: torch.tanh(z) ** 2, math.inf) == 1.0
    assert gaussian_expectation(torch.sigmoid, math.inf) == 0.5


@pytest.mark.parametrize(
    "q", [np.array([0.5, 2.0]), np.array([[0.5, 1.0, 2.0], [3.0, 0.0, 10.0]]), [1.0, 4.0, 9.0]]
)
def test_array_q_keeps_shape_and_is_elementwise(q):
    def f(z):
        return z**2

    got = gaussian_expectation(f, q)
    qa = np.asarray(q, dtype=np.float64)
    assert isinstance(got, np.ndarray)
    assert got.shape == qa.shape
    np.testing.assert_allclose(got, qa, rtol=1e-12, atol=0)  # E[z²] = q, elementwise
    for idx in np.ndindex(qa.shape):
        assert got[idx] == float(gaussian_expectation(f, float(qa[idx])))


@pytest.mark.parametrize("q", [2.0, np.float64(2.0), 2, 0.0])
def test_scalar_q_gives_0d_array(q):
    got = gaussian_expectation(lambda z: z**2, q)
    assert isinstance(got, np.ndarray)
    assert got.shape == ()
    assert float(got) == pytest.approx(float(q), rel=1e-12, abs=0)
