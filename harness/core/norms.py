"""The normalization registry: norm=NAME -> its entry, a `Norm`.

Every normalization layer lives in ONE entry here, which holds everything about it: its torch
semantics as a batched apply (forward and the written-out backward through its statistics), the
dims it reduces over per architecture kind, its config checks, which capabilities it leaves
undefined (with the reason a run prints), and its mean-field theory hook. The architectures ask
the entry of `spec.norm` (`get`); none of them branches on a norm's name.

Torch semantics at initialization (γ = 1, β = 0), per network of the ensemble:

    batchnorm  nn.BatchNorm1d/2d, training mode: y = (h − μ)/√(σ² + ε) with μ, σ² (biased) over
               the network's `batch` inputs, per feature (dense) or per channel over the batch
               and the positions (conv)
    layernorm  nn.LayerNorm over a sample's features (conv: over its channels and positions,
               like GroupNorm with one group): y = (h − μ)/√(σ² + ε), μ, σ² (biased) per sample
    rmsnorm    nn.RMSNorm over the same dims: y = h/√(mean h² + ε)

The backward pass through the statistics, as autograd does: with s = 1/√(σ² + ε) (or 1/√(mean
h² + ε)), g = ∂loss/∂y and means over the reduced dims,

    ∂loss/∂h = s (g − mean g − y · mean(g y))          (centring norms: batchnorm, layernorm)
    ∂loss/∂h = s (g − y · mean(g y))                   (rmsnorm)

exact for any ε (the ε only enters through s).

Layouts: a dense stack's activations are (R, B, n) (R networks, B inputs, n features), a conv
stack's (B, R, C, P) (viewed from (B, R·C, *S), P positions); `Norm.dims(kind)` gives the dims
the statistics are taken over in each.

ε: `norm.eps` null means torch's default: 1e-5 for nn.BatchNorm and nn.LayerNorm; nn.RMSNorm's
eps=None, which torch resolves to torch.finfo(dtype).eps of the input (1.19e-7 in float32,
2.2e-16 in float64). `resolve_eps` gives the number a run uses (stored in the Spec and the
`norm_eps` column).

Theory hooks (docs/theory.md, "Normalization"). Per-sample norms (layernorm, rmsnorm) at
infinite width on a zero-mean Gaussian layer: the per-sample mean → 0 and the per-sample second
moment → q, so N(h) ≈ h/√(q + ε) (the mean-field scale reset); `sample_stage` gives one norm+φ
stage's moments (pre: x = φ(N(h)); post: x = N(φ(h))) and its backward factor (the O(1/n)
projection and fluctuation terms dropped). BatchNorm couples a
network's B inputs (a recursion on the B×B Gram matrix, `harness.theory.batchnorm`); its hook
`batchnorm_theory` covers dense and residual stacks and gives conv stacks NaN and the reason.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from harness.core.activations import Activation
from harness.core.quadrature import gaussian_expectation
from harness.core.validate import ConfigError, is_number
from harness.theory import batchnorm as bn_theory

#: the config group (norm=NAME, norm.position, norm.eps); Spec fields norm, norm_position, norm_eps
GROUP = "norm"
POSITIONS = ("pre", "post")
#: Spec field -> nullable pandas dtype of its column (every run carries them)
COLUMNS: Mapping[str, str] = {"norm": "string", "norm_position": "string", "norm_eps": "Float64"}
#: architecture kinds the statistics' dims are given for
KINDS = ("dense", "conv")


# ---- the network-level theory hook --------------------------------------------------------------
@dataclass(frozen=True)
class Stack:
    """A stack's numbers for a norm's theory hook (plain numbers, no Spec).

    kind: "mlp" or "resmlp"; sigma_w2 / rho2: fan_in·Var(W) / fan_out·Var(W) per weight layer;
    widths: the normalized width n of each weight layer's output (for the O(1/n) terms; a conv's
    C·P); alphas: α_l per block (resmlp); m: weight layers per branch; ws: rows centred."""

    kind: str
    act: Activation
    sigma_w2: np.ndarray
    rho2: np.ndarray
    sigma_b2: float
    q0: float
    c0: float
    batch: int
    depth: int
    position: str
    eps: float
    widths: np.ndarray
    alphas: np.ndarray = field(default_factory=lambda: np.empty(0))
    m: int = 1
    ws: bool = False
    #: positions P a conv's statistics pool over (1 for dense stacks)
    positions: int = 1


#: quantity -> predictions per layer, and "" or the reason the theory is missing
Theory = tuple[dict[str, np.ndarray], str]


def _lengths(stack: Stack) -> dict[str, int]:
    """quantity -> its number of layers for the stack's kind (mlp: activation and normed L−1)."""
    L, m = stack.depth, stack.m
    if stack.kind == "resmlp":
        return {"forward": L, "branch": L, "normed": L, "backward": L, "weight_grad": L * m,
                "correlation": L}
    return {"forward": L, "activation": L - 1, "normed": L - 1, "backward": L, "weight_grad": L,
            "correlation": L}


