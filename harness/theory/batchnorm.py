"""Mean-field theory of a batch-normalized MLP at a finite batch B (Yang, Pennington, Rao,
Sohl-Dickstein & Schoenholz 2019, "A mean field theory of batch normalization").

The network (layers 1..L−1 normalized, layer L a linear readout without norm):

    h^l = W^l x^{l−1} + b^l
    pre:  x^l = φ(BN(h^l))           post:  x^l = BN(φ(h^l))

BN is nn.BatchNorm1d in training mode at initialization (γ = 1, β = 0): per unit, over the B
inputs of one network, BN(v) = (v − mean v)/√(var v + eps) with the biased variance. The
theory neglects eps (its relative effect is O(eps / batch variance), ~1e-5 here).

Infinite width. Per unit, the B-vector h^l_{·i} is Gaussian N(0, Σ^l) with Σ^l the B×B Gram
matrix of the layer, the same for all units. Inputs are iid (or equicorrelated, input_corr = c₀)
so Σ^l = q^l [(1 − c^l) I + c^l 11ᵀ] stays permutation-symmetric at every layer; q^l is the
`forward` prediction and c^l the `correlation` one (the mean cosine of two inputs' h^l).

Pre position. With P = I − 11ᵀ/B, Ph ~ N(0, s² P), s² = q(1 − c): Ph is isotropic in the
(B−1)-dim centred subspace, so n = BN(h) = √B·Ph/‖Ph‖ is uniform on the sphere of radius √B
there, whatever q and c are. The bias (common to the batch) is removed by the centring. So

    Σ^{l+1} = σ_w² E[φ(n)φ(n)ᵀ] + σ_b² 11ᵀ,   diag: σ_w² V_B + σ_b²,  off: σ_w² C_B + σ_b²
    V_B = E[φ(n_1)²],  C_B = E[φ(n_1)φ(n_2)]    (n uniform on that sphere)

are the same at every layer l ≥ 2: the forward pass is at its fixed point after one BN. One
coordinate is n_1 = √(B−1)·sin θ with density ∝ cos^{B−3}θ on [−π/2, π/2]; two coordinates
are n_1 = √(B−1)·y_1, n_2 = −y_1/√(B−1) + √(B(B−2)/(B−1))·y_2 with (y_1, y_2) = sin ψ (cos ϑ,
sin ϑ), density ∝ cos^{B−4}ψ sin ψ dψ dϑ. Both are integrated by Gauss–Legendre on panels
split where φ has its kink (n_1 = 0, n_2 = 0), accurate to ~1e-12 (`sphere_moments`).

Pre backward. The per-unit BN Jacobian is ∂n/∂h = (1/σ) Q_n, with σ² = ‖Ph‖²/B the batch
variance and Q_n = P − nnᵀ/B (the projector off span{1, n}, rank B − 2). With g = ∂loss/∂x^l
and gradient independence (g independent of the forward, Gram κ_{l+1}·G^{l+1}, κ_{l+1} =
n_{l+1} Var(W^{l+1}), the fan-out σ_w²):

    δ^l = (1/σ) Q_n (φ'(n) ⊙ g),   G^l = κ_{l+1} E[σ^{−2}] E[Q_n D G^{l+1} D Q_n],  D = diag φ'(n)

σ² = s² ρ²/B with ρ² ~ χ²_{B−1} independent of n, so E[σ^{−2}] = B/(s²(B − 3)) (finite for
B ≥ 4; infinite at B = 3). Every term kills 1, so G^l = c_l P with, for G^{l+1} = a I + b 11ᵀ,

    c_l = κ_{l+1} B (a·T_1 + b·T_2) / (s_l² (B − 3)(B − 1)),
    T_1 = tr E[Q D² Q] = B·E[φ'(n_1)² (1 − 1/B − n_1²/B)]
    T_2 = tr E[Q φ'φ'ᵀ Q] = (B−1)E[φ'(n_1)²] − E[n_1²φ'(n_1)²] − (B−1)E[φ'(n_1)φ'(n_2)(1 + n_1 n_2)]

(G^L = I: a = 1, b = 0; below, a = c_l, b = −c_l/B). `backward`^l = c_l (B−1)/B. At l ≥ 2,
s² = σ_w² (V_B − C_B), so the per-layer growth of the gradient moment is

    λ = B (T_1 − T_2/B) / ((B − 1)(B − 3)(V_B − C_B))       (square layers)

independent of σ_w² and σ_b²: BN makes the network invariant to the weight scale. Linear φ:
T_1 = B − 2, T_2 = 0, V_B − C_B = B/(B−1), λ = (B − 2)/(B − 3) (> 1 for every B; 1.2 at B = 8).

Post position. x^l = m = BN(φ(h)) has, for every φ, E[m_1²] = p and E[m_1 m_2] = −p/(B−1)
exactly (Σ_b m_b² = B and Σ_b m_b = 0 per unit), p = the probability that φ(h) is not constant
over the batch (torch's BN returns 0 for a constant unit; only relu has p < 1, at layer 1 or
with bias: p = 1 − P(all h_b ≤ 0)). So Σ^{l+1} = σ_w² p (B/(B−1)) P + σ_b² 11ᵀ. Backward:

    δ^l = φ'(h) ⊙ (1/σ_φ) Q_m g,   G^l = κ_{l+1} a_{l+1} E[σ_φ^{−2} D Q_m D],  D = diag φ'(h)

with σ_φ² the batch variance of φ(h) and a_{l+1} the I-coefficient of G^{l+1} (Q_m kills 11ᵀ).
G^l has diagonal κ a E_1 and off-diagonal κ a E_2, E_1 = E[σ_φ^{−2} φ'(h_1)² (Q_m)_{11}],
E_2 = E[σ_φ^{−2} φ'(h_1)φ'(h_2) (Q_m)_{12}], h ~ N(0, Σ^l): `backward`^l = κ a_{l+1} E_1,
a_l = κ a_{l+1}(E_1 − E_2), rate λ = σ_w² (E_1 − E_2) at the stationary Σ. These B-dim
expectations have no low-dimensional reduction: seeded Monte Carlo (`post_moments`, 2^16
batches by default, all units and pairs of a batch pooled, the radius importance-sampled; its
standard error is ~1e-3 relative, far below the simulations' tolerances). For linear φ both
positions coincide.

Post position, φ with a flat region (relu: φ' = 0 on h < 0). If h is not confined to the
centred subspace (layer 1, whose inputs are not centred, or any layer with σ_b > 0), a unit has
with positive probability exactly two inputs on the rising side, both near 0: σ_φ² ~ ρ² in that
2-dim corner and E_1 ∝ ∫ dρ/ρ diverges (logarithmically; torch's eps caps it at ~ln(1/eps)). The
prediction is then inf from that layer down (`has_flat_region` decides, from φ' on a grid).
Without bias, layers l ≥ 2 see h in the centred subspace and stay finite.

Degenerate batches. B = 2: n = ±(1, −1), a constant of h, so Q_n = 0 and every gradient below
the readout is 0 (exactly, up to eps); the forward is V_2 = (φ(1)² + φ(−1)²)/2, C_2 = φ(1)φ(−1).
B = 3: the batch variance has 2 degrees of freedom, E[σ^{−2}] diverges, and the mean-field
gradient moment below the readout is infinite (inf here; a simulation's mean is dominated by
rare units and only eps keeps it finite).

Measured quantities at infinite width (layer l = 1..L, `activation` and `normed` l < L):
`forward` q^l = Σ^l_11, `correlation` Σ^l_12/Σ^l_11, `normed` the BN output's second moment (pre 1,
post p), `activation` the second moment of φ's output (pre V_B, post V_φ(q^l)), `backward` the
mean diagonal of G^l, `weight_grad` = backward^l · E[(x^{l−1})²], with E[(x⁰)²] = q₀ and
E[(x^l)²] = V_B (pre) or p (post) (the pooled per-example moment mean_b[mean_i δ_bi² mean_j
x_bj²]). With ws=true (every weight row sums to zero) the next layer sees x minus its mean over
units, E[x] = M_B = E[φ(n_1)] (pre) or 0 (post, Σ_b m_b = 0): Σ^{l+1} = σ_w²(E[xxᵀ] − M_B²) + σ_b².

Residual stacks (arch=resmlp, `predict_residual`): pre-norm, every BN sees a Gaussian unit of the
stream, so the branch adds σ_m²Φ_B + σ_b²11ᵀ per block and the gradient Gram G^{l−1} = G^l +
α_l² c P with c the plain chain's map (`pre_backward`); post-norm, each unit's stream stays on
the batch sphere, and the backward follows one unit's chain of correlated BN projections by
Monte Carlo (`_post_chain`). The mean and the typical network at B = 4, 5: `typical_rate`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from harness.core import activations
from harness.core.activations import Activation
from harness.core.quadrature import gaussian_expectation, gaussian_expectation_2d

POSITIONS = ("pre", "post")
#: Monte-Carlo batches for the post-position expectations (and its seed)
MC_SAMPLES = 1 << 16
MC_SEED = 0
_PANEL_NODES = 24


@functools.cache
def _legendre(n: int) -> tuple[np.ndarray, np.ndarray]:
    return np.polynomial.legendre.leggauss(n)


def _panels(lo: float, hi: float, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Composite Gauss–Legendre nodes and weights on [lo, hi], k equal panels."""
    x, w = _legendre(_PANEL_NODES)
    edges = np.linspace(lo, hi, k + 1)
    a, b = edges[:-1, None], edges[1:, None]
    return (0.5 * (b - a) * x + 0.5 * (b + a)).ravel(), (0.5 * (b - a) * w).ravel()


