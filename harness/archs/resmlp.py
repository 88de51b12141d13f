"""arch=resmlp: residual stacks of dense blocks on a stream of constant width; ensemble and theory.

The network. `depth` = L blocks on a stream x^l ∈ Rⁿ (n = `width`), x^0 ~ N(0, input_var):

    x^l = x^{l-1} + α_l f_l(x^{l-1} / β_l),       l = 1..L

with a pre-activation branch of m = `residual.branch_depth` weight layers (He et al. 2016,
"Identity mappings in deep residual networks"), ψ = γ·φ:

    m = 1:  f(u) = W ψ(u) + b
    m = 2:  f(u) = W₂ ψ(h₁) + b₂,   h₁ = W₁ ψ(u) + b₁

α_l = α, α/√L or α/L (`residual.alpha`, `residual.depth_scaling` none | sqrt | linear); α = 0 is
SkipInit/ReZero at initialization (every block the identity). Without `residual.nf`, β_l = γ = 1.
With `residual.nf=true` (NF-ResNets, Brock, De & Smith 2021) β_l² is the analytically expected
variance of the stream, β_1² = input_var, β_{l+1}² = β_l² + α_l², and γ = 1/std φ(z), z ~ N(0, 1).
Weight layer k = (l-1)·m + j (j = 1..m, the layer of block l's branch) is drawn by the scheme with
torch's fans of an (n, n) matrix; biases by bias_std.

The ensemble. Every member of a chunk goes through each weight layer in one batched matmul
(`harness.sim.dense.affine`), and the backward pass is written out, with δ^l = ∂loss/∂x^l and a
unit Gaussian cotangent on x^L (δ^L = r):

    e = α_l δ^l                                   (∂loss/∂f_l)
    m = 1:  ε₀ = e
    m = 2:  ε₁ = e,  ε₀ = γφ'(h₁) ⊙ (ε₁ W₂)
    δ^{l-1} = δ^l + (γφ'(u) ⊙ (ε₀ W₁)) / β_l      (W₁ = W for m = 1)

and the per-example weight gradient of W_j is the outer product ε_{j-1} ⊗ (input of W_j), so its
pooled moment is mean_b[mean_i ε_bi² · mean_j a_bj²] (as for the MLP; never materialized).

Quantities (R, L) per block l = 1..L: forward = mean (x^l)², branch = mean f_l² (before α_l),
backward = mean (δ^l)², correlation = mean_{a≠b} cos(x^l_a, x^l_b) (batch ≥ 2); weight_grad is
(R, L·m), one per weight layer k, with the frame's `branch_layer` column j (`row_columns`).

Theory (docs/theory.md, "Residual networks"; Yang & Schoenholz 2017, Hayou et al. 2021, Brock et
al. 2021). In the mean-field limit each unit of the stream is Gaussian with variance q^l, and the
branch is uncorrelated with the stream (its last weight is zero-mean and independent of it), so
with σ_k² = fan_in·Var(W_k), ρ_k² = fan_out·Var(W_k), u = q^{l-1}/β_l²:

    m = 1:  B^l = σ_k² γ² V_φ(u) + σ_b²,              χ^l = ρ_k² γ² D_φ(u) / β_l²
    m = 2:  p^l = σ_1² γ² V_φ(u) + σ_b²,  B^l = σ_2² γ² V_φ(p^l) + σ_b²,
            χ^l = ρ_2² γ² D_φ(p^l) · ρ_1² γ² D_φ(u) / β_l²
    q^l = q^{l-1} + α_l² B^l,  q^0 = input_var                                 forward, branch B^l
    g^L = 1,  g^{l-1} = g^l (1 + α_l² χ^l)                                      backward
    weight_grad of W_m = α_l² g^l E[a_m²], of W_1 (m = 2) = α_l² g^l ρ_2² γ² D_φ(p^l) · γ² V_φ(u)
    (E[a_m²] the moment of W_m's input: γ² V_φ(p^l) for m = 2, γ² V_φ(u) for m = 1)

and the covariance of two inputs follows the same recursion with C_φ(q, c) in place of V_φ(q):
q_12^l = q_12^{l-1} + α_l² B_12^l, c^l = q_12^l / q^l. The backward line is the
gradient-independence approximation.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from harness.archs.base import Architecture, Tick
from harness.archs.mlp import _mean_sq_rows, mean_cosine, norm_theory
from harness.core import norms, schemes, validate
from harness.core.activations import Activation
from harness.core.capabilities import CRITICALITY, FINITE_WIDTH_BAND, INPUT_CORR, JACOBIAN, WS
from harness.core.quadrature import gaussian_expectation
from harness.core.validate import ConfigError
from harness.sim import dense, jacobian
from harness.sim.workspace import Workspace
from harness.theory.meanfield import mean_phi

if TYPE_CHECKING:  # type hints only: Spec asks the registry, so the registry must not import it
    from harness.core.spec import Spec

#: the config group of the residual keys (residual.KEY); Spec fields are residual_KEY
GROUP = "residual"
DEPTH_SCALINGS = ("none", "sqrt", "linear")
BRANCH_DEPTHS = (1, 2)
#: what a resmlp run measures (correlation needs batch ≥ 2)
QUANTITIES = ("forward", "branch", "backward", "weight_grad", "correlation")
#: Spec field -> nullable pandas dtype of its column
KEYS: Mapping[str, str] = {"residual_branch_depth": "Int64", "residual_alpha": "Float64",
                           "residual_depth_scaling": "string", "residual_nf": "boolean"}


# ---- config -------------------------------------------------------------------------------------
def config_keys(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """residual.branch_depth (default 1), residual.alpha (1.0), residual.depth_scaling (none),
    residual.nf (false), validated, as Spec fields residual_*; the stream's width is constant."""
    res = cfg.get(GROUP) or {}
    m = res.get("branch_depth")
    m = 1 if m is None else m
    if not validate.is_int(m) or m not in BRANCH_DEPTHS:
        raise ConfigError(f"residual.branch_depth must be 1 or 2 (weight layers per branch); got {m!r}")
    alpha = res.get("alpha")
    alpha = 1.0 if alpha is None else alpha
    if not validate.is_number(alpha) or alpha < 0:
        raise ConfigError(f"residual.alpha must be a finite number ≥ 0 (0: SkipInit); got {alpha!r}")
    scaling = res.get("depth_scaling")
    scaling = "none" if scaling is None else scaling
    if scaling not in DEPTH_SCALINGS:
        raise ConfigError(f"unknown residual.depth_scaling {scaling!r}; allowed: "
                          f"{', '.join(DEPTH_SCALINGS)}")
    nf = res.get("nf")
    nf = False if nf is None else nf
    if not isinstance(nf, bool):
        raise ConfigError(f"residual.nf must be true or false; got {nf!r}")
    widths = cfg.get("widths")
    if widths is not None and (not isinstance(widths, (list, tuple)) or len(set(widths)) > 1):
        raise ConfigError(f"a residual stream has one width: set width=n, not widths (got "
                          f"widths={widths!r})")
    return dict(residual_branch_depth=int(m), residual_alpha=float(alpha),
                residual_depth_scaling=str(scaling), residual_nf=nf)