#: why a conv stack with BatchNorm has no theory (its statistics pool a channel over B·P entries)
BN_CONV_REASON = ("norm=batchnorm theory for conv stacks: not derived (a channel's statistics pool the "
                  "batch and the positions, whose B·P entries are correlated by the convolutions: "
                  "no permutation-symmetric B×B Gram recursion)")


def batchnorm_theory(stack: Stack) -> Theory:
    """BatchNorm's mean-field theory at a finite batch B: mlp, the Gram recursion of
    `harness.theory.batchnorm.predict` (forward, correlation, normed, activation, backward,
    weight_grad; ε kept in normed); resmlp, `harness.theory.batchnorm.predict_residual` (forward,
    branch, normed, backward, weight_grad, correlation; pre and post, m = 1, 2); conv stacks
    (positions > 1): NaN per quantity and `BN_CONV_REASON`.

    The hook gets the stack's plain numbers (`Stack`: kind "mlp" | "resmlp", act, sigma_w2 /
    rho2 per weight layer, sigma_b2, q0, c0, batch B, depth, position, eps, widths, alphas, m,
    ws, positions) and returns quantity -> array of the lengths `_lengths` gives (mlp: forward,
    backward, weight_grad, correlation L; activation, normed L−1; resmlp: forward, branch,
    normed, backward, correlation L; weight_grad L·m) and "" (or the reason for what stays NaN)."""
    if stack.positions > 1:
        return {k: np.full(n, np.nan) for k, n in _lengths(stack).items()}, BN_CONV_REASON
    if stack.kind == "mlp":
        return bn_theory.predict(stack.act, stack.depth, stack.batch, stack.sigma_w2, stack.sigma_b2,
                                 stack.q0, stack.c0, stack.position, stack.rho2, stack.ws,
                                 stack.eps), ""
    return bn_theory.predict_residual(stack.act, stack.depth, stack.batch, stack.sigma_w2,
                                      stack.alphas, stack.m, stack.sigma_b2, stack.q0, stack.c0,
                                      stack.position, stack.rho2, stack.ws, stack.eps), ""


# ---- per-sample norms: the stage maps ------------------------------------------------------------
@dataclass(frozen=True)
class Stage:
    """One norm+φ stage's mean-field moments: x2 = E[x²] and x12 = E[x_a x_b] of its output x
    (the next weight layer's input), xm = E[x] per unit, a2 = E[φ(·)²] (the activation's output),
    normed = E[N(·)²], back = E[(∂loss/∂stage input)²] / E[(∂loss/∂x)²]."""

    x2: float
    x12: float
    xm: float
    a2: float
    normed: float
    back: float


def _e(f: Callable[[torch.Tensor], torch.Tensor], q: float) -> float:
    return float(gaussian_expectation(f, q))


def sample_stage(act: Activation, q: float, q12: float, position: str, eps: float,
                 centre: bool) -> Stage:
    """The stage maps of a per-sample norm N (layernorm: centre=True; rmsnorm: False) on a
    layer h with E[h²] = q, E[h_a h_b] = q12, at infinite width:

        pre  (x = φ(N(h))):  N(h) ~ N(0, u), u = q/(q+ε), correlation c = q12/q
             x2 = a2 = V_φ(u), x12 = C_φ(u, c), normed = u,  back = D_φ(u)/(q+ε)
        post (x = N(φ(h))):  M = E φ(h), S = V_φ(q) − [centre] M²
             x2 = normed = S/(S+ε), x12 = (C_φ(q, c) − [centre] M²)/(S+ε), a2 = V_φ(q),
             back = D_φ(q)/(S+ε)

    Dropped, O(1/n) each (docs/theory.md): the projection terms of ∂loss/∂h = s (g − mean g −
    y mean(g y)), whose second moments are E[g²]/n and E[g² y²]/n under gradient independence,
    and the fluctuation of the statistics, E[1/σ̂²] − 1/q; for a Gaussian input they nearly
    cancel (LayerNorm: (n−2)/(n−3) in all, RMSNorm: (n−1)/(n−2)).
    """
    c_ind = 1.0 if centre else 0.0
    if not (np.isfinite(q) and q > 0):
        nan = math.nan
        return Stage(nan, nan, nan, nan, nan, nan)
    c = min(1.0, max(-1.0, q12 / q)) if np.isfinite(q12) else math.nan
    if position == "pre":
        u = q / (q + eps)
        d = float(act.D(u))
        x2 = float(act.V(u))
        return Stage(x2=x2, x12=float(act.C(u, c)) if np.isfinite(c) else math.nan,
                     xm=_e(act.phi, u), a2=x2, normed=u,
                     back=d / (q + eps))
    M = _e(act.phi, q)
    S = float(act.V(q)) - c_ind * M * M
    d = float(act.D(q))
    x2 = S / (S + eps)
    x12 = (float(act.C(q, c)) - c_ind * M * M) / (S + eps) if np.isfinite(c) else math.nan
    return Stage(x2=x2, x12=x12, xm=(1.0 - c_ind) * M / math.sqrt(S + eps), a2=float(act.V(q)),
                 normed=x2, back=d / (S + eps))


