"""The input-output Jacobian's squared singular values (Pennington, Schoenholz & Ganguli 2017).

With `jacobian=k > 0` each replicate's exact Jacobian J^l = ∂h^l/∂x^0 (n_l × n_0) is formed at
its first k inputs, layer by layer along `harness.sim.dense.forward` (shapes: R replicates,
k inputs, n units):

    J^1 = W^1,    J^{l+1} = W^{l+1} diag(φ'(h^l)) J^l

and the moments of the squared singular values λ of J^l (the eigenvalues of J^lᵀJ^l) are

    m_1 = tr(JᵀJ)/n_0 = ‖J‖_F²/n_0,    m_2 = tr((JᵀJ)²)/n_0 = ‖JᵀJ‖_F²/n_0

per input, with no eigen-decomposition (the last layer's spectrum itself is kept for its
histogram, from float64 singular values of J). Per replicate and layer, averaged over the k inputs:

    jacobian_mean    = m_1                     (the mean squared singular value)
    jacobian_var     = m_2 − m_1²              (their variance, the paper's σ²_{JJᵀ})
    jacobian_rel_var = m_2/m_1² − 1            (scale-free: the variance of λ/m_1)

Theory (large width, square layers). J^lᵀJ^l is a free product of the W^kᵀW^k and the D_k² =
diag(φ'(h^k))². The S-transform of a spectrum with moments m_1, m_2 starts S(z) = (1 −
(m_2/m_1² − 1) z + …)/m_1 and S-transforms of free products multiply, so both the mean and the
relative variance compose exactly — the mean as a product, the relative variance as a sum:

    m_1^l = ∏_{k≤l} σ_{w,k}² · ∏_{k<l} μ_1(q^k)
    v^l   = m_2/m_1² − 1 = l · (−s_1) + Σ_{k<l} (μ_2(q^k)/μ_1(q^k)² − 1)

with μ_j(q) = E_{z~N(0,q)}[φ'(z)^{2j}] (μ_1 = D_φ), q^k the forward prediction, and s_1 the first
S-transform coefficient of WᵀW/σ_w²: −1 for iid weights (Marchenko–Pastur at aspect ratio 1,
whatever their distribution), 0 for orthogonal ones (`harness.core.init.Scheme.spectral_s1`). At
criticality on the fixed point (χ = σ_w² μ_1(q*) = 1) this is Pennington et al.'s
σ²_{JJᵀ} = L(μ_2/μ_1² − 1 − s_1) per layer of slope: relu (μ_2/μ_1² = 2) grows at 2 per layer
with Gaussian and 1 with orthogonal weights — never isometric — while tanh with q* → 0 has
μ_2/μ_1² → 1, so orthogonal weights give a spectrum that stays near m_1 (dynamical isometry)
and Gaussian ones still grow at 1 per layer. `jacobian_var` is predicted as (m_1^l)² v^l.

At finite width the mean of v over networks is biased high by O(l²/n) (a ratio estimator over
heavy-tailed spectra), and m_1 per network is log-normal-ish (`harness.theory.hanin`), so compare
`jacobian_rel_var` rather than `jacobian_var`. The variance needs n_0 = n_1 = … (rectangular
layers change the Marchenko–Pastur coefficient); its theory is nan otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from harness.core.activations import Activation
from harness.core.init import scheme as scheme_entry
from harness.core.quadrature import gaussian_expectation
from harness.core.stats import least_squares_slope
from harness.sim import dense

#: what `jacobian=k > 0` adds to an MLP run's quantities
QUANTITIES = ("jacobian_mean", "jacobian_var", "jacobian_rel_var")


def moments(J: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(m_1, m_2) of the squared singular values of J (..., n_out, n_in), over the n_in
    eigenvalues of JᵀJ: m_1 = ‖J‖_F²/n_in, m_2 = ‖JᵀJ‖_F²/n_in (the smaller Gram matrix)."""
    n_out, n_in = J.shape[-2:]
    gram = J.mT @ J if n_in <= n_out else J @ J.mT
    m1 = torch.linalg.matrix_norm(J).square() / n_in
    m2 = torch.linalg.matrix_norm(gram).square() / n_in
    return m1, m2


