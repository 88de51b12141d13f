"""arch=resconv: residual stacks of stride-1 'same' conv blocks; the batched ensemble and theory.

The blocks of `harness.archs.resmlp` (x^l = x^{l-1} + α_l f_l(x^{l-1}/β_l), pre-activation
branches of m = residual.branch_depth weight layers, ψ = γ·φ, the same residual.* keys) with every
weight layer a conv of `harness.archs.conv` (`kernel`, `image`, `padding_mode`, `conv_dim` mean
what they mean there): W_j (C, C, *k), constant channels C = `width`. The ensemble runs as one
grouped conv per weight layer (`conv.conv`), the backward with the adjoint conv (`conv.conv_adjoint`),
and the per-example weight gradient, which sums over positions, exactly (`conv.weight_grad_sq`).

Quantities per block l (pooled over channels × positions × inputs): forward = mean (x^l)²,
branch = mean f_l², backward = mean (δ^l)², channel_mean_sq / channel_var of the stream (Brock et
al. 2021's signal-propagation statistics: the average squared channel mean and channel variance),
weight_grad per weight layer (with `branch_layer`), and the position maps of forward and backward.

Theory, position-resolved (`position_maps`): with tap variances v_t of each weight and 1[·] the
in-image indicator (conv's `window_sum`), the resmlp recursion with the dense σ² replaced by the
window sum over taps, Σ_t C v_t 1[p+t] (·)(p+t):

    m = 1:  B^l(p) = σ_b² + Σ_t C v_t 1[p+t] γ² V_φ(q^{l-1}(p+t)/β_l²)
    m = 2:  p^l(p) = σ_b² + Σ_t C v¹_t 1[p+t] γ² V_φ(q^{l-1}(p+t)/β_l²),
            B^l(p) = σ_b² + Σ_t C v²_t 1[p+t] γ² V_φ(p^l(p+t))
    q^l(p) = q^{l-1}(p) + α_l² B^l(p)
    g^{l-1}(p) = g^l(p) + α_l² γ² D_φ(q^{l-1}(p)/β_l²)/β_l² · Σ_t C v¹_t 1[p−t] e₀(p−t)

with e₀ the moment of ε₀ (m = 1: g^l; m = 2: γ² D_φ(p^l) · Σ_t C v²_t 1[p−t] g^l(p−t)), and the
weight gradient of a layer fed by a with error moment e: mean over taps of Σ_p e(p) 1[p+t]
E[a(p+t)²] (times α_l², as e here excludes it). With circular padding every position follows the
resmlp recursion; with zero padding the border loses the taps outside. The channel statistics
have no theory (NaN), as for conv.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from harness.archs import conv, mlp, resmlp
from harness.archs.base import POSITION, Architecture, Tick
from harness.core import norms, schemes
from harness.core.activations import Activation
from harness.core.capabilities import POSITIONS, WS
from harness.core.validate import ConfigError
from harness.sim.workspace import Workspace
from harness.theory.meanfield import mean_phi

if TYPE_CHECKING:  # type hints only: Spec asks the registry, so the registry must not import it
    from harness.core.spec import Spec

QUANTITIES = ("forward", "branch", "backward", "weight_grad", *conv.CHANNEL_QUANTITIES)


def propagate(
    weights: Sequence[torch.Tensor],
    biases: Sequence[torch.Tensor] | None,
    x0: torch.Tensor,
    cotangent: torch.Tensor,
    act: Activation,
    padding_mode: str,
    m: int,
    alpha: Sequence[float],
    beta: Sequence[float] | None = None,
    gain: float = 1.0,
    tick: Tick | None = None,
) -> dict[str, torch.Tensor]:
    """Forward and written-out backward through a stacked residual conv ensemble (module doc).

    Args: weights L·m tensors (R, C, C, *k); biases L·m (R, C) or None; x0, cotangent (R, B, C,
    *S); m, alpha, beta, gain as `harness.archs.resmlp.propagate`.
    Returns (R, L): forward, branch, backward, channel_mean_sq, channel_var; (R, L·m)
    weight_grad; (R, L, P) "position:forward", "position:backward".
    """
    L = len(weights) // m
    R, B, C, *S = x0.shape
    P = math.prod(S)
    new = x0.new_empty
    stat = dict(forward=new(R, L), branch=new(R, L), backward=new(R, L),
                weight_grad=new(R, L * m), channel_mean_sq=new(R, L), channel_var=new(R, L))
    pos_f, pos_b = new(R, L, P), new(R, L, P)
    max_elements = 2 * B * R * P * C
    x = x0.transpose(0, 1).reshape(B, R * C, *S)
    pre: list[list[torch.Tensor]] = []
    ins: list[list[torch.Tensor]] = []
    for l in range(L):
        z = x if beta is None or beta[l] == 1.0 else x / beta[l]
        zs, as_ = [], []
        for j in range(m):
            k = l * m + j
            a = act.phi(z)
            if gain != 1.0:
                a = a * gain
            zs.append(z)
            as_.append(a)
            z = conv.conv(a, weights[k], padding_mode, None if biases is None else biases[k])
        pre.append(zs)
        ins.append(as_)
        stat["branch"][:, l] = z.view(B, R, -1).square().mean((0, 2))
        x = x + alpha[l] * z
        xv = x.view(B, R, C, P)
        pos_f[:, l] = xv.square().mean((0, 2))
        var, mean = conv._channel_var_mean(xv)
        stat["channel_mean_sq"][:, l] = mean.square().mean(-1)
        stat["channel_var"][:, l] = var.mean(-1)
        if tick is not None:
            tick()
    stat["forward"] = pos_f.mean(-1)
    delta = cotangent.transpose(0, 1).reshape(B, R * C, *S)
    for l in range(L - 1, -1, -1):
        pos_b[:, l] = delta.view(B, R, C, P).square().mean((0, 2))
        eps = delta * alpha[l]
        for j in range(m - 1, -1, -1):
            k = l * m + j
            stat["weight_grad"][:, k] = conv.weight_grad_sq(eps, ins[l][j], weights[k].shape,
                                                            padding_mode, max_elements)
            eps = conv.conv_adjoint(eps, weights[k], padding_mode) * act.dphi(pre[l][j])
            if gain != 1.0:
                eps = eps * gain
        delta = delta + (eps if beta is None or beta[l] == 1.0 else eps / beta[l])
        pre[l], ins[l] = [], []
        if tick is not None:
            tick()
    stat["backward"] = pos_b.mean(-1)
    stat[POSITION + "forward"] = pos_f
    stat[POSITION + "backward"] = pos_b
    return stat


def propagate_norm(
    weights: Sequence[torch.Tensor],
    biases: Sequence[torch.Tensor] | None,
    x0: torch.Tensor,
    cotangent: torch.Tensor,
    act: Activation,
    padding_mode: str,
    m: int,
    alpha: Sequence[float],
    norm: norms.Norm,
    position: str,
    eps: float,
    tick: Tick | None = None,
) -> dict[str, torch.Tensor]:
    """`harness.archs.resmlp.propagate_norm`'s blocks (pre: a norm before every φ of the branch;
    post: x^l = N(x^{l-1} + α_l f(x^{l-1}))) with conv weight layers, N's statistics over
    `Norm.dims("conv")` of the (B, R, C, P) view. Returns `propagate`'s quantities and normed
    (R, L), the block's first norm's output moment."""
    L = len(weights) // m
    R, B, C, *S = x0.shape
    P = math.prod(S)
    dims = norm.dims("conv")
    new = x0.new_empty
    stat = dict(forward=new(R, L), branch=new(R, L), normed=new(R, L), backward=new(R, L),
                weight_grad=new(R, L * m), channel_mean_sq=new(R, L), channel_var=new(R, L))
    pos_f, pos_b = new(R, L, P), new(R, L, P)
    max_elements = 2 * B * R * P * C
    pre_ = position == "pre"
    x = x0.transpose(0, 1).reshape(B, R * C, *S)
    shape = x.shape
    saved: list[list[tuple[torch.Tensor, ...]]] = []
    ins: list[list[torch.Tensor]] = []
    out_norm: list[tuple[torch.Tensor, torch.Tensor]] = []
    for l in range(L):
        z = x
        zs, as_ = [], []
        for j in range(m):
            k = l * m + j
            if pre_:
                y, sc = norm.forward(z.view(B, R, C, P), dims, eps)
                if j == 0:
                    stat["normed"][:, l] = y.square().mean((0, 2, 3))
                zs.append((y, sc))
                a = act.phi(y).reshape(shape)
            else:
                zs.append((z.view(B, R, C, P),))
                a = act.phi(z)
            as_.append(a)
            z = conv.conv(a, weights[k], padding_mode, None if biases is None else biases[k])
        saved.append(zs)
        ins.append(as_)
        stat["branch"][:, l] = z.view(B, R, -1).square().mean((0, 2))
        x = x + alpha[l] * z
        if not pre_:
            y, sc = norm.forward(x.view(B, R, C, P), dims, eps)
            out_norm.append((y, sc))
            stat["normed"][:, l] = y.square().mean((0, 2, 3))
            x = y.reshape(shape)
        xv = x.view(B, R, C, P)
        pos_f[:, l] = xv.square().mean((0, 2))
        var, mean = conv._channel_var_mean(xv)
        stat["channel_mean_sq"][:, l] = mean.square().mean(-1)
        stat["channel_var"][:, l] = var.mean(-1)
        if tick is not None:
            tick()
    stat["forward"] = pos_f.mean(-1)
    delta = cotangent.transpose(0, 1).reshape(shape)
    for l in range(L - 1, -1, -1):
        pos_b[:, l] = delta.view(B, R, C, P).square().mean((0, 2))
        if not pre_:
            y, sc = out_norm[l]
            delta = norm.backward(delta.view(B, R, C, P), y, sc, dims).reshape(shape)
        e = delta * alpha[l]
        for j in range(m - 1, -1, -1):
            k = l * m + j
            stat["weight_grad"][:, k] = conv.weight_grad_sq(e, ins[l][j], weights[k].shape,
                                                            padding_mode, max_elements)
            gv = conv.conv_adjoint(e, weights[k], padding_mode).view(B, R, C, P)
            gv = gv * act.dphi(saved[l][j][0])
            if pre_:
                gv = norm.backward(gv, saved[l][j][0], saved[l][j][1], dims)
            e = gv.reshape(shape)
        delta = delta + e
        saved[l], ins[l] = [], []
        if tick is not None:
            tick()
    stat["backward"] = pos_b.mean(-1)
    stat[POSITION + "forward"] = pos_f
    stat[POSITION + "backward"] = pos_b
    return stat


def position_maps(spec: Spec) -> dict[str, np.ndarray]:
    """The position-resolved recursions of the module doc: forward q^l(p), branch B^l(p),
    backward g^l(p), (L, *S); weight_grad (L·m,)."""
    act: Activation = spec.activation
    L, S, mode = spec.depth, spec.spatial, spec.padding_mode
    m = spec.residual_branch_depth
    C = spec.widths[0]
    taps = [C * t for t in spec.tap_variances()]  # C v_t per weight layer
    b2 = spec.bias_std**2
    a2 = resmlp.alphas(spec) ** 2
    be2 = resmlp.betas2(spec)
    g2 = resmlp.gamma(spec) ** 2
    uniform = np.full(taps[0].shape, 1.0 / taps[0].size)

    def centre(qq: np.ndarray) -> np.ndarray:  # ws=true: M_φ(q)², removed by the zero row sums
        return np.asarray(mean_phi(act, qq)) ** 2

    q = np.full(S, float(spec.input_var))
    fwd, br, bwd = np.empty((L, *S)), np.empty((L, *S)), np.empty((L, *S))
    wg = np.empty(L * m)
    zs: list[list[np.ndarray]] = []  # per block: the pre-activation maps of its branch layers
    with np.errstate(over="ignore", invalid="ignore", under="ignore", divide="ignore"):
        for l in range(L):
            z = q / be2[l]
            block = []
            for j in range(m):
                block.append(z)
                a_sq = conv._moment(act.V, z) - (conv._moment(centre, z) if spec.ws else 0.0)
                z = b2 + conv.window_sum(g2 * a_sq, taps[l * m + j], mode)
            zs.append(block)
            br[l] = z
            q = q + a2[l] * z
            fwd[l] = q
        g = np.ones(S)
        for l in range(L - 1, -1, -1):
            bwd[l] = g
            e = g  # the moment of ∂loss/∂(layer output), α_l² aside
            for j in range(m - 1, -1, -1):
                k = l * m + j
                a_sq = g2 * conv._moment(act.V, zs[l][j])
                wg[k] = a2[l] * (e * conv.window_sum(a_sq, uniform, mode)).sum()
                e = g2 * conv._moment(act.D, zs[l][j]) * conv.window_sum(e, taps[k], mode, -1)
            g = g + a2[l] * e / be2[l]
    return {"forward": fwd, "branch": br, "backward": bwd, "weight_grad": wg}


#: why a normalized resconv with zero padding has no theory here
ZERO_PADDING_NORM = ("resconv with a norm: theory for circular padding only (every position then "
                     "follows resmlp's normalized recursions)")


def norm_predict(spec: Spec) -> tuple[dict[str, np.ndarray], str]:
    """With a norm and circular padding every position follows resmlp's normalized recursions
    (the norm entry's hook, σ_w² = fan_in·Var(W), n = C·P), the weight gradient summed over the
    P positions; zero padding: NaN and `ZERO_PADDING_NORM`."""
    L, m = spec.depth, spec.residual_branch_depth
    nan = np.full(L, np.nan)
    th, why = mlp.norm_theory(spec, "resmlp")  # why: a norm with no theory here (batchnorm)
    if spec.padding_mode != "circular":
        out = {q: nan.copy() for q in ("forward", "branch", "normed", "backward")}
        return {**out, "weight_grad": np.full(L * m, np.nan), "channel_mean_sq": nan.copy(),  # type: ignore[operator]
                "channel_var": nan.copy()}, why or ZERO_PADDING_NORM
    th = {k: v for k, v in th.items() if k != "correlation"}
    th["weight_grad"] = th["weight_grad"] * math.prod(spec.spatial)
    return {**th, "channel_mean_sq": nan.copy(), "channel_var": nan.copy()}, why


def predict(spec: Spec) -> dict[str, np.ndarray]:
    """Pooled predictions: position means of the maps; weight_grad per weight layer; NaN for
    the channel statistics. With a norm: `norm_predict`."""
    if not spec.normalization.identity:
        return norm_predict(spec)[0]
    maps = position_maps(spec)
    axes = tuple(range(1, 1 + len(spec.spatial)))
    nan = np.full(spec.depth, np.nan)
    return {"forward": maps["forward"].mean(axes), "branch": maps["branch"].mean(axes),
            "backward": maps["backward"].mean(axes), "weight_grad": maps["weight_grad"],
            "channel_mean_sq": nan, "channel_var": nan.copy()}


class ResConv(Architecture):
    """arch=resconv (module doc)."""

    name = "resconv"
    label = "residual conv stacks"
    capabilities = frozenset({POSITIONS, WS})
    keys: Mapping[str, str] = {**conv.ARCH.keys, **resmlp.KEYS}
    groups = (resmlp.GROUP,)
    all_quantities = (*QUANTITIES[:2], "normed", *QUANTITIES[2:])
    weight_grad_is_outer_product = False

    def config(self, cfg: Mapping[str, Any]) -> dict[str, Any]:
        """conv's keys and the residual.* keys; ws=true needs padding_mode=circular."""
        keys = {**conv.config_keys(cfg), **resmlp.config_keys(cfg)}
        if cfg.get("ws") is True and keys["padding_mode"] != "circular":
            raise ConfigError("ws=true with arch=resconv needs padding_mode=circular (with zero "
                              "padding a border position sees part of a row, whose sum is not 0, "
                              f"so the centring is position-dependent); got padding_mode="
                              f"{keys['padding_mode']}")
        return keys

    def limits(self, spec: Spec, capability: str) -> str:
        """resmlp's reasons (`resmlp.limits`) for criticality and the finite-width band."""
        return resmlp.limits(spec, capability)

    def describe(self, spec: Spec) -> str:
        """conv's and resmlp's descriptions."""
        return conv.ARCH.describe(spec) + "," + resmlp.ARCH.describe(spec)

    def title(self, row: Mapping[str, Any]) -> str:
        """conv's and resmlp's titles."""
        return conv.ARCH.title(row) + resmlp.ARCH.title(row)

    def spatial(self, spec: Spec) -> tuple[int, ...]:
        """(image,)·conv_dim."""
        return conv.ARCH.spatial(spec)

    def kernel_shape(self, spec: Spec) -> tuple[int, ...]:
        """(kernel,)·conv_dim."""
        return conv.ARCH.kernel_shape(spec)

    def weight_shapes(self, spec: Spec) -> list[tuple[int, ...]]:
        """(C, C, *k) per weight layer, L·m of them."""
        C = spec.widths[0]
        return [(C, C, *self.kernel_shape(spec))] * (spec.depth * spec.residual_branch_depth)  # type: ignore[operator]

    def branch_depth(self, spec: Spec) -> int | None:
        """residual.branch_depth."""
        return spec.residual_branch_depth

    def layer_scales(self, spec: Spec) -> list[float] | None:
        """The scheme's factor per branch layer (fixup's), as for resmlp."""
        entry = schemes.scheme(spec.scheme)
        m, L = spec.residual_branch_depth, spec.depth
        scales = [entry.branch_scale(j, m, L) for _ in range(L) for j in range(1, m + 1)]  # type: ignore[arg-type]
        return None if all(s == 1.0 for s in scales) else scales

    def quantities(self, spec: Spec) -> tuple[str, ...]:
        """forward, branch, (normed with a norm), backward, weight_grad and the channel
        statistics."""
        return QUANTITIES if spec.normalization.identity else (*QUANTITIES[:2], "normed", *QUANTITIES[2:])

    def row_columns(self, spec: Spec, quantity: str, n: int) -> dict[str, np.ndarray]:
        """weight_grad: `branch_layer`, as for resmlp."""
        return resmlp.ARCH.row_columns(spec, quantity, n)

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
        """`propagate` (module function) with the run's padding, α_l, β_l and γ; with a norm
        `propagate_norm`."""
        if not spec.normalization.identity:
            return propagate_norm(weights, biases, x0, cotangent, spec.activation, spec.padding_mode,  # type: ignore[arg-type]
                                  spec.residual_branch_depth, resmlp.alphas(spec).tolist(),  # type: ignore[arg-type]
                                  spec.normalization, spec.norm_position, spec.norm_eps, tick)  # type: ignore[arg-type]
        beta = np.sqrt(resmlp.betas2(spec)).tolist() if spec.residual_nf else None
        return propagate(weights, biases, x0, cotangent, spec.activation, spec.padding_mode,  # type: ignore[arg-type]
                         spec.residual_branch_depth, resmlp.alphas(spec).tolist(), beta,  # type: ignore[arg-type]
                         resmlp.gamma(spec), tick)

    def bytes_per_replicate(self, spec: Spec) -> int:
        """Weights, 2·L·m saved activations, working buffers and the weight-gradient chunk."""
        item = torch.empty((), dtype=spec.torch_dtype).element_size()
        P = math.prod(spec.spatial)
        m = spec.residual_branch_depth
        weights = sum(math.prod(s) for s in spec.weight_shapes)
        act = spec.batch * P * spec.widths[0]
        extra = 0 if spec.normalization.identity else act * spec.depth * (1 + m)  # N's outputs
        return item * (weights + act * (2 * spec.depth * m + 10) + extra + 2 * spec.depth * P)  # type: ignore[operator]

    def predict(
        self, spec: Spec, weight_variances: Sequence[float] | None = None
    ) -> dict[str, np.ndarray]:
        """`predict` (module function)."""
        return predict(spec)

    def position_maps(self, spec: Spec) -> dict[str, np.ndarray]:
        """`position_maps` (module function); with a norm the pooled `norm_predict` at every
        position."""
        if spec.normalization.identity:
            return position_maps(spec)
        th = norm_predict(spec)[0]
        ones = np.ones(spec.spatial)
        return {k: np.multiply.outer(th[k], ones) for k in ("forward", "branch", "backward")}

    def theory_note(self, spec: Spec) -> str:
        """The norm's reason where the theory is missing ("" otherwise)."""
        return "" if spec.normalization.identity else norm_predict(spec)[1]

    def layer(
        self, spec: Spec, n_in: int, n_out: int, *, bias: bool, device: str | torch.device,
        dtype: torch.dtype,
    ) -> nn.Module:
        """conv's layer: nn.Conv{conv_dim}d with 'same' padding."""
        return conv.ARCH.layer(spec, n_in, n_out, bias=bias, device=device, dtype=dtype)

    def block(
        self, spec: Spec, l: int, *, bias: bool, device: str | torch.device, dtype: torch.dtype
    ) -> nn.Module:
        """Block l as a `resmlp.ResidualBlock` of m conv layers."""
        C = spec.widths[0]
        layers = [self.layer(spec, C, C, bias=bias, device=device, dtype=dtype)
                  for _ in range(spec.residual_branch_depth)]  # type: ignore[arg-type]
        return resmlp.ResidualBlock(layers, spec.activation, float(resmlp.alphas(spec)[l]),
                                    math.sqrt(resmlp.betas2(spec)[l]), resmlp.gamma(spec),
                                    resmlp.norm_modules(spec, (C, *self.spatial(spec)), device=device,
                                                        dtype=dtype), spec.norm_position or "pre")

    def norm_limits(self, cfg: Mapping[str, Any]) -> str:
        """residual.nf with a norm: as for resmlp."""
        return resmlp.nf_limit(cfg)


ARCH = ResConv()