def sample_norm_theory(stack: Stack, centre: bool) -> Theory:
    """The mean-field theory of a stack with a per-sample norm (docs/theory.md,
    "Normalization"), from `sample_stage`.

    mlp (layers 1..L, the readout L without norm): q^1 = σ_1² q_0 + σ_b²; stage l gives x^l;
    q^{l+1} = σ_{l+1}² (x2 − [ws] xm²) + σ_b² (and q_12 with x12); g^L = 1, g^l = back_l ρ_{l+1}²
    g^{l+1}; weight_grad^l = g^l E[(x^{l−1})²]; correlation q_12^l/q^l.

    resmlp pre (x^l = x^{l−1} + α_l f(N(x^{l−1})), a norm before every φ of the branch):
    q^l = q^{l−1} + α_l² B^l with the branch's stages on unit-variance inputs; backward
    g^{l−1} = g^l (1 + α_l² χ^l), χ^l the branch's chain of ρ² · back factors.
    resmlp post (x^l = N(s^l), s^l = x^{l−1} + α_l f(x^{l−1}), f the plain pre-activation branch):
    E[(s^l)²] = q^{l−1} + α_l² B^l, q^l = E[s²]/(E[s²]+ε) (the reset to 1), backward
    g^{l−1} = g^l (1 + α_l² χ^l)/(E[s²]+ε).
    """
    if stack.kind == "resmlp":
        return _residual(stack, centre), ""
    return _dense(stack, centre), ""


def _dense(st: Stack, centre: bool) -> dict[str, np.ndarray]:
    act, L = st.act, st.depth
    q, q12 = np.empty(L), np.empty(L)
    x2 = np.empty(L)  # E[(x^{l-1})²]
    a2, nd, back = np.full(L - 1, np.nan), np.full(L - 1, np.nan), np.empty(max(L - 1, 0))
    x2[0] = st.q0
    q[0] = st.sigma_w2[0] * st.q0 + st.sigma_b2
    q12[0] = st.sigma_w2[0] * st.q0 * st.c0 + st.sigma_b2
    with np.errstate(over="ignore", invalid="ignore", under="ignore", divide="ignore"):
        for l in range(L - 1):
            s = sample_stage(act, float(q[l]), float(q12[l]), st.position, st.eps, centre)
            a2[l], nd[l], back[l], x2[l + 1] = s.a2, s.normed, s.back, s.x2
            centre_ws = s.xm**2 if st.ws else 0.0
            q[l + 1] = st.sigma_w2[l + 1] * (s.x2 - centre_ws) + st.sigma_b2
            q12[l + 1] = st.sigma_w2[l + 1] * (s.x12 - centre_ws) + st.sigma_b2
        g = np.ones(L)
        for l in range(L - 2, -1, -1):
            g[l] = back[l] * st.rho2[l + 1] * g[l + 1]
        cor = np.clip(q12 / q, -1.0, 1.0)
    return {"forward": q, "activation": a2, "normed": nd, "backward": g, "weight_grad": g * x2,
            "correlation": cor}


