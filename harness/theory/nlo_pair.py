"""Next-to-leading order in 1/n for two inputs: the ensemble mean of the `correlation` statistic
(the mean over pairs a ≠ b of cos(h^l_a, h^l_b), `harness.archs.mlp.mean_cosine`) of an MLP with
iid Gaussian weights and biases, to O(1/n) (docs/theory.md, "Next-to-leading order").

Every pair of inputs is exchangeable, so the mean over pairs has the mean of one pair's cosine.
For that pair the realized kernel of layer l, Ĝ^l = (Ĝ_aa, Ĝ_bb, Ĝ_ab) with
Ĝ_ab = σ_w,l² x_a^{l−1}·x_b^{l−1}/n_{l−1} + σ_b², is a Markov chain: given the layers below, the
n_l rows (h_ia, h_ib) are iid N(0, Ĝ^l). With the mean-field kernel K^l = q^l (1, 1, c^l),
δ^l = E Ĝ^l − K^l and Σ^l = Cov Ĝ^l (3×3), both O(1/n), the second-order expansion of
E[Ĝ^{l+1} | Ĝ^l] = σ² F(Ĝ^l) + σ_b², F(G) = E_{u~N(0,G)}(φ_a², φ_b², φ_aφ_b), around K^l gives

    δ^1 = 0,   Σ^1 = σ_w,1⁴ Cov_id(q_0, c_0)/n_0        (the inputs: n_0 Gaussian coordinates)
    δ^{l+1} = σ_w,l+1² [J δ^l + ½ H : Σ^l]
    Σ^{l+1} = σ_w,l+1⁴ [J Σ^l Jᵀ + Cov(q^l, c^l)/n_l]

with J = ∂F/∂G and H : Σ = (V'' Σ_aa,aa, V'' Σ_bb,bb, Σ_ij ∂²C/∂G_i∂G_j Σ_ij) at K^l (V = E φ_a²
depends on G_aa only: J's first two rows are V'(1, 0, 0), V'(0, 1, 0); the third is ∂C/∂G for
C = E φ_aφ_b), and Cov the covariance of (φ_a², φ_b², φ_aφ_b) at K^l:

    [[V4 − V², K22 − V², J31 − VC], [K22 − V², V4 − V², J31 − VC], [J31 − VC, J31 − VC, K22 − C²]]

(V4 = E φ⁴, K22 = E φ_a²φ_b², J31 = E φ_a³φ_b; φ = identity for Cov_id). Given Ĝ^l the cosine of
the layer's pre-activations is the sample cosine of n_l iid Gaussian pairs of correlation
r(Ĝ) = Ĝ_ab/√(Ĝ_aa Ĝ_bb), whose mean is r − r(1 − r²)/(2n_l) + O(1/n_l²) (the delta method on
(Σx², Σy², Σxy)/n: ½[2 r ∂²_{xz} + 2 r ∂²_{yz} + ∂²_{xx} + ∂²_{yy} + 2r² ∂²_{xy}]/n at (1, 1, r)).
So, to O(1/n), with ∇r = (−c/2q, −c/2q, 1/q) and ∇²r = [[3c, c, −2], [c, 3c, −2], [−2, −2, 0]]/(4q²)
at K^l:

    E correlation^l = c^l + ∇r·δ^l + ½ ∇²r : Σ^l − c^l (1 − c^l²)/(2 n_l)

The 1-D moments V, V', V'' come from the density's q-derivatives as polynomial weights
(∂_q p/p = (u² − q)/(2q²), ∂²_q p/p = (u⁴ − 6qu² + 3q²)/(4q⁴)), and the derivatives of C by the
same trick in two dimensions: for a symmetric perturbation E of the covariance G (E_aa, E_bb, and
E_ab with both off-diagonal entries 1), with P = G⁻¹ and y = P u,

    ∂_E p/p = g_E = ½ (yᵀ E y − tr P E)
    ∂_E ∂_E' p/p = g_E g_E' − yᵀ E P E' y + ½ tr(P E P E')

so E[φ_aφ_b g_E] and E[φ_aφ_b h_EE'] need neither φ' nor φ'': kinked φ (relu, elu, selu) are
exact. All expectations use one polar rule per layer whose sectors end on the kink rays of φ(u_a)
and φ(u_b) (`polar_rule`). The weights grow like 1/(1 − c²)² as c → ±1 (cancellation in float64:
~1e-16/(1 − c²)² relative); where 1 − |c| < C_EDGE the correction is not computed (nan: the two
inputs are one direction to rounding, and relu's C is not smooth there). Errors are O(1/n²).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import cache

import numpy as np
import torch

from harness.core.activations import Activation
from harness.core.quadrature import gaussian_rule

#: Gauss–Legendre nodes per angular sector of `polar_rule`
SECTOR_NODES = 24
#: correlations within this of ±1 get no correction (nan): the expansion's weights ~1/(1 − c²)²
C_EDGE = 1e-6


@cache
def _legendre(n: int) -> tuple[np.ndarray, np.ndarray]:
    return np.polynomial.legendre.leggauss(n)


def polar_rule(c: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Points (z1, z2) of two iid standard normals and weights w, Σ w f(z1, z2) ≈ E f, for
    integrands smooth except on the lines z1 = 0 and c z1 + s z2 = 0 (s = √(1 − c²)): with
    z = r(cos θ, sin θ) both lines are rays (θ = ±π/2, θ_c ± π/2 with cos θ_c = c), so the angle is
    cut at them into sectors (Gauss–Legendre on each), and the radius, of density r e^{−r²/2},
    uses the graded half-line rule of `harness.core.quadrature`."""
    theta_c = math.acos(c)
    cuts = np.sort(np.mod(np.array([0.5, 1.5, 0.5, 1.5]) * math.pi + [0, 0, theta_c, theta_c],
                          2 * math.pi))
    lo = cuts[:, None]
    hi = np.concatenate([cuts[1:], [cuts[0] + 2 * math.pi]])[:, None]
    x, wx = _legendre(SECTOR_NODES)
    theta = (0.5 * (hi - lo) * x + 0.5 * (hi + lo)).ravel()
    w_theta = (0.5 * (hi - lo) * wx).ravel() / (2 * math.pi)
    z, wz = gaussian_rule(1.0)
    r, w_r = z[z > 0], wz[z > 0] * z[z > 0] * math.sqrt(2 * math.pi)  # ∫ f r e^{−r²/2} dr
    z1, z2 = np.outer(r, np.cos(theta)).ravel(), np.outer(r, np.sin(theta)).ravel()
    return z1, z2, np.outer(w_r, w_theta).ravel()