def propagate(
    weights: Sequence[torch.Tensor],
    biases: Sequence[torch.Tensor] | None,
    x0: torch.Tensor,
    act: Activation,
    spectrum: bool = False,
) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
    """The exact Jacobians J^l = ∂h^l/∂x^0 of every member at its inputs x0 (R, k, n_0).

    Returns ({quantity: (R, L)} averaged over the k inputs (module doc), and — with
    `spectrum` — the eigenvalues of J^Lᵀ J^L (squared singular values of J^L, computed in
    float64, with n_0 − n_L zeros where n_L < n_0), (R, k, n_0), ascending; else None).
    """
    R, k, n0 = x0.shape
    L = len(weights)
    out = {q: x0.new_empty(R, L) for q in QUANTITIES}
    d, J = None, None
    eig = None
    for layer in dense.forward(weights, biases, x0, act, fused=False):
        l, h, W = layer.index, layer.h, weights[layer.index]  # h: (R, k, n_l)
        n = W.shape[1]
        if J is None:  # J^1 = W^1 at every input; kept as (R, n_l, k·n_0) for one bmm per layer
            J = W.unsqueeze(2).expand(R, n, k, n0).reshape(R, n, k * n0)
        else:  # J^l = W^l diag(φ'(h^{l-1})) J^{l-1}
            scaled = J.view(R, -1, k, n0) * d.transpose(1, 2).unsqueeze(-1)
            J = torch.bmm(W, scaled.view(R, -1, k * n0))
        per_input = J.view(R, n, k, n0).transpose(1, 2)  # (R, k, n_l, n_0)
        m1, m2 = moments(per_input)
        out["jacobian_mean"][:, l] = m1.mean(1)
        out["jacobian_var"][:, l] = (m2 - m1.square()).mean(1)
        out["jacobian_rel_var"][:, l] = (m2 / m1.square() - 1).mean(1)
        if spectrum and l == L - 1:  # from J itself (not JᵀJ) in float64: λ down to ~1e-14 λ_max
            sv = torch.linalg.svdvals(per_input.double())  # (R, k, min(n_L, n_0)), descending
            eig = sv.flip(-1).square()
            if sv.shape[-1] < n0:  # JᵀJ has n_0 − n_L more zero eigenvalues
                eig = torch.cat([eig.new_zeros(R, k, n0 - sv.shape[-1]), eig], -1)
            eig = eig.to(x0.dtype)
        if l < L - 1:
            d = act.dphi(h)  # φ'(h^l); x^l = φ(h^l) follows in dense.forward
    return out, eig


def mu(act: Activation, q: np.ndarray, j: int) -> np.ndarray:
    """μ_j(q) = E_{z~N(0,q)}[φ'(z)^{2j}] per q (μ_1 = D_φ)."""
    if j == 1:
        return np.asarray(act.D(q), dtype=np.float64)
    return gaussian_expectation(lambda z: act.dphi(z) ** (2 * j), q)


def predict(
    act: Activation, scheme: str, widths: Sequence[int], var_w: Sequence[float], q: np.ndarray
) -> dict[str, np.ndarray]:
    """jacobian_mean, jacobian_var, jacobian_rel_var per layer l = 1..L (module doc), from
    Var(W^l) and the forward prediction q^l. m_1 holds for any widths (σ_{w,l}² is then
    n_l·Var(W^l)); the variances need square layers and are nan otherwise."""
    L = len(var_w)
    rows = np.asarray(widths[1:], dtype=np.float64)
    s2 = rows * np.asarray(var_w, dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore", under="ignore", divide="ignore"):
        mu1 = mu(act, q[:-1], 1) if L > 1 else np.empty(0)
        mu2 = mu(act, q[:-1], 2) if L > 1 else np.empty(0)
        mean = np.cumprod(s2) * np.concatenate([[1.0], np.cumprod(mu1)])
        s1 = scheme_entry(scheme).spectral_s1
        rel = -s1 * np.arange(1, L + 1) + np.concatenate([[0.0], np.cumsum(mu2 / mu1**2 - 1)])
    if len(set(widths)) != 1:
        rel = np.full(L, np.nan)
    return {"jacobian_mean": mean, "jacobian_var": mean**2 * rel, "jacobian_rel_var": rel}


def bytes_per_replicate(k: int, widths: Sequence[int], item: int) -> int:
    """Peak bytes of one replicate's Jacobians: J, its scaled copy, and a Gram matrix."""
    n0, n_max = widths[0], max(widths[1:])
    return item * k * (2 * n_max * n0 + n0 * n0 + 4 * n_max)


def describe_slopes(rel_var: np.ndarray, theory: np.ndarray) -> str:
    """One line: the per-layer slope of the replicate-mean jacobian_rel_var against theory."""
    layers = np.arange(1, rel_var.shape[1] + 1)
    if len(layers) < 2:
        return "jacobian: one layer, no slope"
    measured = least_squares_slope(layers, np.nanmean(rel_var, 0))
    predicted = least_squares_slope(layers, theory) if np.isfinite(theory).all() else math.nan
    return (f"jacobian: relative variance of the squared singular values grows {measured:.4g} per "
            f"layer (free-probability theory {predicted:.4g})")