def nf_limit(cfg: Mapping[str, Any]) -> str:
    """Why a norm cannot go with this config: residual.nf=true ("" otherwise)."""
    if (cfg.get(GROUP) or {}).get("nf"):
        return "residual.nf=true makes normalizer-free blocks; set residual.nf=false or norm=none"
    return ""


def alphas(spec: Spec) -> np.ndarray:
    """α_l, l = 1..L: α, α/√L or α/L (residual.depth_scaling)."""
    L = spec.depth
    div = {"none": 1.0, "sqrt": math.sqrt(L), "linear": float(L)}[spec.residual_depth_scaling]  # type: ignore[index]
    return np.full(L, spec.residual_alpha / div)  # type: ignore[operator]


def betas2(spec: Spec) -> np.ndarray:
    """β_l², l = 1..L: β_1² = input_var, β_{l+1}² = β_l² + α_l² with residual.nf; else 1."""
    if not spec.residual_nf:
        return np.ones(spec.depth)
    a2 = alphas(spec) ** 2
    return spec.input_var + np.concatenate([[0.0], np.cumsum(a2[:-1])])


def nf_gamma(act: Activation) -> float:
    """γ = 1/std φ(z), z ~ N(0, 1) (Brock et al. 2021's activation gain), by quadrature."""
    mean = float(gaussian_expectation(act.phi, 1.0))
    return float(1.0 / math.sqrt(float(act.V(1.0)) - mean**2))


def gamma(spec: Spec) -> float:
    """γ of the run: `nf_gamma` with residual.nf, else 1."""
    return nf_gamma(spec.activation) if spec.residual_nf else 1.0