#: the three coordinates of a 2×2 kernel (aa, bb, ab) as symmetric perturbations of it
PERTURBATIONS = (np.array([[1.0, 0.0], [0.0, 0.0]]), np.array([[0.0, 0.0], [0.0, 1.0]]),
                 np.array([[0.0, 1.0], [1.0, 0.0]]))


@contextmanager
def one_thread() -> Iterator[None]:
    """Run torch on the calling thread only, then restore its thread count: φ on 37k float64
    points takes 4 ms of CPU alone, against 140 ms with a second intra-op thread that spins (2
    busy cores; even 2048-element calls of tanh go parallel)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)

#: the largest q at which the expansion is formed (q⁴ stays a float)
Q_MAX = 1e75


def dot(w: np.ndarray, f: np.ndarray) -> float:
    """Σ w f, by einsum: a BLAS dot (`@`) of 18k elements hands off to OpenBLAS's thread pool,
    measured at 16 ms a call on 2 busy cores against 8 µs here."""
    return np.einsum("i,i->", w, f)


def expansion(act: Activation, q: float, c: float) -> dict[str, np.ndarray | float]:
    """The expectations of the module doc at (u_a, u_b) ~ N(0, q[[1, c], [c, 1]]): V, V1 = V',
    V2 = V'', V4, C, K22, J31 (floats), `gradC` = ∂C/∂(G_aa, G_bb, G_ab) (3,) and
    `hessC` (3, 3), by density-derivative weights on `polar_rule`. nan unless q > 0 is finite and
    |c| ≤ 1 − C_EDGE and q⁴ is a float (q < 1e75: the second density derivative divides by it;
    an overflowing run's q would raise OverflowError)."""
    if not (math.isfinite(q) and 0 < q < Q_MAX and math.isfinite(c) and abs(c) <= 1 - C_EDGE):
        nan = math.nan
        return {"V": nan, "V1": nan, "V2": nan, "V4": nan, "C": nan, "K22": nan, "J31": nan,
                "gradC": np.full(3, nan), "hessC": np.full((3, 3), nan)}
    z1, z2, w = polar_rule(float(c))
    s = math.sqrt(1 - c * c)
    rq = math.sqrt(q)
    ua, ub = rq * z1, rq * (c * z1 + s * z2)
    with one_thread():
        fa, fb = np.split(act.phi(torch.from_numpy(np.concatenate([ua, ub]))).numpy(), 2)
    with np.errstate(over="ignore", invalid="ignore"):
        fa2, fab = fa * fa, fa * fb
        u2 = ua * ua
        g1 = (u2 - q) / (2 * q * q)
        g2 = (u2 * u2 - 6 * q * u2 + 3 * q * q) / (4 * q**4)
        P = np.array([[1.0, -c], [-c, 1.0]]) / (q * s * s)
        y = np.stack([(z1 - c * z2 / s) / rq, z2 / (s * rq)])  # P u, (2, N)
        first = [0.5 * (np.einsum("in,ij,jn->n", y, E, y) - np.trace(P @ E)) for E in PERTURBATIONS]
        grad = np.array([dot(w, fab * g) for g in first])
        hess = np.empty((3, 3))
        for i, Ei in enumerate(PERTURBATIONS):
            for j, Ej in enumerate(PERTURBATIONS[: i + 1]):
                h = (first[i] * first[j] - np.einsum("in,ij,jn->n", y, Ei @ P @ Ej, y)
                     + 0.5 * np.trace(P @ Ei @ P @ Ej))
                hess[i, j] = hess[j, i] = dot(w, fab * h)
        return {"V": float(dot(w, fa2)), "V1": float(dot(w, fa2 * g1)), "V2": float(dot(w, fa2 * g2)),
                "V4": float(dot(w, fa2 * fa2)), "C": float(dot(w, fab)), "K22": float(dot(w, fa2 * fb * fb)),
                "J31": float(dot(w, fa2 * fab)), "gradC": grad, "hessC": hess}


def product_covariance(V: float, V4: float, C: float, K22: float, J31: float) -> np.ndarray:
    """Cov of (φ_a², φ_b², φ_aφ_b) from the moments (module doc), 3×3."""
    d, x, m, w = V4 - V * V, K22 - V * V, J31 - V * C, K22 - C * C
    return np.array([[d, x, m], [x, d, m], [m, m, w]])


def cosine_gradients(q: float, c: float) -> tuple[np.ndarray, np.ndarray]:
    """∇r and ∇²r of r(G) = G_ab/√(G_aa G_bb) at G = q(1, 1, c) (module doc)."""
    grad = np.array([-c / (2 * q), -c / (2 * q), 1 / q])
    hess = np.array([[3 * c, c, -2.0], [c, 3 * c, -2.0], [-2.0, -2.0, 0.0]]) / (4 * q * q)
    return grad, hess


def sample_cosine_bias(r: float | np.ndarray, n: float | np.ndarray) -> float | np.ndarray:
    """E cos(x, y) − r for n iid pairs (x_i, y_i) ~ N(0, [[1, r], [r, 1]]) to O(1/n):
    −r (1 − r²)/(2n)."""
    return -r * (1 - r * r) / (2 * n)


def kernel_chain(act: Activation, s2: Sequence[float], widths: Sequence[float], q0: float,
                 c0: float, q: Sequence[float], c: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """δ^l (L, 3) and Σ^l (L, 3, 3), l = 1..L, of the realized pair kernel (Ĝ_aa, Ĝ_bb, Ĝ_ab)
    (module doc): `s2` σ_w,l², `widths` n_0..n_L, the inputs' variance q0 and correlation c0, the
    mean-field forward q^l and correlation c^l. nan from the first layer where `expansion` is not
    defined on."""
    s2, n = np.asarray(s2, dtype=np.float64), np.asarray(widths, dtype=np.float64)
    L = len(q)
    delta, sigma = np.full((L, 3), np.nan), np.full((L, 3, 3), np.nan)
    cov0 = product_covariance(q0, 3 * q0 * q0, q0 * c0, q0 * q0 * (1 + 2 * c0 * c0), 3 * q0 * q0 * c0)
    delta[0], sigma[0] = 0.0, s2[0] ** 2 * cov0 / n[0]
    with np.errstate(over="ignore", invalid="ignore"):
        for i in range(L - 1):
            e = expansion(act, float(q[i]), float(c[i]))
            if not np.isfinite(e["hessC"]).all():
                break
            J = np.zeros((3, 3))
            J[0, 0] = J[1, 1] = e["V1"]
            J[2] = e["gradC"]
            d, sg = delta[i], sigma[i]
            second = np.array([e["V2"] * sg[0, 0], e["V2"] * sg[1, 1], np.sum(e["hessC"] * sg)])
            cov = product_covariance(e["V"], e["V4"], e["C"], e["K22"], e["J31"])
            delta[i + 1] = s2[i + 1] * (J @ d + 0.5 * second)
            sigma[i + 1] = s2[i + 1] ** 2 * (J @ sg @ J.T + cov / n[i + 1])
    return delta, sigma


def correlation(act: Activation, s2: Sequence[float], widths: Sequence[float], q0: float,
                c0: float, q: Sequence[float], c: Sequence[float]) -> np.ndarray:
    """E correlation^l, l = 1..L, to O(1/n): c^l + ∇r·δ^l + ½ ∇²r : Σ^l − c^l(1 − c^l²)/(2n_l)
    (module doc; arguments as `kernel_chain`). nan where the expansion is not defined."""
    q, c = np.asarray(q, dtype=np.float64), np.asarray(c, dtype=np.float64)
    n = np.asarray(widths, dtype=np.float64)
    delta, sigma = kernel_chain(act, s2, widths, q0, c0, q, c)
    out = np.full(len(q), np.nan)
    for i in range(len(q)):
        if not (np.isfinite(q[i]) and q[i] > 0 and abs(c[i]) <= 1 - C_EDGE):
            break
        dr, d2r = cosine_gradients(float(q[i]), float(c[i]))
        out[i] = c[i] + dr @ delta[i] + 0.5 * np.sum(d2r * sigma[i]) + sample_cosine_bias(c[i], n[i + 1])
    return out
