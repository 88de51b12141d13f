"""q*, χ_1, ξ_q, c*, ξ_c (harness.theory.criticality) against independent numerical evaluation and
closed forms.

The reference side uses only numpy/scipy: φ written in numpy, V and D by scipy's adaptive
`quad`, q* by `brentq`, dV/dq by a central difference, and the correlation map by a 2-D
Gauss–Hermite product rule (150² nodes; smooth tanh) with `brentq` for c*. The relu family has
closed forms: V = q/2, D = 1/2, so q* = σ_b²/(1 − σ_w²/2) when σ_w² < 2.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import integrate, optimize, stats

from harness.core.activations import get
from harness.theory.criticality import analyze, describe, for_spec
from tests.conftest import small_spec

NUMPY_PHI = {
    "tanh": (np.tanh, lambda x: 1 - np.tanh(x) ** 2),
    "sigmoid": (lambda x: 1 / (1 + np.exp(-x)), lambda x: np.exp(-x) / (1 + np.exp(-x)) ** 2),
    "softplus": (lambda x: np.logaddexp(0, x), lambda x: 1 / (1 + np.exp(-x))),
}


def _E(f, q: float) -> float:
    return integrate.quad(lambda u: f(math.sqrt(q) * u) * stats.norm.pdf(u), -14, 14,
                          points=[0.0], epsabs=1e-15, epsrel=1e-13, limit=200)[0]


CASES = [("tanh", 1.76, 0.05), ("tanh", 2.5, 0.0), ("tanh", 4.0, 0.3), ("tanh", 0.8, 0.2),
         ("sigmoid", 16.0, 0.0), ("softplus", 0.9, 0.1)]


@pytest.mark.parametrize("name, s2, b2", CASES)
def test_q_star_chi_xi_q_against_scipy(name, s2, b2):
    phi, dphi = NUMPY_PHI[name]

    def V(q):
        return _E(lambda x: phi(x) ** 2, q)

    q_ref = optimize.brentq(lambda q: s2 * V(q) + b2 - q, 1e-6, 50.0, xtol=1e-14, rtol=1e-14)
    c = analyze(get(name), s2, b2, q_start=s2 + b2)
    assert c.q_star == pytest.approx(q_ref, rel=1e-9)
    assert c.chi_1 == pytest.approx(s2 * _E(lambda x: dphi(x) ** 2, q_ref), rel=1e-9)
    h = 1e-4 * q_ref
    slope = s2 * (V(q_ref + h) - V(q_ref - h)) / (2 * h)
    assert c.xi_q == pytest.approx(-1 / math.log(slope), rel=1e-6)


def _gauss_hermite_2d(f, g, q: float, c: float, n: int = 150) -> float:
    x, w = np.polynomial.hermite_e.hermegauss(n)
    w = w / w.sum()
    z1, z2 = np.meshgrid(x, x, indexing="ij")
    u1 = math.sqrt(q) * z1
    u2 = math.sqrt(q) * (c * z1 + math.sqrt(1 - c * c) * z2)
    return float((np.outer(w, w) * f(u1) * g(u2)).sum())


def test_chaotic_c_star_and_xi_c_against_gauss_hermite():
    s2, b2 = 4.0, 0.3
    crit = analyze(get("tanh"), s2, b2, q_start=s2 + b2)
    assert crit.phase == "chaotic" and crit.chi_1 > 1
    q = crit.q_star

    def cmap(c):
        return (s2 * _gauss_hermite_2d(np.tanh, np.tanh, q, c) + b2) / q - c

    c_ref = optimize.brentq(cmap, 0.0, 0.99, xtol=1e-13)
    assert crit.c_star == pytest.approx(c_ref, abs=1e-7)
    sech2 = NUMPY_PHI["tanh"][1]
    chi_c = s2 * _gauss_hermite_2d(sech2, sech2, q, c_ref)
    assert crit.xi_c == pytest.approx(-1 / math.log(chi_c), rel=1e-6)


def test_ordered_phase_c_star_is_one_and_xi_c_from_chi_1():
    crit = analyze(get("tanh"), 1.2, 0.3, q_start=1.5)
    assert crit.phase == "ordered" and crit.c_star == 1.0
    assert crit.xi_c == pytest.approx(-1 / math.log(crit.chi_1), rel=1e-12)


@pytest.mark.parametrize("s2, b2", [(1.5, 0.1), (1.0, 0.4), (0.5, 0.02)])
def test_relu_closed_forms(s2, b2):
    crit = analyze(get("relu"), s2, b2, q_start=0.7)
    assert crit.q_star == pytest.approx(b2 / (1 - s2 / 2), rel=1e-12)
    assert crit.chi_1 == pytest.approx(s2 / 2, rel=1e-14)
    assert crit.xi_q == pytest.approx(-1 / math.log(s2 / 2), rel=1e-9)  # φφ'' = 0
    assert crit.c_star == 1.0 and crit.xi_c == pytest.approx(crit.xi_q, rel=1e-9)


def test_relu_he_is_neutral_and_critical():
    crit = analyze(get("relu"), 2.0, 0.0, q_start=1.3)
    assert crit.q_star == 1.3 and "neutral" in crit.note
    assert crit.phase == "critical" and math.isinf(crit.xi_q) and math.isinf(crit.xi_c)


def test_relu_above_he_diverges_but_chi_is_defined():
    crit = analyze(get("relu"), 3.0, 0.0, q_start=1.0)
    assert crit.q_star is None and crit.chi_1 == pytest.approx(1.5) and crit.phase == "chaotic"


@pytest.mark.parametrize("s2", [0.5, 0.9])
def test_tanh_without_bias_below_one_loses_the_signal(s2):
    crit = analyze(get("tanh"), s2, 0.0, q_start=1.0)
    # q* = 0, where tanh is linear: χ_1 = σ_w² tanh'(0)² and ξ_q = −1/ln σ_w²
    assert crit.q_star == 0.0 and crit.c_star is None
    assert crit.chi_1 == pytest.approx(s2, rel=1e-12)
    assert crit.xi_q == pytest.approx(-1 / math.log(s2), rel=1e-12)


def test_selu_self_normalizing_fixed_point():
    # Klambauer et al. 2017: with σ_w² = 1 and no bias, q* = 1
    crit = analyze(get("selu"), 1.0, 0.0, q_start=2.0)
    assert crit.q_star == pytest.approx(1.0, abs=1e-6)


def test_for_spec_is_na_where_undefined():
    assert for_spec(small_spec("widths=[8,16,8]", "depth=2")).phase == "n/a"
    assert "square" in for_spec(small_spec("widths=[8,16,8]", "depth=2")).note
    assert for_spec(small_spec("depth=1", "width=8")).phase == "n/a"
    # a different first-layer width is fine: it only sets q¹
    c = for_spec(small_spec("widths=[32,16,16,16]", "depth=3", "scheme=meanfield",
                            "scheme.sigma_w2=1.5", "scheme.sigma_b2=0.1", "act=tanh"))
    assert c.sigma_w2 == pytest.approx(1.5) and c.q_star > 0
    assert "χ_1" in describe(c) and "n/a" in describe(for_spec(small_spec("widths=[8,16,8]",
                                                                            "depth=2")))
