"""Next-to-leading order in 1/n: the ensemble mean of each MLP quantity to O(1/n), and the
spread of the per-network statistics across networks (the four-point vertex).

The 1/n expansion of Roberts, Yaida & Hanin, *The Principles of Deep Learning Theory* (2022),
written for what the harness measures (docs/theory.md, "Next-to-leading order"). For one input
x_b, the realized kernel of layer l is Ĝ^l = σ_w,l² ‖x^{l−1}‖²/n_{l−1} + σ_b²: given the layers
below, the n_l pre-activations h^l_i are iid with E[h_i²] = Ĝ^l (Gaussian when the weights are),
so the forward statistic's mean is E F^l = E Ĝ^l exactly and Ĝ is a Markov chain. With q^l the
mean-field value, δ^l = E Ĝ^l − q^l, v^l = Var Ĝ^l, κ^l the fourth cumulant of h^l_i given the
layer below (weights of excess kurtosis k_w: uniform −6/5, Gaussian 0), V, V', V'' the function
V_φ(q) = E φ(√q z)² and its q-derivatives, V4 = E φ⁴:

    δ^1 = 0,  v^1 = 2 σ_w,1⁴ q_0²/n_0,  κ^1 = 3 k_w σ_w,1⁴ q_0²/n_0
    a^l     = V + V' δ^l + ½ V'' v^l + V'' κ^l/6                    (activation, l < L)
    δ^{l+1} = σ_w,l+1² (a^l − V(q^l))                                (forward: q^l + δ^l)
    v^{l+1} = σ_w,l+1⁴ [(V4 − V²)/n_l + V'² v^l]                     (the four-point vertex)
    κ^{l+1} = k_w σ_w,l+1⁴ V4/n_l

(all of V, V', … at q^l). Backward: with a Gaussian cotangent r, E_r ‖δ^l‖² = ‖J^l‖_F² for the
Jacobian J^l = ∂h^L/∂h^l, and ‖J‖_F² = E_v ‖J v‖² for v ~ N(0, I): the backward statistic is a
forward quantity, the tangent t^k = W^k (φ'(h^{k−1}) ⊙ t^{k−1}) started at t^l = v. Given layer
k, (h_i, t_i) are iid Gaussian of kernel [[Ĝ_hh, Ĝ_ht], [Ĝ_ht, Ĝ_tt]]; with T = E Ĝ_tt,
χ = Cov(Ĝ_hh, Ĝ_tt), w = Var Ĝ_ht (E Ĝ_ht = 0), ρ = Cov(Ĝ_tt^k, Ĝ_hh^l), ζ = Cov(Ĝ_hh^k, Ĝ_hh^l),
D = E φ'², D', D'' its q-derivatives, P = E φ²φ'², Ψ = (E[φ'(h)² h²] − q D)/q²:

    start T = 1, χ = w = ρ = 0, ζ = v^l
    T ← σ² [T (D + D' δ + ½ D'' v) + D' χ + Ψ w]
    χ ← σ⁴ [V' (D χ + T D' v) + T (P − V D)/n_k]
    w ← σ⁴ [V'² w + T P/n_k]
    ρ ← σ² [D ρ + T D' ζ],   ζ ← σ² V' ζ
    backward^l    = (n_L/n_l) T^L
    weight_grad^l = (n_L/n_l) (T^L (E Ĝ^l − σ_b²) + ρ^L)/σ_w,l²

(σ² = σ_w,k+1², moments at q^k). For relu and linear V'' = D' = Ψ = 0: every correction vanishes,
as it must (their means are exact at every width). Spread (`log_variance`): for B inputs of
mean-field correlation c^l, u^l = Cov(Ĝ_aa, Ĝ_bb), u^1 = 2 σ_w,1⁴ q_0² c_0²/n_0,
u^{l+1} = σ_w,l+1⁴ [(K22(q^l, c^l) − V²)/n_l + V'² u^l], K22 = E[φ(u_a)² φ(u_b)²]:

    Var F^l = v^l/B + (1 − 1/B) u^l + (2/n_l) q^l² (1/B + (1 − 1/B) c^l²)
    Var A^l = V'² (v^l/B + (1 − 1/B) u^l) + [(V4 − V²)/B + (1 − 1/B)(K22 − V²)]/n_l

and s² = ln(1 + Var/mean²), the variance of a log-normal with that mean and variance. All
Gaussian expectations come from one graded Gauss–Legendre rule per layer (`moments`); the
q-derivatives are integrals of φ² (φ'²) against the derivatives of the Gaussian density,
∂_q p/p = (u² − q)/(2q²), ∂²_q p/p = (u⁴ − 6qu² + 3q²)/(4q⁴), so kinks need no derivative of φ.
Errors are O(1/n²): the relative error grows like (Σ_l 1/n_l)² (tests).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache, lru_cache

import numpy as np
import torch

from harness import archs
from harness.core import init as inits
from harness.core.activations import Activation
from harness.core.activations import get as get_activation
from harness.core.capabilities import FINITE_WIDTH_BAND
from harness.core.quadrature import gaussian_expectation_2d, gaussian_rule
from harness.core.spec import Spec
from harness.theory import nlo_pair

#: the quantities whose NLO mean `predict` gives (Gaussian weights; forward and activation
#: also for uniform and truncated-normal ones) and those whose spread `log_variance` gives
MEAN_QUANTITIES = ("forward", "activation", "backward", "weight_grad", "correlation")
SPREAD_QUANTITIES = ("forward", "activation", "backward", "weight_grad")


@cache
def weight_kurtosis(distribution: str) -> float | None:
    """Excess kurtosis k_w = E w⁴/(E w²)² − 3 of an iid scheme's draw: Gaussian 0, uniform −6/5,
    the normal truncated at ±2 standard deviations (Keras's) from scipy; None for any other
    (orthogonal draws are not iid, torch's trunc_normal has free bounds)."""
    if distribution in ("normal", "untruncated_normal"):
        return 0.0
    if distribution == "uniform":
        return -1.2
    if distribution == "truncated_normal":
        from scipy import stats  # scipy (~0.5 s to import) only for this scheme

        return float(stats.truncnorm(-2.0, 2.0).stats(moments="k"))
    return None


def undefined_reason(spec: Spec, quantity: str = "forward") -> str:
    """Why the NLO mean of `quantity` is not defined for this run ("" if it is)."""
    reason = archs.why_not(spec, FINITE_WIDTH_BAND)
    if reason:
        return reason
    if quantity not in MEAN_QUANTITIES:
        return f"not derived for {quantity}"
    if spec.ws:
        return "not derived with weight standardization (ws=true)"
    dist = inits.scheme(spec.scheme).draws(dict(spec.scheme_params))
    k = weight_kurtosis(dist)
    if k is None:
        return f"needs iid weights of a known kurtosis; scheme {spec.scheme} draws {dist}"
    if k != 0.0 and quantity not in ("forward", "activation"):
        return f"derived for Gaussian weights only; scheme {spec.scheme} draws {dist}"
    if quantity == "correlation" and spec.batch < 2:
        return "correlation needs batch >= 2"
    return ""


@dataclass(frozen=True)
class Moments:
    """The one-dimensional Gaussian expectations at one q (u ~ N(0, q))."""

    V: float    # E φ(u)²
    V1: float   # dV/dq
    V2: float   # d²V/dq²
    V4: float   # E φ(u)⁴
    D: float    # E φ'(u)²
    D1: float   # dD/dq
    D2: float   # d²D/dq²
    P: float    # E φ(u)² φ'(u)²
    Psi: float  # (E[φ'(u)² u²] − q D)/q²
    D4: float   # E φ'(u)⁴


_NAN = Moments(*([np.float64(math.nan)] * 10))


def moments(act: Activation, q: float) -> Moments:
    """`Moments` at q by the graded Gauss–Legendre rule of `harness.core.quadrature`; the
    q-derivatives as E[f(u) ∂_q p/p] and E[f(u) ∂²_q p/p] (module doc). nan unless q is a
    finite positive number."""
    if not (math.isfinite(q) and q > 0):
        return _NAN
    u, w = gaussian_rule(q)
    t = torch.from_numpy(u)
    q = np.float64(q)  # an overflowing run's q: inf/nan moments, not a Python OverflowError
    with np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"):
        f2 = act.phi(t).numpy() ** 2
        d2 = act.dphi(t).numpy() ** 2
        u2 = u * u
        g1 = (u2 - q) / (2 * q * q)
        g2 = (u2 * u2 - 6 * q * u2 + 3 * q * q) / (4 * q**4)
        return _moments(w, f2, d2, u2, g1, g2, q)


def _moments(w: np.ndarray, f2: np.ndarray, d2: np.ndarray, u2: np.ndarray, g1: np.ndarray,
             g2: np.ndarray, q: float) -> Moments:
    """`Moments` from the rule's weights and the integrands on its nodes."""
    f = np.float64
    D = f(w @ d2)
    return Moments(
        V=f(w @ f2), V1=f(w @ (f2 * g1)), V2=f(w @ (f2 * g2)), V4=f(w @ (f2 * f2)),
        D=D, D1=f(w @ (d2 * g1)), D2=f(w @ (d2 * g2)), P=f(w @ (f2 * d2)),
        Psi=(f(w @ (d2 * u2)) - q * D) / (q * q), D4=f(w @ (d2 * d2)),
    )


def K22(act: Activation, q: float, c: float) -> float:
    """E[φ(u_a)² φ(u_b)²] for (u_a, u_b) ~ N(0, q[[1, c], [c, 1]]) (2-D rule of
    `harness.core.quadrature`)."""
    if not (math.isfinite(q) and q > 0 and math.isfinite(c)):
        return math.nan
    return gaussian_expectation_2d(lambda x: act.phi(x) ** 2, lambda x: act.phi(x) ** 2, q,
                                   min(1.0, max(-1.0, c)))


@dataclass(frozen=True)
class Chain:
    """The forward chain of the module doc per layer l = 1..L: mean-field q, δ, v, κ, the
    activation's NLO mean a (l < L; a[L−1] unused), σ_w,l², widths n_0..n_L and the moments."""

    q: np.ndarray
    delta: np.ndarray
    v: np.ndarray
    kappa: np.ndarray
    a: np.ndarray
    s2: np.ndarray
    n: np.ndarray
    m: list[Moments]


def _s2(spec: Spec) -> np.ndarray:
    """σ_w,l² = n_{l−1} Var(W^l), l = 1..L."""
    fan_in = np.array([s[1] for s in spec.weight_shapes], dtype=np.float64)
    return fan_in * np.array(spec.weight_variances(), dtype=np.float64)


def chain(spec: Spec, q: np.ndarray) -> Chain:
    """The forward chain (module doc) around the mean-field forward prediction q (l = 1..L)."""
    act = spec.activation
    s2 = _s2(spec)
    n = np.asarray(spec.widths, dtype=np.float64)
    L = spec.depth
    q = np.asarray(q, dtype=np.float64)
    kw = weight_kurtosis(inits.scheme(spec.scheme).draws(dict(spec.scheme_params))) or 0.0
    q0 = spec.input_var
    delta, v, kappa, a = (np.zeros(L) for _ in range(4))
    v[0] = 2 * s2[0] ** 2 * q0 * q0 / n[0]
    kappa[0] = 3 * kw * s2[0] ** 2 * q0 * q0 / n[0]
    m = [moments(act, float(x)) for x in q]
    with np.errstate(over="ignore", invalid="ignore"):
        for i in range(L):
            mi = m[i]
            a[i] = mi.V + mi.V1 * delta[i] + 0.5 * mi.V2 * v[i] + mi.V2 * kappa[i] / 6
            if i + 1 < L:
                delta[i + 1] = s2[i + 1] * (a[i] - mi.V)
                v[i + 1] = s2[i + 1] ** 2 * ((mi.V4 - mi.V**2) / n[i + 1] + mi.V1**2 * v[i])
                kappa[i + 1] = kw * s2[i + 1] ** 2 * mi.V4 / n[i + 1]
    return Chain(q, delta, v, kappa, a, s2, n, m)


def _tangent(ch: Chain, b2: float) -> tuple[np.ndarray, np.ndarray]:
    """backward^l and weight_grad^l, l = 1..L: the tangent chains of the module doc, one per
    starting layer l, advanced together."""
    L = len(ch.q)
    n = ch.n
    T, chi, w, rho = np.ones(L), np.zeros(L), np.zeros(L), np.zeros(L)
    zeta = ch.v.copy()  # chain s starts at layer s+1 with ζ = v^{s+1}
    with np.errstate(over="ignore", invalid="ignore"):
        for k in range(L - 1):  # layer k+1 -> k+2; chains started at layers ≤ k+1 advance
            mk, s2, nk = ch.m[k], ch.s2[k + 1], n[k + 1]
            d, v = ch.delta[k], ch.v[k]
            live = slice(0, k + 1)
            t, c, ww, r, z = T[live], chi[live], w[live], rho[live], zeta[live]
            T_new = s2 * (t * (mk.D + mk.D1 * d + 0.5 * mk.D2 * v) + mk.D1 * c + mk.Psi * ww)
            chi_new = s2**2 * (mk.V1 * (mk.D * c + t * mk.D1 * v) + t * (mk.P - mk.V * mk.D) / nk)
            w_new = s2**2 * (mk.V1**2 * ww + t * mk.P / nk)
            rho_new = s2 * (mk.D * r + t * mk.D1 * z)
            zeta[live] = s2 * mk.V1 * z
            T[live], chi[live], w[live], rho[live] = T_new, chi_new, w_new, rho_new
        ratio = n[L] / n[1:]
        backward = ratio * T
        forward = ch.q + ch.delta
        weight_grad = ratio * (T * (forward - b2) + rho) / ch.s2
    return backward, weight_grad


def predict(spec: Spec, predicted: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """quantity -> its NLO ensemble mean per layer (the frame's `theory_nlo`), for the
    quantities where it is defined (`undefined_reason`), around the mean-field `predicted`."""
    if undefined_reason(spec, "forward"):
        return {}
    ch = chain(spec, predicted["forward"])
    out = {"forward": ch.q + ch.delta, "activation": ch.a[:-1].copy()}
    if not undefined_reason(spec, "backward"):
        out["backward"], out["weight_grad"] = _tangent(ch, spec.bias_std**2)
    if not undefined_reason(spec, "correlation"):  # two inputs: harness.theory.nlo_pair
        out["correlation"] = nlo_pair.correlation(spec.activation, ch.s2, ch.n, spec.input_var,
                                                  spec.input_corr, ch.q, predicted["correlation"])
    return out


def _cosine_variance(k22: float, C: float, j31: float, V: float, V4: float, rho: float,
                     scale: float) -> float:
    """n · Var of the realized correlation ρ̂ = (σ² Z̄ + σ_b²)/√((σ² X̄ + σ_b²)(σ² Ȳ + σ_b²)) of n
    iid unit pairs (X, Y, Z) = (φ_a², φ_b², φ_aφ_b), by the delta method, scale = σ²/Q:
    scale² [(K22 − C²) − 2ρ(J31 − C V) + (ρ²/2)(V4 − V² + K22 − V²)]."""
    return max(scale**2 * ((k22 - C * C) - 2 * rho * (j31 - C * V)
                           + 0.5 * rho * rho * (V4 - V * V + k22 - V * V)), 0.0)


#: Gauss–Legendre nodes per angular sector of the polar rule of `pair_moments`
ANGLE_NODES = 24


@cache
def _legendre(n: int) -> tuple[np.ndarray, np.ndarray]:
    return np.polynomial.legendre.leggauss(n)


def _polar_rule(c: float, q: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Points (u_a, u_b) and weights w with Σ w f(u_a, u_b) ≈ E f for (u_a, u_b) ~
    N(0, q[[1, c], [c, 1]]): u_a = √q r cos θ, u_b = √q r cos(θ − θ_c), cos θ_c = c, in polar
    coordinates of two iid standard normals. The kinks of φ(u_a) and φ(u_b) (u = 0) are rays, at
    θ = ±π/2 and θ_c ± π/2, so the angle is cut into sectors at those four rays (Gauss–Legendre
    on each) and the radius r (density r e^{−r²/2}) uses the graded half-line rule of
    `harness.core.quadrature`: every panel is smooth and the rule converges geometrically."""
    theta_c = math.acos(min(1.0, max(-1.0, c)))
    cuts = np.sort(np.mod([math.pi / 2, 3 * math.pi / 2, theta_c + math.pi / 2,
                           theta_c + 3 * math.pi / 2], 2 * math.pi))
    edges = np.concatenate([cuts, [cuts[0] + 2 * math.pi]])
    x, wx = _legendre(ANGLE_NODES)
    lo, hi = edges[:-1, None], edges[1:, None]
    theta = (0.5 * (hi - lo) * x + 0.5 * (hi + lo)).ravel()
    wt = (0.5 * (hi - lo) * wx).ravel() / (2 * math.pi)
    z, wz = gaussian_rule(1.0)
    r = z[z > 0]
    # ∫ f(r) r e^{−r²/2} dr = √(2π) Σ w_z z f(z) over z > 0 (w_z holds ϕ(z) = e^{−z²/2}/√(2π))
    wr = wz[z > 0] * r * math.sqrt(2 * math.pi)
    s = math.sqrt(q)
    ua = s * r[:, None] * np.cos(theta)[None, :]
    ub = s * r[:, None] * np.cos(theta - theta_c)[None, :]
    return ua, ub, wr[:, None] * wt[None, :]


#: elements per call of an activation in `pair_moments`: small enough that torch runs each
#: element-wise kernel on the calling thread (measured on 2 busy cores: 18k elements in one call
#: 40 ms, in chunks of 2048 4 ms; the intra-op thread pool's hand-off dominates otherwise)
CHUNK = 2048


def _apply(fn, t: torch.Tensor, shape: tuple[int, ...]) -> np.ndarray:
    """fn over a flat float64 tensor in chunks of CHUNK, as a numpy array of `shape`."""
    return torch.cat([fn(part) for part in t.split(CHUNK)]).numpy().reshape(shape)


def pair_moments(act: Activation, q: float, c: float) -> dict[str, float]:
    """Two-input expectations for (u_a, u_b) ~ N(0, q[[1, c], [c, 1]]) on the polar rule
    (`_polar_rule`): C = E φ_aφ_b, K22 = E φ_a²φ_b², J31 = E φ_a³φ_b, DD = E φ'_aφ'_b and
    Kcc = ∂²K22/∂c² = q² E[f''_a f''_b], f'' = 2(φ'² + φφ'') (Price's theorem)."""
    ua, ub, W = _polar_rule(c, q)
    ta, tb = torch.from_numpy(ua.ravel()), torch.from_numpy(ub.ravel())
    fa, fb = _apply(act.phi, ta, W.shape), _apply(act.phi, tb, W.shape)
    da, db = _apply(act.dphi, ta, W.shape), _apply(act.dphi, tb, W.shape)
    ga = 2 * (da * da + fa * _apply(act.ddphi, ta, W.shape))
    gb = 2 * (db * db + fb * _apply(act.ddphi, tb, W.shape))
    return {"C": float((W * fa * fb).sum()), "K22": float((W * fa**2 * fb**2).sum()),
            "J31": float((W * fa**3 * fb).sum()), "DD": float((W * da * db).sum()),
            "D22": float((W * da**2 * db**2).sum()),
            "Kcc": q * q * float((W * ga * gb).sum())}


@lru_cache(maxsize=65536)
def _shared_pair_moments(name: str, params: tuple[tuple[str, float], ...], q: float, c: float
                         ) -> dict[str, float]:
    """`pair_moments` of the registered activation `name` with `params`, cached per process
    (read-only: callers must not modify the dict). The runs of a sweep that differ only in seed,
    mode on square layers or anything else outside (φ, q^l, c^l) ask for the same values; the
    values are those of the uncached call, so a cached run is bitwise the same as a fresh one."""
    return pair_moments(get_activation(name, **dict(params)), q, c)


def _pairs(spec: Spec, ch: Chain, c: np.ndarray
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per layer l = 1..L: K22(q^l, c^l), its second c-derivative Kcc, τ_l², the variance of
    the realized correlation of two inputs: τ_1² from the Gaussian inputs, τ_{l+1}² = C'² τ_l² +
    σ²(c^l)/n_l with the slope C' = σ² q E[φ'(u_a)φ'(u_b)]/q^{l+1} of the correlation map and σ²
    the delta-method variance of `_cosine_variance` (`pair_moments` for the expectations),
    D22 = E φ'(u_a)² φ'(u_b)² and DD = E φ'(u_a) φ'(u_b)."""
    act = spec.activation
    L, n, q0, c0 = spec.depth, ch.n, spec.input_var, spec.input_corr
    k22, kcc, tau2 = np.full(L, np.nan), np.full(L, np.nan), np.zeros(L)
    d22, dd = np.full(L, np.nan), np.full(L, np.nan)
    # layer 1: the inputs are Gaussian pairs of correlation c_0 (φ = identity on x^0)
    tau2[0] = _cosine_variance(q0 * q0 * (1 + 2 * c0 * c0), q0 * c0, 3 * q0 * q0 * c0, q0,
                               3 * q0 * q0, c[0], ch.s2[0] / ch.q[0]) / n[0]
    for i in range(L):
        q, ci = float(ch.q[i]), float(min(1.0, max(-1.0, c[i])))
        if not (math.isfinite(q) and q > 0):
            break
        pm = _shared_pair_moments(act.name, tuple(act.params.items()), q, ci)
        k22[i], kcc[i], d22[i], dd[i] = pm["K22"], pm["Kcc"], pm["D22"], pm["DD"]
        if i + 1 < L:
            m = ch.m[i]
            slope = ch.s2[i + 1] * q * pm["DD"] / ch.q[i + 1]
            sig2 = _cosine_variance(pm["K22"], pm["C"], pm["J31"], m.V, m.V4, c[i + 1],
                                    ch.s2[i + 1] / ch.q[i + 1])
            tau2[i + 1] = slope**2 * tau2[i] + sig2 / n[i + 1]
    return k22, kcc, tau2, d22, dd


def _chain_sum(alpha: np.ndarray, lam: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """S_l = Var Σ_{k=l}^{L−1} α_k ε_k for ε_k with Cov(ε_k, ε_j) = λ_j ∏_{i=j}^{k−1} β_i (j ≤ k),
    l = 1..L (S_L = 0); alpha, lam: layers 1..L−1, beta: the L−2 slopes between them."""
    m = len(alpha)
    out = np.zeros(m + 1)
    if m == 0:
        return out
    logb = np.concatenate([[0.0], np.cumsum(np.log(np.abs(beta) + 1e-300))])  # ln ∏_{i<k} |β_i|
    sign = np.concatenate([[1.0], np.cumprod(np.sign(beta))])
    k, j = np.meshgrid(np.arange(m), np.arange(m), indexing="ij")
    lo, hi = np.minimum(k, j), np.maximum(k, j)
    with np.errstate(over="ignore", invalid="ignore"):
        cov = lam[lo] * np.exp(logb[hi] - logb[lo]) * sign[hi] * sign[lo]
        a = np.nan_to_num(np.outer(alpha, alpha) * cov)
    # S_l = Σ_{k, j ≥ l} a[k, j]: a reversed two-dimensional cumulative sum
    rev = a[::-1, ::-1].cumsum(0).cumsum(1)[::-1, ::-1]
    out[:m] = np.diagonal(rev)
    return out


def log_variance(spec: Spec, predicted: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """quantity -> s² = ln E[(X/E X)²] per layer of the per-network forward (X = F^l) and
    activation (X = A^l) statistics pooled over the batch, accumulated in log space as a product
    of independent per-layer factors (the module doc's resummation: exact for linear and relu
    stacks' E[(F/q)²], `harness.theory.finite_width`'s M_1 and M_2). {} where not defined."""
    if undefined_reason(spec, "forward"):
        return {}
    ch = chain(spec, predicted["forward"])
    L, B, n, b2 = spec.depth, spec.batch, ch.n, spec.bias_std**2
    q = ch.q
    V = np.array([mi.V for mi in ch.m])
    V1 = np.array([mi.V1 for mi in ch.m])
    V4 = np.array([mi.V4 for mi in ch.m])
    cross = np.zeros(L)  # E[φ_a² φ_b²] − V² per layer
    c, tau2 = np.ones(L), np.zeros(L)
    q0, c0 = spec.input_var, spec.input_corr
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        if B > 1:
            c = np.nan_to_num(np.asarray(predicted["correlation"], dtype=np.float64), nan=1.0)
            k22, kcc, tau2, d22, dd = _pairs(spec, ch, c)
            cross = k22 + 0.5 * kcc * tau2 - V**2
        # λ = Var ln Ĝ_bb, κ = Cov(ln Ĝ_aa, ln Ĝ_bb): layer 1 from the Gaussian inputs
        lam, kap = np.zeros(L), np.zeros(L)
        g1 = ch.s2[0] * q0 / q[0]  # d ln Ĝ^1 / d ln(‖x‖²/n_0)
        lam[0] = g1**2 * np.log1p(2 / n[0])
        kap[0] = g1**2 * np.log1p(2 * c0 * c0 / n[0])
        beta = ch.s2[1:] * q[:-1] * V1[:-1] / q[1:]  # d ln Ĝ^{l+1}/d ln Ĝ^l
        eps = ch.s2[1:] ** 2 * (V4[:-1] - V[:-1] ** 2) / (n[1:-1] * q[1:] ** 2)
        eps_x = ch.s2[1:] ** 2 * cross[:-1] / (n[1:-1] * q[1:] ** 2)
        for i in range(L - 1):
            lam[i + 1] = beta[i] ** 2 * lam[i] + np.log1p(eps[i])
            kap[i + 1] = beta[i] ** 2 * kap[i] + np.log1p(eps_x[i])
        f = 1.0 / B
        same_f = lam + np.log1p(2 / n[1:])
        pair_f = kap + np.log1p(2 * (c * c + tau2) / n[1:])
        ba = q * V1 / V  # d ln V/d ln q
        same_a = ba**2 * lam + np.log1p((V4 - V**2) / (n[1:] * V**2))
        pair_a = ba**2 * kap + np.log1p(cross / (n[1:] * V**2))
        out = {"forward": np.log(f * np.exp(same_f) + (1 - f) * np.exp(pair_f)),
               "activation": np.log(f * np.exp(same_a) + (1 - f) * np.exp(pair_a))[:-1]}
        if not undefined_reason(spec, "backward"):
            # backward (gradient independence): δ^L = r gives ln(1 + 2/n_L); each layer k < L
            # below multiplies by (1/n_k) Σ φ'(h_j)² g_j², g iid N(0, 1): relative variance
            # (3 E φ'⁴ − D²)/(n_k D²); two inputs' cotangents are independent, so their pair
            # term is (E φ'_a² φ'_b² − D²)/(n_k D²) only
            D = np.array([mi.D for mi in ch.m])
            D4 = np.array([mi.D4 for mi in ch.m])
            step = np.log1p((3 * D4 - D**2) / (n[1:] * D**2))[:-1]
            step_x = np.zeros(L - 1)
            if B > 1:
                # γ_k² = Var of the realized correlation of δ_a^k, δ_b^k: 1/n_L at the readout
                # (independent cotangents), then γ_k² = (E φ'_aφ'_b/D)² γ_{k+1}² + D22/(D² n_k);
                # the pair term of layer k gains 2 γ_{k+1}² D22/D² (E g_a²g_b² = 1 + 2γ²)
                DD = dd[:-1]
                g2 = 1 / n[L]
                for k in range(L - 2, -1, -1):
                    r22 = d22[k] / D[k] ** 2
                    step_x[k] = np.log1p((d22[k] - D[k] ** 2 + 2 * g2 * d22[k])
                                         / (n[k + 1] * D[k] ** 2))
                    g2 = (DD[k] / D[k]) ** 2 * g2 + r22 / n[k + 1]
            tail = np.concatenate([np.cumsum(step[::-1])[::-1], [0.0]])
            tail_x = np.concatenate([np.cumsum(step_x[::-1])[::-1], [0.0]])
            # φ' sees the forward kernel: layer k's factor has mean D(Ĝ^k), so ln backward^l
            # also carries Σ_{k ≥ l} α_k ln(Ĝ^k/q^k), α = q D'/D, whose terms are correlated
            # along the forward chain: Cov(ln Ĝ^k, ln Ĝ^j) = λ_j ∏_{i=j}^{k−1} β_i (j ≤ k)
            alpha = (q * np.array([mi.D1 for mi in ch.m]) / D)[:-1]
            tail += _chain_sum(alpha, lam[:-1], beta[:-1])
            tail_x += _chain_sum(alpha, kap[:-1], beta[:-1])
            same_b = tail + np.log1p(2 / n[L])
            out["backward"] = np.log(f * np.exp(same_b) + (1 - f) * np.exp(tail_x))
            # weight_grad = mean_b D_b^l X_b^{l−1}: the two factors taken as independent
            same_x = np.concatenate([[np.log1p(2 / n[0])], same_a[:-1]])
            pair_x = np.concatenate([[np.log1p(2 * c0 * c0 / n[0])], pair_a[:-1]])
            out["weight_grad"] = np.log(f * np.exp(same_b + same_x)
                                        + (1 - f) * np.exp(tail_x + pair_x))
    del b2
    return out
