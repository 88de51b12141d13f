"""The activation registry (harness.core.activations), checked against independent references.

- φ against formulas written here in numpy/scipy, and φ' against torch autograd of φ;
- the closed forms V, D (linear, relu, leaky_relu) against quadrature of φ², φ'²
  (harness.core.quadrature, itself checked against scipy in test_quadrature.py);
- V(q), D(q) of every activation against seeded Monte-Carlo means of φ(z)², φ'(z)²,
  tolerance from the sample's standard error;
- `get`: errors, parameter defaults (against torch.nn.functional's own defaults);
- selu's self-normalizing fixed point V(1) = 1 (Klambauer et al. 2017).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import special

from harness.core import activations
from harness.core.activations import get
from harness.core.quadrature import gaussian_expectation

# every registered activation at its defaults, plus non-default parameters
ACTS = [(name, {}) for name in activations.NAMES] + [
    ("leaky_relu", {"negative_slope": 0.2}),
    ("leaky_relu", {"negative_slope": 3.0}),
    ("elu", {"alpha": 0.5}),
    ("softplus", {"beta": 2.0}),
]
KINKED = {"relu", "leaky_relu", "elu", "selu"}  # φ' jumps at 0


def _act_id(a):
    name, params = a
    return name + "".join(f"-{k}={v:g}" for k, v in params.items())


def test_registry_covers_the_tested_activations():
    # guards the parametrizations below against silently testing fewer activations
    assert {name for name, _ in ACTS} == set(activations.NAMES)


# ---------------------------------------------------------------------------------------------
# φ and φ'

# Klambauer et al. 2017, eq. 14 (to the digits given in torch's documentation of SELU)
_SELU_ALPHA = 1.6732632423543772848170429916717
_SELU_SCALE = 1.0507009873554804934193349852946


def _reference_phi(name: str, x: np.ndarray, p: dict) -> np.ndarray:
    """φ written from its textbook definition, in numpy/scipy (float64)."""
    if name == "linear":
        return x
    if name == "relu":
        return np.maximum(x, 0.0)
    if name == "leaky_relu":
        return np.where(x > 0, x, p.get("negative_slope", 0.01) * x)
    if name == "tanh":
        return np.tanh(x)
    if name == "sigmoid":
        return special.expit(x)
    if name == "selu":
        return _SELU_SCALE * np.where(x > 0, x, _SELU_ALPHA * np.expm1(np.minimum(x, 0)))
    if name == "elu":
        return np.where(x > 0, x, p.get("alpha", 1.0) * np.expm1(np.minimum(x, 0)))
    if name == "gelu":
        return x * special.ndtr(x)
    if name == "silu":
        return x * special.expit(x)
    if name == "softplus":  # torch's: log(1 + e^{βx})/β, exactly x once βx > 20
        b = p.get("beta", 1.0)
        return np.where(b * x > 20, x, np.logaddexp(0.0, b * x) / b)
    raise AssertionError(f"no reference for {name}")


def _points(name: str, params: dict) -> torch.Tensor:
    """Many float64 points: small to large magnitudes of both signs; 0 only where φ is smooth.

    For softplus the band 20 < βx < 40 is left to test_softplus_dphi_past_threshold below.
    """
    mags = np.concatenate([np.logspace(-6, 1.5, 120), np.linspace(0.05, 19.95, 100)])
    x = np.concatenate([-mags, mags, [-300.0, -40.0, 40.0, 300.0]])
    if name not in KINKED:
        x = np.append(x, 0.0)
    if name == "softplus":
        bx = params.get("beta", 1.0) * x
        x = x[~((bx > 20) & (bx < 40))]
    return torch.from_numpy(np.sort(x))


@pytest.mark.parametrize("act", ACTS, ids=_act_id)
def test_phi_matches_reference_formula(act):
    name, params = act
    x = _points(name, params)
    got = get(name, **params).phi(x).numpy()
    np.testing.assert_allclose(got, _reference_phi(name, x.numpy(), params), rtol=1e-12, atol=1e-15)


def _autograd_dphi(phi, x: torch.Tensor) -> torch.Tensor:
    x = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(phi(x).sum(), x)
    return g


# float64 on both sides; derivatives are O(1), so rtol 1e-12 plus atol ~5 ulp at 1
@pytest.mark.parametrize("act", ACTS, ids=_act_id)
def test_dphi_matches_autograd(act):
    name, params = act
    a = get(name, **params)
    x = _points(name, params)
    torch.testing.assert_close(a.dphi(x), _autograd_dphi(a.phi, x), rtol=1e-12, atol=1e-15)


# torch's softplus is exactly linear past βx > 20: dphi must follow it there too
@pytest.mark.parametrize("beta", [1.0, 2.0])
def test_softplus_dphi_past_threshold(beta):
    a = get("softplus", beta=beta)
    x = torch.linspace(20.25, 39.75, 40, dtype=torch.float64) / beta
    torch.testing.assert_close(a.dphi(x), _autograd_dphi(a.phi, x), rtol=1e-12, atol=1e-15)


# ---------------------------------------------------------------------------------------------
# Closed-form moments against quadrature

QS = [1e-3, 0.1, 1.0, 3.0, 10.0, 100.0]
CLOSED = [
    ("linear", {}),
    ("relu", {}),
    ("leaky_relu", {}),
    ("leaky_relu", {"negative_slope": 0.2}),
    ("leaky_relu", {"negative_slope": 0.5}),
    ("leaky_relu", {"negative_slope": 3.0}),
]


def test_closed_form_list_is_complete():
    has_closed = {n for n, k in activations.REGISTRY.items() if k.V_closed or k.D_closed}
    assert has_closed == {name for name, _ in CLOSED}


@pytest.mark.parametrize("q", QS)
@pytest.mark.parametrize("act", CLOSED, ids=_act_id)
def test_closed_forms_match_quadrature(act, q):
    name, params = act
    a = get(name, **params)
    v_quad = float(gaussian_expectation(lambda z: a.phi(z) ** 2, q))
    d_quad = float(gaussian_expectation(lambda z: a.dphi(z) ** 2, q))
    # the quadrature's promised accuracy is 1e-10 relative
    assert float(a.V(q)) == pytest.approx(v_quad, rel=1e-10, abs=0)
    assert float(a.D(q)) == pytest.approx(d_quad, rel=1e-10, abs=0)


@pytest.mark.parametrize("act", ACTS, ids=_act_id)
def test_moments_of_array_q_are_elementwise(act):
    name, params = act
    a = get(name, **params)
    q = np.array([[0.5, 1.0], [2.0, 8.0], [0.1, 30.0]])
    for moment in (a.V, a.D):
        got = moment(q)
        assert got.shape == q.shape
        for idx in np.ndindex(q.shape):
            assert got[idx] == pytest.approx(float(moment(float(q[idx]))), rel=1e-14)
        assert moment(1.0).shape == ()


# ---------------------------------------------------------------------------------------------
# Monte Carlo

N_MC = 2_000_000
MC_QS = [0.3, 1.0, 5.0]
# 15 activations × 3 q × 2 moments = 90 comparisons. With the sample mean's CLT error,
# P(|error| > k·SE) = 2Φ(−k) = 5.7e-7 at k = 5, so by the union bound a correct
# implementation fails any of the 90 with probability ≤ 90 · 5.7e-7 ≈ 5e-5 for a fresh seed.
# (The SE is estimated from the same 2e6 samples; its relative error is ~1e-3, negligible.)
K_SE = 5.0


@pytest.fixture(scope="module")
def normal_samples():
    cache: dict[float, torch.Tensor] = {}

    def draw(q: float) -> torch.Tensor:
        if q not in cache:
            g = torch.Generator().manual_seed(1000 + MC_QS.index(q))
            cache[q] = math.sqrt(q) * torch.randn(N_MC, generator=g, dtype=torch.float64)
        return cache[q]

    return draw


@pytest.mark.parametrize("q", MC_QS)
@pytest.mark.parametrize("act", ACTS, ids=_act_id)
def test_moments_match_monte_carlo(act, q, normal_samples):
    name, params = act
    a = get(name, **params)
    z = normal_samples(q)
    for label, theory, samples in (("V", a.V(q), a.phi(z) ** 2), ("D", a.D(q), a.dphi(z) ** 2)):
        mean = samples.mean().item()
        se = samples.std().item() / math.sqrt(N_MC)
        assert abs(float(theory) - mean) <= K_SE * se, (
            f"{label}({q}) = {float(theory)!r}, Monte Carlo {mean!r} ± {se:.2e}"
        )


# ---------------------------------------------------------------------------------------------
# get: errors and defaults


@pytest.mark.parametrize("bad", ["Relu", "swish", "", "leaky-relu"])
def test_get_rejects_unknown_names_listing_allowed(bad):
    with pytest.raises(ValueError) as info:
        get(bad)
    for name in activations.NAMES:
        assert name in str(info.value)


@pytest.mark.parametrize(
    "name, bad_param, allowed",
    [
        ("leaky_relu", "alpha", ["negative_slope"]),
        ("elu", "negative_slope", ["alpha"]),
        ("softplus", "threshold", ["beta"]),
        ("relu", "negative_slope", []),
        ("tanh", "beta", []),
    ],
)
def test_get_rejects_unknown_parameters_listing_allowed(name, bad_param, allowed):
    with pytest.raises(ValueError) as info:
        get(name, **{bad_param: 0.5})
    msg = str(info.value)
    assert bad_param in msg
    for p in allowed:
        assert p in msg


@pytest.mark.parametrize(
    "name, param, value, torch_default_fn",
    [
        ("leaky_relu", "negative_slope", 0.01, F.leaky_relu),
        ("elu", "alpha", 1.0, F.elu),
        ("softplus", "beta", 1.0, F.softplus),
    ],
)
def test_parameter_defaults(name, param, value, torch_default_fn):
    a = get(name)
    assert dict(a.params) == {param: value}
    # and they are torch.nn.functional's own defaults
    x = torch.linspace(-30, 30, 1001, dtype=torch.float64)
    torch.testing.assert_close(a.phi(x), torch_default_fn(x), rtol=0, atol=0)


def test_explicit_parameters_are_used():
    x = torch.linspace(-5, 5, 101, dtype=torch.float64)
    torch.testing.assert_close(get("leaky_relu", negative_slope=0.2).phi(x), F.leaky_relu(x, 0.2))
    torch.testing.assert_close(get("elu", alpha=0.5).phi(x), F.elu(x, 0.5))
    torch.testing.assert_close(get("softplus", beta=3.0).phi(x), F.softplus(x, 3.0))


def test_gain_names_are_known_to_torch():
    for kind in activations.REGISTRY.values():
        if kind.gain_name is not None:
            torch.nn.init.calculate_gain(kind.gain_name)  # raises ValueError if unknown


def test_selu_fixed_point():
    # Klambauer et al. 2017: λ, α are chosen so that z ~ N(0, 1) ⇒ E[selu(z)] = 0 and
    # E[selu(z)²] = 1 (mean 0, variance 1 is the self-normalizing fixed point)
    a = get("selu")
    assert abs(float(a.V(1.0)) - 1.0) <= 1e-6
    assert abs(float(gaussian_expectation(a.phi, 1.0))) <= 1e-6


@pytest.mark.parametrize("act", ACTS, ids=_act_id)
def test_in_place_phi_agrees_with_phi(act):
    """The runner's fast form phi_ (in place where torch has it) acts exactly as phi does."""
    name, params = act
    a = get(name, **params)
    x = _points(name, params)
    torch.testing.assert_close(a.phi_(x.clone()), a.phi(x), rtol=0, atol=0)


@pytest.mark.parametrize("act", [*ACTS, ("leaky_relu", {"negative_slope": -0.5}),
                                 ("elu", {"alpha": -0.3}), ("elu", {"alpha": 0.0})], ids=_act_id)
def test_fused_backward_equals_delta_times_dphi(act):
    """Activation.backward_ (torch's fused backward kernels, from φ(h) or h as the entry says)
    is δ ⊙ φ'(h) with the registry's own φ', at 0 and past softplus's threshold included."""
    name, params = act
    a = get(name, **params)
    h = torch.cat([_points(name, params), torch.tensor([0.0, 0.0, 25.0, -25.0],
                                                       dtype=torch.float64)])
    d = torch.randn(h.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    saved = a.phi_(h.clone()) if a.saves_output else h.clone()
    got = a.backward_(d.clone(), saved)
    # φ' = 1 − y² near y = ±1 cancels: compare on the scale of δ (|δ| ~ 1, max φ' ~ 1)
    torch.testing.assert_close(got, d * a.dphi(h), rtol=1e-12, atol=1e-15)