# ---- the ensemble --------------------------------------------------------------------------------
def propagate(
    weights: Sequence[torch.Tensor],
    biases: Sequence[torch.Tensor] | None,
    x0: torch.Tensor,
    cotangent: torch.Tensor,
    act: Activation,
    m: int,
    alpha: Sequence[float],
    beta: Sequence[float] | None = None,
    gain: float = 1.0,
    tick: Tick | None = None,
) -> dict[str, torch.Tensor]:
    """Forward and written-out backward through a stacked residual ensemble (module doc).

    Args:
        weights: L·m tensors (R, n, n), block l's branch layers at (l-1)·m .. l·m-1.
        biases: L·m tensors (R, n), or None.  x0: inputs (R, B, n).  cotangent: δ^L, (R, B, n).
        act: φ.  m: branch depth.  alpha: α_l per block.  beta: β_l per block (None: 1).
        gain: γ, the activations are γ·φ.

    Returns (R, L) tensors forward = mean (x^l)², branch = mean f_l², backward = mean (δ^l)²,
    correlation = mean_{a≠b} cos(x^l_a, x^l_b) (B ≥ 2), and weight_grad (R, L·m) =
    mean_b[mean_i ε_bi² · mean_j a_bj²] per weight layer.
    """
    L = len(weights) // m
    R, B, _ = x0.shape
    new = x0.new_empty
    stat = dict(forward=new(R, L), branch=new(R, L), backward=new(R, L), weight_grad=new(R, L * m))
    if B >= 2:
        stat["correlation"] = new(R, L)
    # per block: the pre-activations of its branch layers (u, then h₁) and the mean squares of
    # the weight layers' inputs (R, B)
    pre: list[list[torch.Tensor]] = []
    in_sq: list[list[torch.Tensor]] = []
    x = x0
    for l in range(L):
        u = x if beta is None or beta[l] == 1.0 else x / beta[l]
        zs, sq = [], []
        z = u
        for j in range(m):
            k = l * m + j
            a = act.phi(z)
            if gain != 1.0:
                a = a * gain
            zs.append(z)
            sq.append(_mean_sq_rows(a))
            z = dense.affine(a, weights[k], None if biases is None else biases[k])
        pre.append(zs)
        in_sq.append(sq)
        stat["branch"][:, l] = _mean_sq_rows(z).mean(-1)
        x = x + alpha[l] * z if alpha[l] != 1.0 else x + z
        sq_norm = torch.linalg.vector_norm(x, dim=-1).square()
        stat["forward"][:, l] = sq_norm.mean(-1) / x.shape[-1]
        if "correlation" in stat:
            stat["correlation"][:, l] = mean_cosine(x, sq_norm)
        if tick is not None:
            tick()
    delta = cotangent
    for l in range(L - 1, -1, -1):
        stat["backward"][:, l] = _mean_sq_rows(delta).mean(-1)
        eps = delta * alpha[l]
        for j in range(m - 1, -1, -1):
            k = l * m + j
            stat["weight_grad"][:, k] = (_mean_sq_rows(eps) * in_sq[l][j]).mean(-1)
            eps = torch.bmm(eps, weights[k]) * act.dphi(pre[l][j])  # ε W ⊙ φ'(z)
            if gain != 1.0:
                eps = eps * gain
        delta = delta + (eps if beta is None or beta[l] == 1.0 else eps / beta[l])
        pre[l] = []
        if tick is not None:
            tick()
    return stat


