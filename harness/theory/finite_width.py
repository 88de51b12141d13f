"""Finite-width spread of the forward second moment for the relu family (Hanin & Nica 2019).

For φ(x) = max(x, a·x) (relu a = 0, leaky_relu, linear a = 1), Gaussian zero-mean weights and no
bias, the measured forward moment of one network is an exact product of independent mean-one
factors. For one input x_b, with q̂^l_b = ‖h^l_b‖²/n_l:

    q̂^l_b / q^l = X_0 · B_1 ⋯ B_{l−1} · A_l,
    X_0 = ‖x^0‖²/(n_0 q_0)                 E[X_0²] = 1 + 2/n_0
    B_k = Σ_i φ(g_i)²/(n_k m_2)            E[B_k²] = 1 + v_k,  v_k = (3(1+a⁴)/2 − m_2²)/(n_k m_2²)
    A_l = Σ_i g_i²/n_l                     E[A_l²] = 1 + 2/n_l

with g = h^k normalised by its conditional std (iid N(0, 1) given the layers below, whatever
σ_w is) and m_2 = (1+a²)/2. Its log is a sum of independent terms of variance ≈ 5/n_k for relu:
Hanin & Nica's log-normal with variance ≈ 5β, β = Σ 1/n_k.

What the harness measures is pooled over the batch: F^l = mean_b q̂^l_b. Two inputs a ≠ b of one
network share the weights, so their factors are correlated through the correlation ρ_k of their
pre-activations at layer k:

    E[B_k^a B_k^b] = 1 + w_k,  w_k = ((1+a⁴) K(ρ_k) + 2a² K(−ρ_k) − m_2²)/(n_k m_2²),
    K(ρ) = E[relu(g_a)² relu(g_b)²] = (3 sin θ cos θ + (π − θ)(1 + 2cos²θ))/(2π),  cos θ = ρ
    E[A_l^a A_l^b] = 1 + 2ρ_l²/n_l,   E[X_0^a X_0^b] = 1 + 2c_0²/n_0   (c_0 = input_corr)

(the degree-2 arc-cosine kernel of Cho & Saul 2009). The realized ρ_k fluctuates around the
mean-field c^k (`harness.theory.meanfield`) with a variance τ_k² that random-walks with depth, so to
second order E[w_k(ρ_k)] = w_k(c^k) + ½ w_k''(c^k) τ_k² (K''(ρ) = 2(π − θ)/π by Price's
theorem), E[ρ_l²] = (c^l)² + τ_l², and

    τ_1² = (1 − c_0²)²/n_0,   τ_{k+1}² = C'(c^k)² τ_k² + σ²(c^k)/n_k,

with C' = E[φ'(u_1)φ'(u_2)]/m_2 the slope of the normalised correlation map and σ²(c)/n the
delta-method variance of the cosine of n iid pairs (φ(u_1), φ(u_2)) of correlation c:
σ² = (E[φ_1²φ_2²](1 + ρ̄²/2) − 2ρ̄ E[φ_1³φ_2] + ρ̄² E[φ⁴]/2)/m_2², ρ̄ = C(c)/m_2, where
φ³ = relu³(x) − a³ relu³(−x) gives E[φ_1³φ_2] = (1 + a⁴) J(c) − (a + a³) J(−c) with the
mixed arc-cosine moment (polar coordinates, E[r⁴] = 8)

    J(ρ) = E[relu(g_a)³ relu(g_b)] = (4/π)[cos θ (3(π − θ)/8 + sin 2θ/4 − sin 4θ/32) + sin⁵θ/4],

J(1) = 3/2 = E[relu⁴], J(0) = 1/π (it agrees with the 2-D quadrature to ~1e-15; tests). For B
inputs

    E[(F^l/q^l)²] = M_1/B + (1 − 1/B) M_2,  M_1 = ∏ E[factor²],  M_2 = ∏ E[factor^a factor^b]

and, matching a log-normal with mean one, log(F^l/q^l) ~ N(−s_l²/2, s_l²), s_l² = ln E[(F/q)²].
The central band is q^l exp(−s_l²/2 ± z s_l) with z = Φ^{-1}((1 + level)/2); "coverage" is the
fraction of (replicate, layer) values that fall inside it, ≈ level when the band is right.
M_1 is exact; M_2 and the log-normal shape hold to leading order in 1/n (tests: the variance
of log F^l across 1000 simulated networks agrees within its standard error at width 128).

Every other activation (and the relu family with biases or non-Gaussian iid weights) gets the
band of the four-point vertex (`harness.theory.nlo`): centred on the NLO mean m^l with
s_l² = ln(1 + Var F^l/m^l²) from `nlo.log_variance`, the same log-normal shape and the same
coverage rule; `Band.source` says which.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

from harness import archs
from harness.core import init as inits
from harness.core.activations import get as get_activation
from harness.core.capabilities import FINITE_WIDTH_BAND
from harness.core.spec import Spec

LEVEL = 0.95
RELU_FAMILY = {"relu": 0.0, "linear": 1.0}  # leaky_relu: its negative_slope


@dataclass(frozen=True)
class Band:
    """The central `level` band of the forward moment per layer l = 1..L (None: undefined)."""

    lower: np.ndarray | None
    upper: np.ndarray | None
    log_var: np.ndarray | None  # s_l²
    level: float
    reason: str = ""
    source: str = "Hanin & Nica 2019"


def _relu_K(rho: np.ndarray) -> np.ndarray:
    """E[relu(g_a)² relu(g_b)²] for standard normals of correlation ρ."""
    theta = np.arccos(np.clip(rho, -1.0, 1.0))
    return (3 * np.sin(theta) * np.cos(theta)
            + (np.pi - theta) * (1 + 2 * np.cos(theta) ** 2)) / (2 * np.pi)


def slope(spec: Spec) -> float | None:
    """a of φ(x) = max(x, a·x) if φ is in the relu family, else None."""
    if spec.act == "leaky_relu":
        return float(dict(spec.act_params)["negative_slope"])
    return RELU_FAMILY.get(spec.act)


def undefined_reason(spec: Spec) -> str:
    """Why the band is not defined for this run ("" if it is)."""
    reason = archs.why_not(spec, FINITE_WIDTH_BAND)  # e.g. "defined for MLPs (arch=mlp) only"
    if reason:
        return reason
    if slope(spec) is None:
        return f"defined for the relu family (relu, leaky_relu, linear), not {spec.act}"
    dist = inits.scheme(spec.scheme).draws(dict(spec.scheme_params))
    if dist not in ("normal", "untruncated_normal"):
        return f"needs Gaussian weights; scheme {spec.scheme} draws {dist}"
    if spec.bias_std > 0:
        return "needs zero biases"
    return ""


def _relu_J(rho: float) -> float:
    """J(ρ) = E[relu(g_a)³ relu(g_b)] for standard normals of correlation ρ, cos θ = ρ
    (module doc): (4/π)[cos θ (3(π − θ)/8 + sin 2θ/4 − sin 4θ/32) + sin⁵θ/4]."""
    theta = math.acos(min(1.0, max(-1.0, rho)))
    c, s = math.cos(theta), math.sin(theta)
    return (4 / math.pi) * (c * (3 * (math.pi - theta) / 8 + math.sin(2 * theta) / 4
                                 - math.sin(4 * theta) / 32) + s**5 / 4)


def _P_same_sign(rho: float) -> float:
    """P(u_1 > 0, u_2 > 0) for standard normals of correlation ρ: (π − arccos ρ)/(2π)."""
    return (math.pi - math.acos(min(1.0, max(-1.0, rho)))) / (2 * math.pi)


def _cosine_noise(a: float, c: float) -> tuple[float, float, float]:
    """(ρ̄, C'(c), σ²(c)) of the normalised correlation map of φ(x) = max(x, a·x) at c."""
    m2 = (1 + a * a) / 2
    act = get_activation("leaky_relu", negative_slope=a)
    rho_bar = act.C(1.0, c) / m2
    p_pp, p_pm = _P_same_sign(c), 0.5 - _P_same_sign(c)
    slope = ((1 + a * a) * p_pp + 2 * a * p_pm) / m2  # E[φ'φ'] / m_2
    k = float((1 + a**4) * _relu_K(np.array(c)) + 2 * a * a * _relu_K(np.array(-c)))
    e31 = (1 + a**4) * _relu_J(c) - (a + a**3) * _relu_J(-c)  # E[φ(u_1)³ φ(u_2)]
    e4 = 1.5 * (1 + a**4)
    var = (k * (1 + rho_bar**2 / 2) - 2 * rho_bar * e31 + rho_bar**2 * e4 / 2) / (m2 * m2)
    return rho_bar, slope, max(var, 0.0)


def log_variance(a: float, widths: tuple[int, ...], rho: np.ndarray, c0: float,
                 batch: int) -> np.ndarray:
    """s_l² = ln E[(F^l/q^l)²], l = 1..L, for slope a, widths n_0..n_L, the mean-field
    pre-activation correlations c^l (l = 1..L), the input correlation c_0 and `batch` inputs
    (module doc)."""
    n = np.asarray(widths, dtype=np.float64)
    L = len(n) - 1
    m2 = (1 + a * a) / 2
    rho = np.nan_to_num(np.asarray(rho, dtype=np.float64), nan=1.0)
    v = (1.5 * (1 + a**4) - m2 * m2) / (n[1:] * m2 * m2)  # per hidden layer k = 1..L
    # τ_k² = Var(realized ρ_k), k = 1..L (only needed when pairs of inputs are pooled)
    tau2 = np.zeros(L)
    if batch > 1:
        tau2[0] = (1 - c0 * c0) ** 2 / n[0]
        for k in range(L - 1):
            _, slope, sig2 = _cosine_noise(a, float(rho[k]))
            tau2[k + 1] = slope**2 * tau2[k] + sig2 / n[k + 1]
    e2 = (1 + a**4) * _relu_K(rho) + 2 * a * a * _relu_K(-rho)
    e2_curv = (1 + a**4) * 4 * np.vectorize(_P_same_sign)(rho) + \
        2 * a * a * 4 * np.vectorize(_P_same_sign)(-rho)  # d²E2/dρ²
    w = (e2 + 0.5 * e2_curv * tau2 - m2 * m2) / (n[1:] * m2 * m2)
    out = np.empty(L)
    for l in range(1, L + 1):  # layer l: X_0, B_1..B_{l-1}, A_l
        m1 = (1 + 2 / n[0]) * np.prod(1 + v[: l - 1]) * (1 + 2 / n[l])
        mx = ((1 + 2 * c0 * c0 / n[0]) * np.prod(1 + w[: l - 1])
              * (1 + 2 * (rho[l - 1] ** 2 + tau2[l - 1]) / n[l]))
        out[l - 1] = math.log(m1 / batch + (1 - 1 / batch) * mx)
    return out


#: `Band.source` of the band from the four-point vertex
VERTEX = "four-point vertex, 1/n"


def band(spec: Spec, forward: np.ndarray, correlation: np.ndarray, level: float = LEVEL,
         nlo_mean: np.ndarray | None = None, nlo_log_var: np.ndarray | None = None) -> Band:
    """The band around the forward prediction `forward` (q^l) given the predicted
    pre-activation correlations `correlation` (c^l): Hanin & Nica's for the relu family, else
    (when given) the four-point vertex's around the NLO mean `nlo_mean` with s² `nlo_log_var`
    (`harness.theory.nlo`)."""
    reason = undefined_reason(spec)
    if reason and nlo_mean is not None and nlo_log_var is not None:
        return vertex_band(nlo_mean, nlo_log_var, level)
    if reason:
        return Band(None, None, None, level, reason)
    s2 = log_variance(slope(spec), spec.widths, correlation, spec.input_corr, spec.batch)
    z = NormalDist().inv_cdf(0.5 + level / 2)
    s = np.sqrt(s2)
    q = np.asarray(forward, dtype=np.float64)
    return Band(q * np.exp(-s2 / 2 - z * s), q * np.exp(-s2 / 2 + z * s), s2, level)


def vertex_band(mean: np.ndarray, log_var: np.ndarray, level: float = LEVEL) -> Band:
    """The log-normal central band m exp(−s²/2 ± z s) of mean m and log-variance s² per layer
    (`Band.source` = VERTEX)."""
    z = NormalDist().inv_cdf(0.5 + level / 2)
    s2 = np.asarray(log_var, dtype=np.float64)
    s = np.sqrt(s2)
    m = np.asarray(mean, dtype=np.float64)
    return Band(m * np.exp(-s2 / 2 - z * s), m * np.exp(-s2 / 2 + z * s), s2, level,
                source=VERTEX)


def coverage(b: Band, measured: np.ndarray) -> dict[str, object]:
    """How many measured forward values (R, L) lie inside the band: overall and per layer."""
    if b.lower is None:
        return {"defined": False, "reason": b.reason}
    inside = (measured >= b.lower) & (measured <= b.upper)
    return {
        "defined": True,
        "source": b.source,
        "level": b.level,
        "coverage": float(inside.mean()),
        "coverage_last_layer": float(inside[:, -1].mean()),
        "outside_per_layer": (~inside).sum(0).astype(int).tolist(),
        "lower": b.lower.tolist(),
        "upper": b.upper.tolist(),
        "log_var": b.log_var.tolist(),
    }


def describe(cov: dict[str, object], replicates: int) -> str:
    """One console line."""
    if not cov["defined"]:
        return f"finite-width band: n/a ({cov['reason']})"
    last = round(float(cov["coverage_last_layer"]) * replicates)
    return (f"finite-width band ({cov.get('source', 'Hanin & Nica 2019')}, central "
            f"{100 * cov['level']:.0f}%): "
            f"{100 * cov['coverage']:.1f}% of replicate×layer forward values inside; "
            f"last layer {last}/{replicates}")