def _residual(st: Stack, centre: bool) -> dict[str, np.ndarray]:
    act, L, m, eps = st.act, st.depth, st.m, st.eps
    a2s = st.alphas**2
    q, q12 = float(st.q0), float(st.q0 * st.c0)
    fwd, br, nd, cor, chi, reset = (np.full(L, np.nan) for _ in range(6))
    wg_in = np.full(L * m, np.nan)
    wg_back = np.ones(L * m)  # E[ε_k²] / (α_l² g^l) (post: times the block's reset factor)
    with np.errstate(over="ignore", invalid="ignore", under="ignore", divide="ignore"):
        for l in range(L):
            z, z12 = q, q12
            backs = []
            for j in range(m):
                k = l * m + j
                if st.position == "pre":
                    s = sample_stage(act, z, z12, "pre", eps, centre)
                    if j == 0:
                        nd[l] = s.normed
                    wg_in[k], bk, x12, xm = s.x2, s.back, s.x12, s.xm
                else:  # the plain branch: φ then W
                    wg_in[k] = float(act.V(z))
                    bk = float(act.D(z))
                    x12 = float(act.C(z, min(1.0, max(-1.0, z12 / z))))
                    xm = float(gaussian_expectation(act.phi, z))
                backs.append(bk)
                cw = xm**2 if st.ws else 0.0
                z = st.sigma_w2[k] * (wg_in[k] - cw) + st.sigma_b2
                z12 = st.sigma_w2[k] * (x12 - cw) + st.sigma_b2
            for j in range(m - 1, 0, -1):
                k = l * m + j
                wg_back[k - 1] = wg_back[k] * st.rho2[k] * backs[j]
            chi[l] = wg_back[l * m] * st.rho2[l * m] * backs[0]
            br[l] = z
            s2, s12 = q + a2s[l] * z, q12 + a2s[l] * z12
            if st.position == "post":
                reset[l] = 1.0 / (s2 + eps)
                q, q12 = s2 / (s2 + eps), s12 / (s2 + eps)
                nd[l] = q
            else:
                reset[l] = 1.0
                q, q12 = s2, s12
            fwd[l] = q
            cor[l] = q12 / q if q > 0 else math.nan
        # g^l = E[δ_x^l²]; post: δ_s = reset · δ_x, δ_{x^{l-1}} = δ_s (1 + α² χ)
        g = np.ones(L)
        for l in range(L - 1, 0, -1):
            g[l - 1] = g[l] * reset[l] * (1.0 + a2s[l] * chi[l])
        wg = np.repeat(a2s * g * reset, m) * wg_back * wg_in
    return {"forward": fwd, "branch": br, "normed": nd, "backward": g, "weight_grad": wg,
            "correlation": np.clip(cor, -1.0, 1.0)}


@dataclass(frozen=True)
class PositionStage:
    """`Stage` per position p of a conv layer (arrays of the spatial shape): x2, a2, normed,
    back as in `Stage` (no O(1/n) terms: n = C·P)."""

    x2: np.ndarray
    a2: np.ndarray
    normed: np.ndarray
    back: np.ndarray


def _map(f: Callable[[Any], Any], q: np.ndarray) -> np.ndarray:
    """f at every entry of q, each distinct value evaluated once."""
    uniq, inv = np.unique(q, return_inverse=True)
    return np.asarray([float(f(v)) for v in uniq], dtype=np.float64)[inv.reshape(q.shape)]


def sample_position_stage(act: Activation, q: np.ndarray, position: str, eps: float,
                          centre: bool) -> PositionStage:
    """A per-sample norm over a conv layer's channels and positions on the maps q(p) = E[h(p)²]
    at infinite channels: the statistics pool over positions, Q̄ = mean_p q(p).

        pre:   u(p) = q(p)/(Q̄+ε), x2 = a2 = V_φ(u), normed = u, back = D_φ(u)/(Q̄+ε)
        post:  M(p) = E φ(h(p)), M̄ = mean_p M, S = mean_p V_φ(q(p)) − [centre] M̄²,
               x2 = normed = (V_φ(q) − 2[centre] M̄ M + [centre] M̄²)/(S+ε), a2 = V_φ(q),
               back = D_φ(q)/(S+ε)
    (the projection terms, O(1/(C·P)), dropped)."""
    c_ind = 1.0 if centre else 0.0
    if position == "pre":
        Q = float(q.mean()) + eps
        u = q / Q
        x2 = _map(act.V, u)
        return PositionStage(x2, x2, u, _map(act.D, u) / Q)
    V = _map(act.V, q)
    M = _map(lambda v: gaussian_expectation(act.phi, v), q)
    Mbar = float(M.mean())
    S = float(V.mean()) - c_ind * Mbar**2 + eps
    x2 = (V - 2 * c_ind * Mbar * M + c_ind * Mbar**2) / S
    return PositionStage(x2, V, x2, _map(act.D, q) / S)