def propagate_norm(
    weights: Sequence[torch.Tensor],
    biases: Sequence[torch.Tensor] | None,
    x0: torch.Tensor,
    cotangent: torch.Tensor,
    act: Activation,
    m: int,
    alpha: Sequence[float],
    norm: norms.Norm,
    position: str,
    eps: float,
    tick: Tick | None = None,
) -> dict[str, torch.Tensor]:
    """`propagate` with a normalization layer N (`harness.core.norms`, dims `Norm.dims("dense")`):

        pre:   x^l = x^{l-1} + α_l f(x^{l-1}),  f(u) = W_m φ(N(… W_1 φ(N(u)) + b_1 …)) + b_m
               (a norm before every φ of the branch: BN–φ–W–BN–φ–W, pre-LN transformer style)
        post:  x^l = N(s^l),  s^l = x^{l-1} + α_l f(x^{l-1}),  f the plain branch W_m φ(… φ(u))

    with the backward written out through N's statistics (`Norm.backward`): pre ε_{j-1} =
    N'ᵀ(φ'(N(z_j)) ⊙ ε_j W_j), δ^{l-1} = δ^l + ε₀; post ∂loss/∂s^l = N'ᵀ(δ^l), then the plain
    block's step. Returns `propagate`'s quantities (forward = mean (x^l)², the stream) and
    normed (R, L) = mean N(·)² of the block's first norm (pre: N(x^{l-1}); post: x^l itself).
    """
    L = len(weights) // m
    R, B, _ = x0.shape
    dims = norm.dims("dense")
    new = x0.new_empty
    stat = dict(forward=new(R, L), branch=new(R, L), normed=new(R, L), backward=new(R, L),
                weight_grad=new(R, L * m))
    if B >= 2:
        stat["correlation"] = new(R, L)
    pre_ = position == "pre"
    saved: list[list[tuple[torch.Tensor, ...]]] = []  # per block and branch layer: (φ's input, s)
    in_sq: list[list[torch.Tensor]] = []
    out_norm: list[tuple[torch.Tensor, torch.Tensor]] = []  # post: (x^l = N(s^l), its scale)
    x = x0
    for l in range(L):
        zs, sq = [], []
        z = x
        for j in range(m):
            k = l * m + j
            if pre_:
                y, sc = norm.forward(z, dims, eps)
                if j == 0:
                    stat["normed"][:, l] = _mean_sq_rows(y).mean(-1)
                zs.append((y, sc))
                a = act.phi(y)
            else:
                zs.append((z,))
                a = act.phi(z)
            sq.append(_mean_sq_rows(a))
            z = dense.affine(a, weights[k], None if biases is None else biases[k])
        saved.append(zs)
        in_sq.append(sq)
        stat["branch"][:, l] = _mean_sq_rows(z).mean(-1)
        x = x + alpha[l] * z
        if not pre_:
            x, sc = norm.forward(x, dims, eps)
            out_norm.append((x, sc))
            stat["normed"][:, l] = _mean_sq_rows(x).mean(-1)
        sq_norm = torch.linalg.vector_norm(x, dim=-1).square()
        stat["forward"][:, l] = sq_norm.mean(-1) / x.shape[-1]
        if "correlation" in stat:
            stat["correlation"][:, l] = mean_cosine(x, sq_norm)
        if tick is not None:
            tick()
    delta = cotangent
    for l in range(L - 1, -1, -1):
        stat["backward"][:, l] = _mean_sq_rows(delta).mean(-1)
        if not pre_:  # ∂loss/∂s^l
            y, sc = out_norm[l]
            delta = norm.backward(delta, y, sc, dims)
        e = delta * alpha[l]
        for j in range(m - 1, -1, -1):
            k = l * m + j
            stat["weight_grad"][:, k] = (_mean_sq_rows(e) * in_sq[l][j]).mean(-1)
            e = torch.bmm(e, weights[k]) * act.dphi(saved[l][j][0])
            if pre_:
                e = norm.backward(e, saved[l][j][0], saved[l][j][1], dims)
        delta = delta + e
        saved[l] = []
        if tick is not None:
            tick()
    return stat


def bytes_per_replicate(spec: Spec) -> int:
    """Peak bytes one replicate needs: its L·m weights, the L·m saved pre-activations and a few
    working activations."""
    item = torch.empty((), dtype=spec.torch_dtype).element_size()
    n, m = spec.widths[0], spec.residual_branch_depth
    weights = spec.depth * m * n * n  # type: ignore[operator]
    saved = spec.batch * n * spec.depth * m  # type: ignore[operator]
    if not spec.normalization.identity:  # propagate_norm: the post-norm outputs and more working
        saved += spec.batch * n * spec.depth  # type: ignore[operator]
        saved += 4 * spec.batch * n
    return item * (weights + saved + 6 * spec.batch * n + 4 * spec.depth * spec.batch)