def _radial_panels(batch: int, refine: int) -> int:
    """Panels over [0, π/2]: the weight cos^{B−k} concentrates at width ~1/√B."""
    return refine * max(4, math.ceil(3 * math.sqrt(batch)))


@functools.lru_cache(maxsize=256)
def marginal_rule(batch: int, refine: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Nodes n_1 and weights with Σ w f(n_1) ≈ E[f(n_1)], n uniform on the sphere of radius
    √B in the centred subspace (B ≥ 2): n_1 = √(B−1) sin θ, density ∝ cos^{B−3}θ, panels split
    at θ = 0 (`refine` multiplies the panels). B = 2 gives the two points ±1 with weight 1/2."""
    if batch < 2:
        raise ValueError(f"batch must be ≥ 2, got {batch}")
    if batch == 2:
        return np.array([-1.0, 1.0]), np.array([0.5, 0.5])
    t, w = _panels(0.0, math.pi / 2, _radial_panels(batch, refine))
    w = w * np.cos(t) ** (batch - 3)
    t, w = np.concatenate([-t[::-1], t]), np.concatenate([w[::-1], w])
    return math.sqrt(batch - 1) * np.sin(t), w / w.sum()


@functools.lru_cache(maxsize=256)
def pair_rule(batch: int, refine: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Nodes (n_1, n_2) and weights with Σ w f(n_1, n_2) ≈ E[f(n_1, n_2)] (B ≥ 2).

    n_1 = √(B−1) y_1, n_2 = −y_1/√(B−1) + √(B(B−2)/(B−1)) y_2; (y_1, y_2) = r(cos ϑ, sin ϑ),
    r = sin ψ with density ∝ cos^{B−4}ψ sin ψ (B ≥ 4), r = 1 for B = 3 (the pair then lies on
    a circle), n = ±(1, −1) for B = 2. ϑ is split where n_1 = 0 or n_2 = 0 (φ's kinks).
    """
    if batch < 2:
        raise ValueError(f"batch must be ≥ 2, got {batch}")
    if batch == 2:
        return np.array([1.0, -1.0]), np.array([-1.0, 1.0]), np.array([0.5, 0.5])
    a = math.sqrt(batch - 1)
    beta = math.sqrt(batch * (batch - 2) / (batch - 1))
    k2 = math.atan2(1.0 / a, beta)  # n_2 = 0 where −y_1/a + β y_2 = 0
    cuts = sorted({-math.pi / 2, math.pi / 2, k2, k2 - math.pi, k2 + math.pi} |
                  {-math.pi, math.pi})
    cuts = [c for c in cuts if -math.pi <= c <= math.pi]
    th, wt = [], []
    for lo, hi in zip(cuts[:-1], cuts[1:], strict=True):
        if hi - lo > 1e-15:
            t, w = _panels(lo, hi, 2 * refine)
            th.append(t)
            wt.append(w)
    theta, w_theta = np.concatenate(th), np.concatenate(wt)
    if batch == 3:
        r, w_r = np.ones(1), np.ones(1)
    else:
        psi, w_r = _panels(0.0, math.pi / 2, _radial_panels(batch, refine))
        w_r = w_r * np.cos(psi) ** (batch - 4) * np.sin(psi)
        r = np.sin(psi)
    y1 = (r[:, None] * np.cos(theta)[None, :]).ravel()
    y2 = (r[:, None] * np.sin(theta)[None, :]).ravel()
    w = (w_r[:, None] * w_theta[None, :]).ravel()
    return a * y1, -y1 / a + beta * y2, w / w.sum()


def _f(fn, x: np.ndarray) -> np.ndarray:
    return fn(torch.from_numpy(x)).numpy()


@dataclass(frozen=True)
class SphereMoments:
    """The pre-position expectations over n uniform on the batch sphere (module doc)."""

    V: float  # E[φ(n_1)²]
    C: float  # E[φ(n_1)φ(n_2)]
    T1: float  # tr E[Q D² Q]
    T2: float  # tr E[Q φ'φ'ᵀ Q]
    D: float = math.nan  # E[φ'(n_1)²]
    DC: float = math.nan  # E[φ'(n_1)φ'(n_2)]
    M: float = math.nan  # E[φ(n_1)]


def sphere_moments(act: Activation, batch: int, refine: int = 1) -> SphereMoments:
    """V_B, C_B, T_1, T_2 of the module doc by quadrature (`marginal_rule`, `pair_rule`;
    `refine` multiplies their panels, for convergence checks)."""
    return _sphere_moments(act.name, tuple(act.params.items()), batch, refine)


@functools.lru_cache(maxsize=1024)
def _sphere_moments(name: str, params: tuple, batch: int, refine: int) -> SphereMoments:
    act = activations.get(name, **dict(params))
    B = batch
    n1, w1 = marginal_rule(B, refine)
    p1, d1 = _f(act.phi, n1), _f(act.dphi, n1)
    V = float(w1 @ p1**2)
    T1 = float(B * (w1 @ (d1**2 * (1 - 1 / B - n1**2 / B))))
    dd = float(w1 @ d1**2)
    ndd = float(w1 @ (n1**2 * d1**2))
    a, b, w2 = pair_rule(B, refine)
    C = float(w2 @ (_f(act.phi, a) * _f(act.phi, b)))
    da, db = _f(act.dphi, a), _f(act.dphi, b)
    cross = float(w2 @ (da * db * (1 + a * b)))
    T2 = (B - 1) * dd - ndd - (B - 1) * cross
    return SphereMoments(V, C, T1, T2, dd, float(w2 @ (da * db)), float(w1 @ p1))


def normed_eps(batch: int, a: float) -> float:
    """E[v/(v + ε)] for the batch variance v = s²ρ²/B of a Gaussian unit, ρ² ~ χ²_{B−1}, with
    a = ε/s²: the pre position's BN output moment with ε, 1 − E[aB/(ρ² + aB)] by adaptive
    quadrature (split at ρ² = 100aB)."""
    if a <= 0:
        return 1.0
    from scipy import integrate, stats  # scipy (~0.5 s to import) only where a norm needs it

    k, t = batch - 1, a * batch
    f = lambda x: stats.chi2.pdf(x, k) * t / (x + t)  # noqa: E731
    cut = 100 * t
    return 1.0 - (integrate.quad(f, 0, cut, limit=200)[0] + integrate.quad(f, cut, np.inf, limit=200)[0])


def mean_phi(act: Activation, batch: int) -> float:
    """M_B = E[φ(n_1)], n uniform on the batch sphere (`marginal_rule`)."""
    return sphere_moments(act, batch).M


def pre_backward(m: SphereMoments, batch: int, s_sq: float, kappa: float, a: float, b: float
                 ) -> float:
    """c with κ E[σ^{−2}] E[Q_n D (aI + b11ᵀ) D Q_n] = c P: one pre-position BN (and φ, and a
    weight of fan-out gain κ above it) on a Gaussian unit of centred variance s² (module doc):

        c = κ B (a T_1 + b T_2) / (s² (B − 3)(B − 1))

    0 at B = 2 (Q_n = 0), inf at B = 3 (E[σ^{−2}] = ∞) where a T_1 + b T_2 > 0."""
    if batch == 2:
        return 0.0
    if math.isinf(a):  # an infinite gradient Gram stays infinite (b only removes its mean)
        return math.inf
    top = kappa * batch * (a * m.T1 + b * m.T2)
    if batch == 3:
        return math.inf if top > 0 else 0.0
    return top / (s_sq * (batch - 3) * (batch - 1))


@dataclass(frozen=True)
class PostMoments:
    """Post-position expectations at h ~ N(0, q[(1−c)I + c11ᵀ]) (module doc), with the
    Monte-Carlo standard errors of E_1 and E_2."""

    alive: float  # p = E[m_1²]: the probability that φ(h) varies over the batch (ε = 0)
    E1: float
    E2: float
    E1_se: float
    E2_se: float


def post_moments(act: Activation, batch: int, q: float, c: float,
                 samples: int = MC_SAMPLES, seed: int = MC_SEED, eps: float = 0.0) -> PostMoments:
    """p, E_1 = E[σ_φ^{−2} φ'(h_1)² (Q_m)_11], E_2 = E[σ_φ^{−2} φ'(h_1)φ'(h_2)(Q_m)_12] by
    seeded Monte Carlo over `samples` batches h = √(q(1−c))·Pz + √(q(1+(B−1)c))·z̄1, z ~
    N(0, I_B) (float64), pooling the B diagonal and B(B−1) off-diagonal terms of each batch.
    For E_1, E_2 the radius ‖Pz‖ is importance-sampled (χ²_{B−3} with weight r²/(B−3)), which
    keeps the estimator's variance finite at small B; B ≤ 3 gives E_1 = E_2 = 0 (B = 3 is
    infinite: `predict` does not ask). Batches with σ_φ = 0 contribute 0 (torch's BN gives 0
    and, for relu, φ' = 0 there)."""
    return _post_moments(act.name, tuple(act.params.items()), batch, float(q), float(c),
                         samples, seed, float(eps))


@functools.lru_cache(maxsize=4096)
def _post_moments(name: str, params: tuple, batch: int, q: float, c: float, samples: int,
                  seed: int, eps: float) -> PostMoments:
    act = activations.get(name, **dict(params))
    B = batch
    gen = torch.Generator().manual_seed(seed)
    par = q * (1 + (B - 1) * c)
    s_perp, s_par = math.sqrt(max(q * (1 - c), 0.0)), math.sqrt(max(par, 0.0))
    chunk = max(1, min(samples, (1 << 21) // B))
    alive = s1 = s1sq = s2 = s2sq = 0.0
    done = 0
    while done < samples:
        k = min(chunk, samples - done)
        z = torch.randn(k, B, generator=gen, dtype=torch.float64)
        zbar = z.mean(1, keepdim=True)
        pz = z - zbar
        h = s_perp * pz + s_par * zbar
        y = act.phi(h)
        v0 = (y - y.mean(1, keepdim=True)).square().mean(1)
        kept = v0 / (v0 + eps) if eps > 0 else (v0 > 0).to(torch.float64)  # E[m²] per batch
        alive += float(kept.sum())
        if B > 3:
            # importance sampling of the radius: ‖Pz‖² ~ χ²_{B−1} replaced by r² ~ χ²_{B−3}
            # with the weight r²/(B−3) (the density ratio); σ_φ^{−2} ~ r^{−2} near r = 0 makes
            # the plain estimator's variance infinite for B ≤ 5, this one's finite
            r2 = torch.randn(k, B - 3, generator=gen, dtype=torch.float64).square().sum(1)
            u = pz / pz.norm(dim=1, keepdim=True)
            h = s_perp * r2.sqrt().unsqueeze(1) * u + s_par * zbar
            weight = r2 / (B - 3)
            y = act.phi(h)
            d = act.dphi(h)
            yc = y - y.mean(1, keepdim=True)
            v = yc.square().mean(1)  # biased batch variance, (k,)
            ok = v > 0
            inv = torch.where(ok, 1 / torch.where(ok, v, 1.0), 0.0) * weight
            m = yc * torch.where(ok, v, 1.0).rsqrt().unsqueeze(1) * ok.unsqueeze(1)
            d2 = d.square()
            diag = (d2 * (1 - 1 / B - m.square() / B)).sum(1)  # Σ_b φ'_b² Q_bb
            quad = d2.sum(1) - d.sum(1).square() / B - (m * d).sum(1).square() / B  # φ'ᵀQφ'
            e1 = inv * diag / B
            e2 = inv * (quad - diag) / (B * (B - 1))
            s1 += float(e1.sum())
            s1sq += float(e1.square().sum())
            s2 += float(e2.sum())
            s2sq += float(e2.square().sum())
        done += k
    n = float(samples)
    mean1, mean2 = s1 / n, s2 / n
    se1 = math.sqrt(max(s1sq / n - mean1**2, 0.0) / max(n - 1, 1))
    se2 = math.sqrt(max(s2sq / n - mean2**2, 0.0) / max(n - 1, 1))
    return PostMoments(alive / n, mean1, mean2, se1, se2)


FLAT_GRID = np.linspace(-4.0, 4.0, 801)


def has_flat_region(act: Activation) -> bool:
    """Whether φ' is exactly 0 somewhere on a grid of [−4, 4] (relu: φ constant on h < 0), so
    that φ maps a set of positive Gaussian measure to one value."""
    return bool((_f(act.dphi, FLAT_GRID) == 0).any())


def _per_layer(x: float | Sequence[float], L: int, what: str) -> np.ndarray:
    a = np.broadcast_to(np.asarray(x, dtype=np.float64), (L,)).copy() if np.ndim(x) == 0 \
        else np.asarray(x, dtype=np.float64)
    if a.shape != (L,):
        raise ValueError(f"{what} needs one value per layer ({L}), got {a.shape}")
    return a


def predict(
    act: Activation,
    depth: int,
    batch: int,
    sigma_w2: float | Sequence[float],
    sigma_b2: float = 0.0,
    q0: float = 1.0,
    c0: float = 0.0,
    position: str = "pre",
    backward_gain: float | Sequence[float] | None = None,
    ws: bool = False,
    eps: float = 0.0,
    samples: int = MC_SAMPLES,
    seed: int = MC_SEED,
) -> dict[str, np.ndarray]:
    """The infinite-width prediction of a batch-normalized MLP (module doc), per layer.

    Args:
        act: the activation.  depth: L (layer L is the linear readout without BN).
        batch: B ≥ 2.  sigma_w2: σ_w,l² = fan_in·Var(W^l), a number or one per layer.
        sigma_b2: σ_b².  q0, c0: the inputs' second moment and correlation.
        position: "pre" (x = φ(BN(h))) or "post" (x = BN(φ(h))).
        backward_gain: κ_l = fan_out·Var(W^l) (default σ_w,l², square layers).
        ws: weight rows centred (the next layer sees x minus its mean over units).
        eps: BN's ε, kept only in `normed` (`normed_eps`) and the post position's E[(x^l)²]
            (elsewhere its effect is a relative O(ε / batch variance)).
        samples, seed: the post position's Monte Carlo.

    Returns forward, correlation, backward, weight_grad (L values) and normed, activation
    (L − 1 values): float64 arrays. Backward and weight_grad below the readout are 0 at B = 2
    and inf at B = 3 (module doc).
    """
    if position not in POSITIONS:
        raise ValueError(f"position must be one of {POSITIONS}, got {position!r}")
    if batch < 2:
        raise ValueError(f"batch must be ≥ 2 for BatchNorm, got {batch}")
    if depth < 1:
        raise ValueError(f"depth must be ≥ 1, got {depth}")
    L, B = depth, batch
    s2 = _per_layer(sigma_w2, L, "sigma_w2")
    kappa = s2 if backward_gain is None else _per_layer(backward_gain, L, "backward_gain")
    q = np.empty(L)
    q12 = np.empty(L)
    q[0] = s2[0] * q0 + sigma_b2
    q12[0] = s2[0] * q0 * c0 + sigma_b2
    normed = np.empty(L - 1)
    a2 = np.empty(L - 1)  # E[φ(·)²], l = 1..L−1
    x2 = np.empty(L - 1)  # E[(x^l)²]
    post: list[PostMoments] = []
    sph = sphere_moments(act, B) if position == "pre" else None
    centre = float(mean_phi(act, B)) ** 2 if (ws and position == "pre") else 0.0
    for l in range(L - 1):
        if position == "pre":
            normed[l] = normed_eps(B, eps / (q[l] - q12[l])) if eps > 0 else 1.0
            a2[l], x2[l] = sph.V, sph.V
            xx, x12 = sph.V, sph.C
        else:
            c = q12[l] / q[l] if q[l] > 0 else 1.0
            pm = post_moments(act, B, q[l], c, samples, seed, eps)
            post.append(pm)
            normed[l] = x2[l] = pm.alive
            a2[l] = float(act.V(q[l]))
            xx, x12 = pm.alive, -pm.alive / (B - 1)
        q[l + 1] = s2[l + 1] * (xx - centre) + sigma_b2
        q12[l + 1] = s2[l + 1] * (x12 - centre) + sigma_b2
    with np.errstate(divide="ignore", invalid="ignore"):
        corr = q12 / q
    g = np.empty(L)
    g[-1] = 1.0
    if B == 2:
        g[:-1] = 0.0
    elif B == 3:
        g[:-1] = math.inf
    elif position == "pre":
        a, b = 1.0, 0.0  # G^{l+1} = a I + b 11ᵀ
        for l in range(L - 2, -1, -1):
            c_l = pre_backward(sph, B, q[l] - q12[l], kappa[l + 1], a, b)  # s²: h^l's centred variance
            g[l] = c_l * (B - 1) / B
            a, b = c_l, -c_l / B
    else:
        a = 1.0
        flat = has_flat_region(act)
        for l in range(L - 2, -1, -1):
            pm = post[l]
            centred = q[l] + (B - 1) * q12[l] <= 1e-12 * q[l]  # Σ^l 1 = 0: h ⊥ 1
            if math.isinf(a) or (flat and not centred):
                g[: l + 1] = math.inf  # the flat-region divergence (module doc)
                break
            g[l] = kappa[l + 1] * a * pm.E1
            a = kappa[l + 1] * a * (pm.E1 - pm.E2)
    xin = np.concatenate([[q0], x2])
    return {
        "forward": q,
        "correlation": corr,
        "normed": normed,
        "activation": a2,
        "backward": g,
        "weight_grad": g * xin,
    }


def explosion_rate(
    act: Activation, batch: int, sigma_w2: float = 1.0, sigma_b2: float = 0.0,
    position: str = "pre", samples: int = MC_SAMPLES, seed: int = MC_SEED,
) -> float:
    """λ: the per-layer growth E[(δ^l)²]/E[(δ^{l+1})²] deep inside a square batch-normalized
    MLP (at its forward fixed point), toward the input.

    pre: λ = B (T_1 − T_2/B) / ((B−1)(B−3)(V_B − C_B)), independent of σ_w², σ_b².
    post: λ = σ_w² (E_1 − E_2) at the stationary Σ = σ_w² p (B/(B−1)) P + σ_b² 11ᵀ (inf for a
    φ with a flat region and σ_b² > 0). Linear φ: (B − 2)/(B − 3). B = 2: 0 (no gradient passes
    BN); B = 3: inf.
    """
    if batch == 2:
        return 0.0
    if batch == 3:
        return math.inf
    if batch < 2:
        raise ValueError(f"batch must be ≥ 2 for BatchNorm, got {batch}")
    B = batch
    if position == "pre":
        m = sphere_moments(act, B)
        return B * (m.T1 - m.T2 / B) / ((B - 1) * (B - 3) * (m.V - m.C))
    if position != "post":
        raise ValueError(f"position must be one of {POSITIONS}, got {position!r}")
    p = 1.0
    for _ in range(100):  # the fixed point of p ↦ alive(σ_w² p B/(B−1) + σ_b², ...)
        q = sigma_w2 * p + sigma_b2
        q12 = -sigma_w2 * p / (B - 1) + sigma_b2
        if has_flat_region(act) and q + (B - 1) * q12 > 1e-12 * q:
            return math.inf  # the flat-region divergence (module doc): σ_b² > 0
        pm = post_moments(act, B, q, q12 / q, samples, seed)
        if pm.alive == p:
            break
        p = pm.alive
    return float(sigma_w2 * (pm.E1 - pm.E2))


def typical_rate(act: Activation, batch: int, width: int, samples: int = 1 << 20,
                 seed: int = MC_SEED) -> float:
    """The pre position's per-layer growth of ln backward in a typical network of width n:

        λ_n = λ · exp(E[ln Z̄_n] − ln E[Z]),   Z = ‖σ^{−1} Q_n (φ'(n) ⊙ g)‖²,  g ~ N(0, P)

    with Z̄_n the mean of n independent per-unit terms (seeded Monte Carlo over `samples` terms;
    E[Z] = B(T_1 − T_2/B)/(B − 3) exactly, h of unit centred variance).
    λ (`explosion_rate`) is the rate of the mean gradient moment; a per-network log-slope
    estimates E[ln backward], whose layer factors are such width-n averages, and ln of an average
    sits below ln of its mean. For B ≥ 6 the terms have finite variance and the gap is
    O(Var Z/(n E[Z]²)); for B = 4, 5 σ^{−2} ∝ 1/χ²_{B−1} has infinite variance and the gap is
    larger and shrinks more slowly with n (docs/theory.md)."""
    lam = explosion_rate(act, batch)
    if batch < 4:
        return lam
    gen = torch.Generator().manual_seed(seed)
    per = max(1, min(samples // width, (1 << 18) // width))  # averages per chunk
    means: list[torch.Tensor] = []
    for _ in range(max(1, samples // (per * width))):
        h = torch.randn(per, width, batch, generator=gen, dtype=torch.float64)
        c = h - h.mean(-1, keepdim=True)
        sd = c.square().mean(-1, keepdim=True).sqrt()
        y = c / sd
        g = torch.randn(per, width, batch, generator=gen, dtype=torch.float64)
        e = act.dphi(y) * (g - g.mean(-1, keepdim=True))
        d = (e - e.mean(-1, keepdim=True) - y * (e * y).mean(-1, keepdim=True)) / sd
        means.append(d.square().sum(-1).mean(1))
    m = sphere_moments(act, batch)
    mean = batch * (m.T1 - m.T2 / batch) / (batch - 3)  # E[Z] = tr(cP) at s² = 1 (`pre_backward`)
    return lam * math.exp(float(torch.log(torch.cat(means)).mean()) - math.log(mean))


def linear_rate(batch: int) -> float:
    """(B − 2)/(B − 3): the linear BN chain's per-layer gradient growth (B ≥ 4)."""
    return (batch - 2) / (batch - 3)


# ---- residual stacks (arch=resmlp) ---------------------------------------------------------------
@functools.lru_cache(maxsize=4096)
def radius_moments(batch: int, r0_sq: float, tau2: float, eps: float = 0.0) -> tuple[float, float]:
    """(E[σ^{−2}], E[v/(v + ε)]) for a unit whose centred batch vector is Ps = m + g in the
    (B−1)-dim centred subspace: m of fixed length ‖m‖² = r0² (a BN output: r0² = B; 0 for a
    Gaussian unit), g ~ N(0, τ² P) independent, v = σ² = ‖Ps‖²/B its batch variance. With the
    Laplace transform L(t) = E e^{−t‖Ps‖²} = (1 + 2τ²t)^{−k/2} exp(−r0² t/(1 + 2τ²t)), k = B − 1
    (noncentral χ²):

        E[σ^{−2}] = B ∫_0^∞ L(t) dt,      E[ε/(v + ε)] = εB ∫_0^∞ e^{−εBt} L(t) dt

    (1/x = ∫ e^{−tx} dt), integrated in ln t. E[σ^{−2}] is finite for B ≥ 4 or r0² > 0 with
    τ² = 0; r0² = 0 gives B/(τ²(B − 3)), the Gaussian unit's."""
    from scipy import integrate  # only where a BatchNorm residual stack needs it (start-up)
    B, k = batch, batch - 1
    if tau2 == 0.0 and r0_sq == 0.0:
        return math.inf, 0.0
    if tau2 == 0.0:
        return B / r0_sq, r0_sq / (r0_sq + eps * B)
    if r0_sq == 0.0 and k > 2:
        inv = B / (tau2 * (k - 2))
    elif k <= 2:
        inv = math.inf
    else:
        def lap(y: float) -> float:
            t = math.exp(y)
            return t * (1 + 2 * tau2 * t) ** (-k / 2) * math.exp(-r0_sq * t / (1 + 2 * tau2 * t))

        centre = -math.log(r0_sq + tau2)  # L falls off where t(r0² + τ²) ~ 1
        inv = B * integrate.quad(lap, centre - 40, centre + 40, limit=400, points=[centre])[0]
        inv += B * _tail(k, tau2, r0_sq, centre + 40)
    if eps <= 0:
        return inv, 1.0

    def lap_eps(y: float) -> float:
        t = math.exp(y)
        return (t * math.exp(-eps * B * t) * (1 + 2 * tau2 * t) ** (-k / 2)
                * math.exp(-r0_sq * t / (1 + 2 * tau2 * t)))

    centre = -math.log(r0_sq + tau2)
    hi = -math.log(eps * B) + 5  # e^{−εBt} has cut the integrand off
    lost = eps * B * integrate.quad(lap_eps, centre - 40, max(hi, centre + 1), limit=400,
                                     points=[centre])[0]
    return inv, 1.0 - lost


def _tail(k: int, tau2: float, r0_sq: float, y0: float) -> float:
    """∫_{e^{y0}}^∞ L(t) dt with L ≈ (2τ²t)^{−k/2} e^{−r0²/(2τ²)} (t ≫ 1/τ², k ≥ 3)."""
    t0 = math.exp(y0)
    return (2 * tau2) ** (-k / 2) * math.exp(-r0_sq / (2 * tau2)) * t0 ** (1 - k / 2) / (k / 2 - 1)


@dataclass(frozen=True)
class _Kernel:
    """A permutation-symmetric unit's moments: V = E[φ(z_1)²], C = E[φ(z_1)φ(z_2)], M = E φ(z_1),
    D = E[φ'(z_1)²], DC = E[φ'(z_1)φ'(z_2)]."""

    V: float
    C: float
    M: float
    D: float
    DC: float


def _gauss_kernel(act: Activation, q: float, q12: float) -> _Kernel:
    """`_Kernel` of a Gaussian unit with E z² = q, E z_1 z_2 = q12."""
    c = min(1.0, max(-1.0, q12 / q))
    return _Kernel(float(act.V(q)), float(act.C(q, c)), float(gaussian_expectation(act.phi, q)),
                   float(act.D(q)), gaussian_expectation_2d(act.dphi, act.dphi, q, c))


def _dmap(a: float, b: float, D: float, DC: float) -> tuple[float, float]:
    """E[D (aI + b11ᵀ) D] = a'I + b'11ᵀ, D = diag φ'(z) of a permutation-symmetric z:
    diagonal (a + b)E[φ'²], off-diagonal b E[φ'_1 φ'_2]."""
    off = b * DC
    return (a + b) * D - off, off


def _sample_gram(a: float, b: float, shape: tuple[int, int], gen: torch.Generator) -> torch.Tensor:
    """Rows ξ ~ N(0, aI + b11ᵀ) (a, a + Bb ≥ 0): √a (z − z̄1) + √(a + Bb) z̄1, z ~ N(0, I)."""
    z = torch.randn(*shape, generator=gen, dtype=torch.float64)
    zbar = z.mean(1, keepdim=True)
    return math.sqrt(max(a, 0.0)) * (z - zbar) + math.sqrt(max(a + shape[1] * b, 0.0)) * zbar


#: chains of the post-position residual Monte Carlo (B·chains numbers per block), and the most
#: numbers its forward chain keeps over all blocks (deep stacks get fewer chains: 128 MiB)
CHAIN_ENTRIES = 1 << 17
CHAIN_MEMORY = 1 << 24


def _post_chain(act: Activation, B: int, q0: float, c0: float, a2: np.ndarray, tau_f: np.ndarray,
                kap: np.ndarray, m: int, h_kernels: list[_Kernel | None], eps: float, chains: int,
                seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The post-position backward of a residual stack by Monte Carlo over one unit's chain
    (docs/theory.md): x^0 ~ N(0, q0[(1−c0)I + c0 11ᵀ]), x^l = BN(x^{l−1} + α_l f^l) with Pf^l ~
    N(0, τ_l² P) fresh per block, then backward from δ^L ~ N(0, I):

        ∂loss/∂s^l = σ_l^{−1}(δ − mean δ − y mean(δ y))   (y = x^l, σ_l² = var s^l + ε: BN exactly)
        δ^{l−1} = ∂loss/∂s^l + φ'(x^{l−1}) ⊙ ξ^l,   ξ^l ~ N(0, α_l² κ (c_s P), the branch's chain)

    with c_s the population's ‖∂loss/∂s^l‖²/(B − 1) (gradient independence: ξ mixes all units
    through a fresh W). Returns per block E[(δ^l)²] (mean over chains and the batch), E[(∂loss/∂s^l)²]
    and, for m = 2, E[(∂loss/∂h₁)²] of the inner layer."""
    L = len(a2)
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(chains, B, generator=gen, dtype=torch.float64)
    zbar = z.mean(1, keepdim=True)
    x = math.sqrt(max(q0 * (1 - c0), 0.0)) * (z - zbar) + math.sqrt(max(q0 * (1 + (B - 1) * c0), 0.0)) * zbar
    xs, ys, sinv = [x], [], []
    for l in range(L):
        f = _sample_gram(tau_f[l], 0.0, (chains, B), gen)  # only Pf enters BN
        s = xs[-1] + math.sqrt(a2[l]) * f
        c = s - s.mean(1, keepdim=True)
        si = (c.square().mean(1, keepdim=True) + eps).rsqrt()
        ys.append(c * si)
        sinv.append(si)
        xs.append(ys[-1])
    back, ds_sq, inner = np.empty(L), np.empty(L), np.full(L, np.nan)
    delta = torch.randn(chains, B, generator=gen, dtype=torch.float64)
    for l in range(L - 1, -1, -1):
        back[l] = float(delta.square().mean())
        y = ys[l]
        ds = sinv[l] * (delta - delta.mean(1, keepdim=True) - y * (delta * y).mean(1, keepdim=True))
        ds_sq[l] = float(ds.square().mean())
        cs = ds_sq[l] * B / (B - 1)  # Gram of ∂loss/∂s: cs P
        ea, eb = a2[l] * cs, -a2[l] * cs / B
        h = h_kernels[l]
        if h is not None:  # through W₂ and φ'(h₁), h₁ Gaussian
            ea, eb = _dmap(kap[l * m + 1] * ea, kap[l * m + 1] * eb, h.D, h.DC)
            inner[l] = ea + eb
        xi = _sample_gram(kap[l * m] * ea, kap[l * m] * eb, (chains, B), gen)
        delta = ds + act.dphi(xs[l]) * xi
    back[-1] = 1.0  # E[(δ^L)²], exactly
    return back, ds_sq, inner


def predict_residual(
    act: Activation,
    depth: int,
    batch: int,
    sigma_w2: float | Sequence[float],
    alphas: Sequence[float],
    m: int = 1,
    sigma_b2: float = 0.0,
    q0: float = 1.0,
    c0: float = 0.0,
    position: str = "pre",
    backward_gain: float | Sequence[float] | None = None,
    ws: bool = False,
    eps: float = 0.0,
    seed: int = MC_SEED,
) -> dict[str, np.ndarray]:
    """The infinite-width, finite-batch prediction of a batch-normalized residual stack
    (arch=resmlp; docs/theory.md "BatchNorm in residual stacks"), per block l = 1..L:

        pre:   x^l = x^{l−1} + α_l f(BN(x^{l−1})), f = W φ (m = 1) or W₂ φ(BN(W₁ φ(·) + b₁)) (m = 2)
        post:  x^l = BN(s^l), s^l = x^{l−1} + α_l f(x^{l−1}), f = W φ or W₂ φ(W₁ φ(·) + b₁)

    (every f ends in + b). State: the stream's B×B Gram q[(1 − c)I + c11ᵀ] forward and the
    gradient's a I + b 11ᵀ backward (G^L = I), under gradient independence (the cross term
    between the skip and the branch vanishes: the backward's W is zero-mean and fresh).

    pre: every BN sees a Gaussian unit, so its output n is uniform on the batch sphere
    (`sphere_moments`): branch Gram σ_m²(Φ_B − [ws]M_B²11ᵀ) + σ_b²11ᵀ, Φ_B = (V_B − C_B)I +
    C_B 11ᵀ; q^l = q^{l−1} + α_l²(σ_m²(V_B − [ws]M_B²) + σ_b²) (q12 with C_B). Backward: the
    branch maps G to c P (`pre_backward`, the inner BN first for m = 2, on s² = σ_1²(V_B − C_B)),
    G^{l−1} = G^l + α_l² c P.

    post: Ps^l = Px^{l−1} + α P f is rotation invariant in the centred subspace (Px^{l−1} is a BN
    output of length √B, or Gaussian at l = 1; Pf is Gaussian isotropic, τ² its centred
    variance), so x^l is again uniform on the sphere: forward = normed = E[v/(v+ε)]
    (`radius_moments`), correlation −1/(B − 1), branch from the sphere's (or, at l = 1, the
    Gaussian's) kernel. The backward carries each unit's gradient along the skip through that
    unit's own BNs, whose projections are correlated from block to block: `_post_chain`'s Monte
    Carlo over one unit's chain (seeded; `CHAIN_ENTRIES` numbers per block).

    Returns forward, branch, normed, backward, correlation (L values) and weight_grad (L·m:
    α_l² × the gradient moment at each weight's output × its input's second moment). Below the
    last block, backward is inf at B = 3 (E[σ^{−2}] = ∞); at B = 2 no gradient passes a BN.
    """
    if position not in POSITIONS:
        raise ValueError(f"position must be one of {POSITIONS}, got {position!r}")
    if batch < 2:
        raise ValueError(f"batch must be ≥ 2 for BatchNorm, got {batch}")
    if m not in (1, 2):
        raise ValueError(f"branch depth m must be 1 or 2, got {m}")
    L, B = depth, batch
    s2 = _per_layer(sigma_w2, L * m, "sigma_w2")
    kap = s2 if backward_gain is None else _per_layer(backward_gain, L * m, "backward_gain")
    a2 = _per_layer(np.asarray(alphas, dtype=np.float64) ** 2, L, "alphas")
    sph = sphere_moments(act, B)
    W = 1.0 if ws else 0.0
    fwd, br, nd, cor, tau_f = (np.empty(L) for _ in range(5))
    wg_in = np.empty(L * m)  # E[(input of W_k)²]
    s_x, s_h = np.empty(L), np.empty(L)  # pre: centred variances of the BNs' inputs
    h_kernels: list[_Kernel | None] = []
    q, q12 = float(q0), float(q0 * c0)
    for l in range(L):
        k0 = l * m
        if position == "pre":
            s_x[l] = q - q12
            nd[l] = normed_eps(B, eps / s_x[l]) if eps > 0 else 1.0
            wg_in[k0:k0 + m] = sph.V
            s_h[l] = s2[k0] * (sph.V - sph.C)  # m = 2: h₁'s centred variance
            fv = s2[k0 + m - 1] * (sph.V - W * sph.M**2) + sigma_b2
            fc = s2[k0 + m - 1] * (sph.C - W * sph.M**2) + sigma_b2
            q, q12 = q + a2[l] * fv, q12 + a2[l] * fc
            fwd[l], br[l], cor[l] = q, fv, q12 / q
            continue
        x = _gauss_kernel(act, q, q12) if l == 0 else _Kernel(sph.V, sph.C, sph.M, sph.D, sph.DC)
        wg_in[k0] = x.V
        fv, fc = s2[k0] * (x.V - W * x.M**2) + sigma_b2, s2[k0] * (x.C - W * x.M**2) + sigma_b2
        h = None
        if m == 2:
            h = _gauss_kernel(act, fv, fc)
            wg_in[k0 + 1] = h.V
            fv, fc = (s2[k0 + 1] * (h.V - W * h.M**2) + sigma_b2,
                      s2[k0 + 1] * (h.C - W * h.M**2) + sigma_b2)
        h_kernels.append(h)
        br[l], tau_f[l] = fv, fv - fc
        r0, tau_x = (0.0, q - q12) if l == 0 else (float(B), 0.0)  # Px^{l−1}: Gaussian or √B
        q = radius_moments(B, r0, tau_x + a2[l] * tau_f[l], eps)[1]
        q12 = -q / (B - 1)
        fwd[l] = nd[l] = q
        cor[l] = -1.0 / (B - 1)
    g = np.ones(L)
    wg = np.empty(L * m)
    if position == "post":
        chains = max(256, min(CHAIN_ENTRIES, CHAIN_MEMORY // L) // B)  # the chain is kept: L·chains·B
        back, ds_sq, inner = _post_chain(act, B, q0, c0, a2, tau_f, kap, m, h_kernels, eps, chains,
                                         seed)
        g[:] = back
        wg[m - 1::m] = a2 * ds_sq * wg_in[m - 1::m]
        if m == 2:
            wg[0::2] = inner * wg_in[0::2]
        if B == 2:  # Q_x = 0: nothing passes a BN (the chain's ε-sized remainder dropped)
            g[:-1], wg[:] = 0.0, 0.0
        if B == 3:  # E[σ^{−2}] = ∞ below every block with a branch (module doc)
            g[:-1], wg[:] = math.inf, np.where(np.repeat(a2, m) > 0, math.inf, 0.0)
        return {"forward": fwd, "branch": br, "normed": nd, "backward": g, "weight_grad": wg,
                "correlation": cor}
    a, b = 1.0, 0.0  # G^l = a I + b 11ᵀ at the block's output
    for l in range(L - 1, -1, -1):
        k0 = l * m
        g[l] = a + b
        if a2[l] == 0:  # α = 0: the block is the identity, its weights get no gradient
            wg[k0:k0 + m] = 0.0
            continue
        wg[k0 + m - 1] = a2[l] * (a + b) * wg_in[k0 + m - 1]
        ca, cb = a, b
        if m == 2:
            c2 = pre_backward(sph, B, s_h[l], kap[k0 + 1], a, b)
            wg[k0] = a2[l] * c2 * (B - 1) / B * wg_in[k0]
            ca, cb = (math.inf, 0.0) if math.isinf(c2) else (c2, -c2 / B)
        c = pre_backward(sph, B, s_x[l], kap[k0], ca, cb)
        a, b = (math.inf, 0.0) if math.isinf(c) else (a + a2[l] * c, b - a2[l] * c / B)
    return {"forward": fwd, "branch": br, "normed": nd, "backward": g, "weight_grad": wg,
            "correlation": cor}