# ---- the entry ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Norm:
    """One normalization (module doc). `identity`: norm=none, no layer at all (the
    architectures' unnormalized paths, bitwise today's)."""

    name: str
    #: the torch module a reference network uses, in words
    torch_name: str
    identity: bool = False
    #: subtracts the mean (batchnorm, layernorm) or not (rmsnorm)
    centre: bool = True
    #: statistics over a network's batch per feature/channel (batchnorm), else per sample
    over_batch: bool = False
    #: ε default: a number, or None for torch.finfo(dtype).eps (nn.RMSNorm's eps=None)
    default_eps: float | None = 1e-5
    #: the mean-field theory of a stack: Stack -> (quantity -> array, reason or "")
    theory: Callable[[Stack], Theory] | None = None
    #: the conv layers' position-resolved stage maps (`sample_position_stage`), None where the
    #: theory is missing (the reason: `theory`'s)
    position_stage: Callable[[Activation, np.ndarray, str, float], PositionStage] | None = None
    #: capability -> why it is not defined with this norm (the run prints it / refuses it)
    unsupported: Mapping[str, str] = field(default_factory=dict)

    def dims(self, kind: str) -> tuple[int, ...]:
        """The dims the statistics are taken over: dense (R, B, n): batchnorm (1,) (the batch,
        per feature), per-sample norms (2,) (the features); conv (B, R, C, P): batchnorm (0, 3)
        (batch and positions, per channel), per-sample norms (2, 3) (channels and positions)."""
        if kind not in KINDS:
            raise ValueError(f"unknown architecture kind {kind!r}; allowed: {', '.join(KINDS)}")
        if kind == "dense":
            return (1,) if self.over_batch else (2,)
        return (0, 3) if self.over_batch else (2, 3)

    def forward(self, h: torch.Tensor, dims: Sequence[int], eps: float
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """(y, s): y = (h − [centre] mean h)·s, s = 1/√(mean (h − [centre] mean h)² + ε), the
        means over `dims` (keepdim): torch's normalization at γ = 1, β = 0."""
        d = tuple(dims)
        c = h - h.mean(d, keepdim=True) if self.centre else h
        s = (c.square().mean(d, keepdim=True) + eps).rsqrt()
        return c * s, s

    def backward(self, g: torch.Tensor, y: torch.Tensor, s: torch.Tensor, dims: Sequence[int]
                 ) -> torch.Tensor:
        """∂loss/∂h from g = ∂loss/∂y: s (g − [centre] mean g − y mean(g y)) (module doc)."""
        d = tuple(dims)
        out = g - y * (g * y).mean(d, keepdim=True)
        if self.centre:
            out = out - g.mean(d, keepdim=True)
        return out * s

    def module(self, shape: Sequence[int], conv_dim: int | None, eps: float, *,
               device: str | torch.device, dtype: torch.dtype) -> torch.nn.Module:
        """The torch module of a reference network for activations of per-sample shape `shape`
        ((n,) dense, (C, *S) conv; conv_dim None for dense)."""
        return self._module(tuple(shape), conv_dim, eps, device, dtype)

    _module: Callable[..., torch.nn.Module] = field(default=lambda *a: torch.nn.Identity())

    def resolve_eps(self, eps: Any, dtype: torch.dtype) -> float | None:
        """norm.eps as the number a run uses (None → torch's default); ConfigError if not > 0."""
        if self.identity:
            if eps is not None:
                raise ConfigError(f"norm.eps applies with a norm (norm={', '.join(NAMES[1:])}); "
                                  f"for norm=none leave it unset (got norm.eps={eps!r})")
            return None
        if eps is None:
            return float(torch.finfo(dtype).eps) if self.default_eps is None else self.default_eps
        if not is_number(eps) or eps <= 0 or eps >= 1e3:
            raise ConfigError(f"norm.eps must be a finite number > 0 and < 1000; got {eps!r}")
        return float(eps)

    def check(self, batch: int, position: Any) -> str | None:
        """norm.position validated (None for norm=none); ConfigError where this norm cannot run
        (batchnorm needs batch ≥ 2: torch raises "Expected more than 1 value per channel when
        training" on one input)."""
        if self.identity:
            if position is not None:
                raise ConfigError(f"norm.position applies with a norm (norm={', '.join(NAMES[1:])}); "
                                  f"for norm=none leave it unset (got norm.position={position!r})")
            return None
        position = "pre" if position is None else position
        if position not in POSITIONS:
            raise ConfigError(f"unknown norm.position {position!r}; allowed: {', '.join(POSITIONS)}")
        if self.over_batch and batch < 2:
            raise ConfigError(f"norm={self.name} takes statistics over a network's batch and "
                              f"needs batch ≥ 2 (torch: Expected more than 1 value per channel "
                              f"when training); got batch={batch}")
        return str(position)

    def describe(self, position: str | None, eps: float | None) -> str:
        """What the console's first line adds: "" for none, else ", layernorm (pre, ε=1e-05)"."""
        return "" if self.identity else f", {self.name} ({position}, ε={eps:.3g})"

    def why_not(self, capability: str) -> str:
        """"" if the capability is defined with this norm, else the one-line reason."""
        return self.unsupported.get(capability, "")


def _bn_module(shape: tuple[int, ...], conv_dim: int | None, eps: float, device: Any,
               dtype: torch.dtype) -> torch.nn.Module:
    cls = {None: torch.nn.BatchNorm1d, 1: torch.nn.BatchNorm1d, 2: torch.nn.BatchNorm2d}[conv_dim]
    return cls(shape[0], eps=eps, device=device, dtype=dtype).train()


def _ln_module(shape: tuple[int, ...], conv_dim: int | None, eps: float, device: Any,
               dtype: torch.dtype) -> torch.nn.Module:
    return torch.nn.LayerNorm(list(shape), eps=eps, device=device, dtype=dtype)


def _rms_module(shape: tuple[int, ...], conv_dim: int | None, eps: float | None, device: Any,
                dtype: torch.dtype) -> torch.nn.Module:
    return torch.nn.RMSNorm(list(shape), eps=eps, device=device, dtype=dtype)


#: capabilities whose machinery assumes the unnormalized layer map (strings of harness.archs.base)
_NORMALIZED = {
    "jacobian": "the Jacobian pass has no norm layers",
    "lsuv": "LSUV calibrates the unnormalized layers",
    "criticality": "the norm resets the variance every layer: no fixed point of the unnormalized map",
    "finite_width_band": "Hanin & Nica's band is for unnormalized relu-family stacks",
}
_BATCH = _NORMALIZED

REGISTRY: dict[str, Norm] = {n.name: n for n in (
    Norm("none", "none", identity=True),
    Norm("batchnorm", "nn.BatchNorm1d/2d (training mode)", centre=True, over_batch=True,
         default_eps=1e-5, theory=batchnorm_theory, unsupported=_BATCH, _module=_bn_module),
    Norm("layernorm", "nn.LayerNorm", centre=True, default_eps=1e-5,
         theory=lambda st: sample_norm_theory(st, True), unsupported=_NORMALIZED,
         position_stage=lambda a, q, p, e: sample_position_stage(a, q, p, e, True),
         _module=_ln_module),
    Norm("rmsnorm", "nn.RMSNorm", centre=False, default_eps=None,
         theory=lambda st: sample_norm_theory(st, False), unsupported=_NORMALIZED,
         position_stage=lambda a, q, p, e: sample_position_stage(a, q, p, e, False),
         _module=_rms_module),
)}
NAMES: tuple[str, ...] = tuple(REGISTRY)


def get(name: Any) -> Norm:
    """The entry of norm=`name`; ConfigError naming the allowed ones if there is none."""
    entry = REGISTRY.get(name) if isinstance(name, str) else None
    if entry is None:
        raise ConfigError(f"unknown norm {name!r}; allowed: {', '.join(NAMES)}")
    return entry


def from_config(cfg: Mapping[str, Any], batch: int, dtype: torch.dtype) -> dict[str, Any]:
    """The norm group of a config (None or a mapping with name, position, eps), validated, as
    Spec fields: norm (default none), norm_position (pre, post; None for none), norm_eps."""
    node = cfg.get(GROUP)
    if node is None:
        node = {"name": "none"}
    if not isinstance(node, Mapping) or "name" not in node:
        raise ConfigError(f"norm must be chosen from: {', '.join(NAMES)}")
    unknown = [k for k in node if k not in ("name", "position", "eps")]
    if unknown:
        raise ConfigError(f"unknown key norm.{unknown[0]}; keys under norm: name, position, eps")
    entry = get(node["name"])
    position = entry.check(batch, node.get("position"))
    eps = entry.resolve_eps(node.get("eps"), dtype)
    return dict(norm=entry.name, norm_position=position, norm_eps=eps)