def propagate_jacobian(
    weights: Sequence[torch.Tensor],
    biases: Sequence[torch.Tensor] | None,
    x0: torch.Tensor,
    act: Activation,
    m: int,
    alpha: Sequence[float],
    beta: Sequence[float] | None = None,
    gain: float = 1.0,
    spectrum: bool = False,
) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
    """The exact Jacobians J^l = ∂x^l/∂x^0 of every member at its inputs x0 (R, k, n), with the
    identity path: J^0 = I and, per block, with ψ = γφ and D_z = diag(γφ'(z)),

        m = 1:  J^l = J^{l-1} + (α_l/β_l) W D_u J^{l-1}
        m = 2:  J^l = J^{l-1} + (α_l/β_l) W₂ D_{h₁} W₁ D_u J^{l-1}

    (u = x^{l-1}/β_l, h₁ = W₁ψ(u) + b₁); the moments of `harness.sim.jacobian.moments` per block,
    averaged over the k inputs, as `harness.sim.jacobian.propagate` returns them (R, L), and with
    `spectrum` the eigenvalues of J^Lᵀ J^L (R, k, n) in float64, ascending."""
    R, k, n = x0.shape
    L = len(weights) // m
    out = {q: x0.new_empty(R, L) for q in jacobian.QUANTITIES}
    J = torch.eye(n, dtype=x0.dtype, device=x0.device).expand(R, k, n, n).permute(0, 2, 1, 3)
    J = J.reshape(R, n, k * n)  # (R, n, k·n): J of input i at columns i·n … (i+1)·n − 1
    eig = None
    x = x0
    for l in range(L):
        b_l = 1.0 if beta is None else beta[l]
        z = x / b_l if b_l != 1.0 else x
        A = J
        for j in range(m):
            w = weights[l * m + j]
            d = act.dphi(z) * gain  # (R, k, n)
            A = torch.bmm(w, (A.view(R, n, k, n) * d.transpose(1, 2).unsqueeze(-1)).view(R, n, k * n))
            a = act.phi(z) * gain
            z = dense.affine(a, w, None if biases is None else biases[l * m + j])
        J = J + (alpha[l] / b_l) * A
        x = x + alpha[l] * z
        per_input = J.view(R, n, k, n).transpose(1, 2)  # (R, k, n, n)
        m1, m2 = jacobian.moments(per_input)
        out["jacobian_mean"][:, l] = m1.mean(1)
        out["jacobian_var"][:, l] = (m2 - m1.square()).mean(1)
        out["jacobian_rel_var"][:, l] = (m2 / m1.square() - 1).mean(1)
        if spectrum and l == L - 1:
            eig = torch.linalg.svdvals(per_input.double()).flip(-1).square().to(x0.dtype)
    return out, eig


def predict_jacobian(spec: Spec, q: np.ndarray, chi: np.ndarray, pre: np.ndarray) -> dict[str, np.ndarray]:
    """Mean field / free probability for J^l = ∂x^l/∂x^0 (docs/theory.md, "Residual networks"):
    with x_l = α_l² χ^l (χ^l the block's branch factor of the backward recursion) and, per block,
    r_l = Σ_j (−s₁ + μ₂(z_j)/μ₁(z_j)² − 1) over its branch layers' pre-activation moments z_j,

        jacobian_mean     m₁^l = ∏_{k≤l} (1 + x_k)
        jacobian_rel_var  v^l  = Σ_{k≤l} (2 x_k + r_k x_k²) / (1 + x_k)²
        jacobian_var           = (m₁^l)² v^l

    (one block J_l = I + α_l A_l: τ(J_lᵀJ_l) = 1 + x, τ((J_lᵀJ_l)²) = 1 + 4x + (1 + r) x², the
    odd moments of A and τ(A²) vanishing at large width; free blocks' relative variances add).
    The sum is given where it holds: every block for a φ with constant φ' (linear), else up to
    the first block that is not the identity (NaN after it: the branches' φ' correlate with the
    Jacobian so far, and the measured spread grows faster). `pre` (L, m): z_j per block; q unused
    but for the shapes."""
    act = spec.activation
    s1 = schemes.scheme(spec.scheme).spectral_s1
    x = alphas(spec) ** 2 * chi
    with np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"):
        flat = pre.reshape(-1)
        ratio = (jacobian.mu(act, flat, 2) / jacobian.mu(act, flat, 1) ** 2).reshape(pre.shape)
        r = (-s1 + ratio - 1.0).sum(1)
        block = np.where(x == 0.0, 0.0, (2 * x + r * x**2) / (1 + x) ** 2)
        mean = np.cumprod(1 + x)
        rel = np.cumsum(block)
    # the sum needs the blocks free of each other: exact when φ' is constant (μ₂ = μ₁², the
    # blocks I + αW_l), else only up to the first block that is not the identity (measured: a
    # nonlinear φ's D_l correlates with J^{l-1} and the spread grows faster than the sum)
    constant_slope = bool(np.all(np.abs(ratio[np.isfinite(ratio)] - 1.0) < 1e-9))
    if not constant_slope:
        rel = np.where(np.cumsum(x > 0) <= 1, rel, np.nan)
    return {"jacobian_mean": mean, "jacobian_var": mean**2 * rel, "jacobian_rel_var": rel}


def norm_modules(spec: Spec, shape: tuple[int, ...], *, device: str | torch.device,
                 dtype: torch.dtype) -> list[nn.Module]:
    """A block's torch normalization modules (none for norm=none): pre, one per branch layer;
    post, one for the sum."""
    entry = spec.normalization
    if entry.identity:
        return []
    count = spec.residual_branch_depth if spec.norm_position == "pre" else 1
    return [entry.module(shape, spec.conv_dim, spec.norm_eps, device=device, dtype=dtype)  # type: ignore[arg-type]
            for _ in range(count)]  # type: ignore[arg-type]


# ---- theory --------------------------------------------------------------------------------------
def predict(spec: Spec, weight_variances: Sequence[float] | None = None) -> dict[str, np.ndarray]:
    """The mean-field recursions of the module doc: forward, branch, backward, correlation per
    block (L,) and weight_grad per weight layer (L·m,), float64."""
    act = spec.activation
    L, m = spec.depth, spec.residual_branch_depth
    var_w = np.array(spec.weight_variances() if weight_variances is None else weight_variances,
                     dtype=np.float64)
    shapes = spec.weight_shapes
    s2 = np.array([s[1] for s in shapes], dtype=np.float64) * var_w  # fan_in·Var(W)
    r2 = np.array([s[0] for s in shapes], dtype=np.float64) * var_w  # fan_out·Var(W)
    b2 = spec.bias_std**2
    a2 = alphas(spec) ** 2
    be2 = betas2(spec)
    g2 = gamma(spec) ** 2
    q, q12 = float(spec.input_var), float(spec.input_var * spec.input_corr)
    fwd, br, cor, chi = (np.full(L, np.nan) for _ in range(4))
    wg_in = np.full(L * m, np.nan)  # E[(input of W_k)²]
    wg_back = np.ones(L * m)  # E[ε_k²] / (α_l² g^l)
    pre = np.full((L, m), np.nan)  # the branch layers' pre-activation moments z_j (u, p^l)

    def centre(qq: float) -> float:  # ws=true: the rows sum to 0, removing (γ M_φ)²
        return g2 * float(mean_phi(act, qq)) ** 2 if spec.ws else 0.0

    def cmap(qq: float, qq12: float) -> float:
        if not (np.isfinite(qq) and qq > 0 and np.isfinite(qq12)):
            return math.nan
        return g2 * float(act.C(qq, min(1.0, max(-1.0, qq12 / qq)))) - centre(qq)

    with np.errstate(over="ignore", invalid="ignore", under="ignore", divide="ignore"):
        for l in range(L):
            z, z12 = q / be2[l], q12 / be2[l]
            d_chain = 1.0 / be2[l]
            ds = []
            for j in range(m):
                k = l * m + j
                pre[l, j] = z
                wg_in[k] = g2 * float(act.V(z))
                ds.append(g2 * float(act.D(z)))
                z, z12 = s2[k] * (wg_in[k] - centre(z)) + b2, s2[k] * cmap(z, z12) + b2
            # z is the branch output's moment B^l; chain rule through the branch
            for j in range(m - 1, 0, -1):  # ε_{j-1} = γφ'(·) ⊙ ε_j W_j
                k = l * m + j
                wg_back[k - 1] = wg_back[k] * r2[k] * ds[j]
            chi[l] = wg_back[l * m] * r2[l * m] * ds[0] * d_chain
            br[l] = z
            q, q12 = q + a2[l] * z, q12 + a2[l] * z12
            fwd[l] = q
            cor[l] = q12 / q if np.isfinite(q) and q > 0 else math.nan
        g = np.ones(L)
        for l in range(L - 1, 0, -1):
            g[l - 1] = g[l] * (1.0 + a2[l] * chi[l])
        wg = np.repeat(a2 * g, m) * wg_back * wg_in
    out = {"forward": fwd, "branch": br, "backward": g, "weight_grad": wg,
           "correlation": np.clip(cor, -1.0, 1.0)}
    return {**predict_jacobian(spec, fwd, chi, pre), **out} if spec.jacobian else out


# ---- the plain torch block ---------------------------------------------------------------------
class ResidualBlock(nn.Module):
    """x + α·f(x/β) with f the pre-activation branch of `layers` (module doc), ψ = γ·φ: one
    nn.Module per block of the reference networks (`harness.sim.reference`). With `norms`
    (torch's normalization modules): position pre, one before every φ of the branch
    (x + α W_m ψ(N_m(… W_1 ψ(N_1(x))))); post, one on the sum (N(x + α f(x)))."""

    def __init__(self, layers: Sequence[nn.Module], act: Activation, alpha: float, beta: float = 1.0,
                 gain: float = 1.0, norms: Sequence[nn.Module] = (), position: str = "pre"):
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.norms = nn.ModuleList(norms)
        self.act, self.alpha, self.beta, self.gain = act, alpha, beta, gain
        self.position = position

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x + α f(x/β), f = W_m ψ(… W_1 ψ(x/β) + b_1 …) + b_m (with the norms, class doc)."""
        pre = len(self.norms) > 0 and self.position == "pre"
        z = x / self.beta
        for j, layer in enumerate(self.layers):
            z = layer(self.gain * self.act.phi(self.norms[j](z) if pre else z))
        out = x + self.alpha * z
        if len(self.norms) > 0 and self.position == "post":
            out = self.norms[0](out)
        return out


#: the one-line reasons a residual run prints for the annotations it does not define
REASONS: Mapping[str, str] = {
    CRITICALITY: "a residual stream has no fixed point to linearize around: q^l = q^{l-1} + α_l²B^l "
                 "grows and the gradient by 1 + α_l²χ^l per block (the backward theory); the "
                 "residual analogue of criticality is Σ_l α_l² bounded in depth "
                 "(residual.depth_scaling=sqrt or linear)",
    FINITE_WIDTH_BAND: "not derived for residual streams: a block's factor ‖x^l‖²/‖x^{l-1}‖² "
                       "depends on the stream's active fraction, shared by consecutive blocks, "
                       "so the factors are not independent as in Hanin & Nica's product",
}


#: criticality with a post-norm: the stream is reset every block, it does not grow
POST_NORM_CRITICALITY = ("post-norm resets the stream to unit variance every block (x^l = N(x^{l-1} + "
                         "α_l f)): no fixed point of an unnormalized map to linearize; the backward "
                         "theory gives the gradient's growth per block")


def limits(spec: Spec, capability: str) -> str:
    """Why criticality and the finite-width band are not defined for a residual stream
    (`REASONS`, docs/theory.md "Residual networks"); with a norm, the band is the norm entry's
    reason (Hanin & Nica's band is for unnormalized stacks) and post-norm's criticality
    `POST_NORM_CRITICALITY` (pre-norm streams still grow: `REASONS`)."""
    entry = spec.normalization
    if not entry.identity:
        if capability == FINITE_WIDTH_BAND and entry.why_not(capability):
            return f"not defined with norm={spec.norm}: {entry.why_not(capability)}"
        if capability == CRITICALITY and spec.norm_position == "post":
            return f"not defined with norm={spec.norm}: {POST_NORM_CRITICALITY}"
    return REASONS.get(capability, "")


class ResMLP(Architecture):
    """arch=resmlp (module doc)."""

    name = "resmlp"
    label = "residual MLPs"
    capabilities = frozenset({INPUT_CORR, WS, JACOBIAN})
    keys: Mapping[str, str] = KEYS
    groups = (GROUP,)
    all_quantities = (*QUANTITIES[:2], "normed", *QUANTITIES[2:], *jacobian.QUANTITIES)
    memory_keys = ("depth", "width (or widths)", "batch", "jacobian")
    weight_grad_is_outer_product = True

    def config(self, cfg: Mapping[str, Any]) -> dict[str, Any]:
        """`config_keys`."""
        return config_keys(cfg)

    def limits(self, spec: Spec, capability: str) -> str:
        """`limits` (module function)."""
        return limits(spec, capability)

    def describe(self, spec: Spec) -> str:
        """" residual, m=2 layers per branch, α=1 (none)"."""
        nf = ", NF" if spec.residual_nf else ""
        return (f" residual, m={spec.residual_branch_depth} per branch, α={spec.residual_alpha:g} "
                f"({spec.residual_depth_scaling}){nf}")

    def title(self, row: Mapping[str, Any]) -> str:
        """" · m=2, α=1 (none)"."""
        return (f" · m={row['residual_branch_depth']}, α={row['residual_alpha']:g} "
                f"({row['residual_depth_scaling']})")

    def weight_shapes(self, spec: Spec) -> list[tuple[int, ...]]:
        """(n, n) per weight layer, L·m of them."""
        n = spec.widths[0]
        return [(n, n)] * (spec.depth * spec.residual_branch_depth)  # type: ignore[operator]

    def branch_depth(self, spec: Spec) -> int | None:
        """residual.branch_depth."""
        return spec.residual_branch_depth

    def layer_scales(self, spec: Spec) -> list[float] | None:
        """The scheme's factor per branch layer (`Scheme.branch_scale`: fixup's), block by block."""
        entry = schemes.scheme(spec.scheme)
        m, L = spec.residual_branch_depth, spec.depth
        scales = [entry.branch_scale(j, m, L) for _ in range(L) for j in range(1, m + 1)]  # type: ignore[arg-type]
        return None if all(s == 1.0 for s in scales) else scales

    def quantities(self, spec: Spec) -> tuple[str, ...]:
        """forward, branch, (normed with a norm), backward, weight_grad, correlation (batch ≥ 2),
        and jacobian_* with jacobian=k > 0 (no norm: a norm refuses jacobian=k)."""
        base = QUANTITIES if spec.batch >= 2 else QUANTITIES[:-1]
        if not spec.normalization.identity:
            base = (*base[:2], "normed", *base[2:])
        return (*base, *jacobian.QUANTITIES) if spec.jacobian else base

    def row_columns(self, spec: Spec, quantity: str, n: int) -> dict[str, np.ndarray]:
        """weight_grad: `branch_layer` j = 1..m of weight layer k = 1..L·m."""
        if quantity != "weight_grad":
            return {}
        return {"branch_layer": np.arange(n) % spec.residual_branch_depth + 1}  # type: ignore[operator]

    def propagate(
        self,
        spec: Spec,
        weights: Sequence[torch.Tensor],
        biases: Sequence[torch.Tensor] | None,
        x0: torch.Tensor,
        cotangent: torch.Tensor,
        *,
        tick: Tick | None = None,
        workspace: Workspace | None = None,
    ) -> dict[str, torch.Tensor]:
        """`propagate` (module function) with the run's α_l, β_l and γ; with a norm
        `propagate_norm`."""
        if not spec.normalization.identity:
            return propagate_norm(weights, biases, x0, cotangent, spec.activation,
                                  spec.residual_branch_depth, alphas(spec).tolist(),  # type: ignore[arg-type]
                                  spec.normalization, spec.norm_position, spec.norm_eps, tick)  # type: ignore[arg-type]
        beta = np.sqrt(betas2(spec)).tolist() if spec.residual_nf else None
        return propagate(weights, biases, x0, cotangent, spec.activation,
                         spec.residual_branch_depth, alphas(spec).tolist(), beta,  # type: ignore[arg-type]
                         gamma(spec), tick)

    def bytes_per_replicate(self, spec: Spec) -> int:
        """`bytes_per_replicate` (module function), plus with jacobian=k its Jacobians (J, the
        branch's product and a Gram matrix, k·n² each, twice for m = 2)."""
        item = torch.empty((), dtype=spec.torch_dtype).element_size()
        n = spec.widths[0]
        jac = item * spec.jacobian * (4 * n * n + 6 * n) if spec.jacobian else 0
        return bytes_per_replicate(spec) + jac

    def jacobian(
        self,
        spec: Spec,
        weights: Sequence[torch.Tensor],
        biases: Sequence[torch.Tensor] | None,
        x0: torch.Tensor,
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """`propagate_jacobian` with the run's α_l, β_l, γ and the last block's spectrum."""
        beta = np.sqrt(betas2(spec)).tolist() if spec.residual_nf else None
        out, eig = propagate_jacobian(weights, biases, x0, spec.activation,
                                      spec.residual_branch_depth, alphas(spec).tolist(),  # type: ignore[arg-type]
                                      beta, gamma(spec), spectrum=True)
        return out, eig  # type: ignore[return-value]

    def predict(
        self, spec: Spec, weight_variances: Sequence[float] | None = None
    ) -> dict[str, np.ndarray]:
        """`predict` (module function); with a norm the norm entry's theory hook."""
        if not spec.normalization.identity:
            return norm_theory(spec, "resmlp", weight_variances)[0]
        return predict(spec, weight_variances)

    def theory_note(self, spec: Spec) -> str:
        """The norm entry's reason where its theory is missing ("" otherwise)."""
        return "" if spec.normalization.identity else norm_theory(spec, "resmlp")[1]

    def norm_limits(self, cfg: Mapping[str, Any]) -> str:
        """residual.nf (normalizer-free blocks) is the alternative to a norm, not combined."""
        return nf_limit(cfg)

    def layer(
        self, spec: Spec, n_in: int, n_out: int, *, bias: bool, device: str | torch.device,
        dtype: torch.dtype,
    ) -> nn.Module:
        """nn.Linear(n_in, n_out): one weight layer of a branch."""
        return nn.Linear(n_in, n_out, bias=bias, device=device, dtype=dtype)

    def block(
        self, spec: Spec, l: int, *, bias: bool, device: str | torch.device, dtype: torch.dtype
    ) -> nn.Module:
        """Block l (0-based) as a `ResidualBlock` of m nn.Linear(n, n)."""
        n = spec.widths[0]
        layers = [self.layer(spec, n, n, bias=bias, device=device, dtype=dtype)
                  for _ in range(spec.residual_branch_depth)]  # type: ignore[arg-type]
        beta = math.sqrt(betas2(spec)[l])
        return ResidualBlock(layers, spec.activation, float(alphas(spec)[l]), beta, gamma(spec),
                             norm_modules(spec, (n,), device=device, dtype=dtype),
                             spec.norm_position or "pre")


ARCH = ResMLP()
