"""torch.nn.init's primitives, batched over a leading member dimension: calculate_gain, fans,
the truncated-normal moments, the orthogonal and delta-orthogonal draws and the iid draws.

Nothing here knows a scheme; the schemes (`harness.core.schemes`) are built from these.
"""

from __future__ import annotations

import math

import torch

#: std of N(0, 1) truncated to (−2, 2)
TRUNC_STD = 0.87962566103423978

_LINEAR_FNS = (
    "linear",
    "conv1d",
    "conv2d",
    "conv3d",
    "conv_transpose1d",
    "conv_transpose2d",
    "conv_transpose3d",
)
#: every nonlinearity torch.nn.init.calculate_gain knows
GAIN_NONLINEARITIES = (*_LINEAR_FNS, "sigmoid", "tanh", "relu", "leaky_relu", "selu")


#: every `mode`; torch's kaiming_* take only the first two, fan_geo_avg is JAX's
MODES = ("fan_in", "fan_out", "fan_avg", "fan_geo_avg")
TORCH_MODES = ("fan_in", "fan_out")
#: variance_scaling's `distribution` values (Keras's; JAX calls untruncated_normal "normal")
DISTRIBUTIONS = ("truncated_normal", "untruncated_normal", "uniform")


def calculate_gain(nonlinearity: str, param: float | None = None) -> float:
    """The recommended gain for `nonlinearity`, identical to `torch.nn.init.calculate_gain`.

    linear, conv*, sigmoid: 1;  tanh: 5/3;  relu: √2;  leaky_relu: √(2/(1+a²)) (a = param,
    default 0.01);  selu: 3/4.
    """
    if nonlinearity in _LINEAR_FNS or nonlinearity == "sigmoid":
        return 1
    if nonlinearity == "tanh":
        return 5.0 / 3
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "leaky_relu":
        if param is None:
            slope = 0.01
        elif (not isinstance(param, bool) and isinstance(param, int)) or isinstance(param, float):
            slope = param
        else:
            raise ValueError(f"negative_slope {param} not a valid number")
        return math.sqrt(2.0 / (1 + slope**2))
    if nonlinearity == "selu":
        return 3.0 / 4
    raise ValueError(f"Unsupported nonlinearity {nonlinearity}")


def fans(shape: tuple[int, ...] | torch.Size) -> tuple[int, int]:
    """(fan_in, fan_out) of ONE member's weight of shape (out, in, *kernel), as torch computes.

    fan_in = in · ∏kernel,  fan_out = out · ∏kernel.
    """
    if len(shape) < 2:
        raise ValueError(
            "Fan in and fan out can not be computed for tensor with fewer than 2 dimensions"
        )
    receptive = math.prod(shape[2:])
    return shape[1] * receptive, shape[0] * receptive


def fan(shape: tuple[int, ...] | torch.Size, mode: str) -> float:
    """The fan a `mode` scales by: fan_in, fan_out, fan_avg = (fan_in + fan_out)/2 or
    fan_geo_avg = √(fan_in·fan_out) (Keras and JAX define the first three, JAX the fourth)."""
    fan_in, fan_out = fans(shape)
    if mode == "fan_in":
        return float(fan_in)
    if mode == "fan_out":
        return float(fan_out)
    if mode == "fan_avg":
        return (fan_in + fan_out) / 2.0
    if mode == "fan_geo_avg":
        return math.sqrt(fan_in * fan_out)
    raise ValueError(f"Mode {mode} not supported, please use one of {', '.join(MODES)}")


def _phi(x: float) -> float:
    return math.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)


def _Phi(x: float) -> float:
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


def trunc_normal_moments(mean: float, std: float, a: float, b: float) -> tuple[float, float]:
    """(E[W], Var(W)) of N(mean, std²) truncated to the absolute interval [a, b].

    With α = (a − μ)/σ, β = (b − μ)/σ, Z = Φ(β) − Φ(α):
    E = μ + σ (ϕ(α) − ϕ(β))/Z,  Var = σ² [1 + (αϕ(α) − βϕ(β))/Z − ((ϕ(α) − ϕ(β))/Z)²].
    """
    al, be = (a - mean) / std, (b - mean) / std
    z = _Phi(be) - _Phi(al)
    if not z > 0:
        raise ValueError(f"trunc_normal: [a, b] = [{a:g}, {b:g}] holds no mass of N({mean:g}, {std:g}²)")
    pa, pb = _phi(al), _phi(be)
    ta = al * pa if math.isfinite(al) else 0.0
    tb = be * pb if math.isfinite(be) else 0.0
    m = (pa - pb) / z
    return mean + std * m, std * std * (1.0 + (ta - tb) / z - m * m)


def orthogonal_(weight: torch.Tensor, gain: float, generator: torch.Generator | None) -> None:
    """torch.nn.init.orthogonal_, batched over the leading member dimension: each member of
    weight (R, rows, *rest) becomes g·Q, Q the sign-corrected QR factor of a Gaussian
    (rows, cols) matrix, cols = ∏rest (so Var(W) = g²/max(rows, cols))."""
    R, rows = weight.shape[0], weight.shape[1]
    cols = weight[0].numel() // rows
    flat = torch.empty((R, rows, cols), dtype=weight.dtype, device=weight.device)
    flat.normal_(0, 1, generator=generator)
    if rows < cols:
        flat = flat.transpose(1, 2)
    if flat.is_cuda:
        q, r = torch.linalg.qr(flat)  # (R, max, min)
    else:  # batched CPU QR is ~100× slower than a loop with 2+ threads (torch 2.13)
        q, r = (torch.stack(t) for t in zip(*(torch.linalg.qr(m) for m in flat), strict=True))
    q = q * torch.diagonal(r, dim1=-2, dim2=-1).sign().unsqueeze(-2)
    if rows < cols:
        q = q.transpose(1, 2)
    weight.copy_(q.reshape(weight.shape)).mul_(gain)


def delta_orthogonal_(
    weight: torch.Tensor, gain: float, generator: torch.Generator | None
) -> None:
    """Xiao et al. 2018, Algorithm 2, batched: each member's centre tap is g·H, H (out, in) with
    orthonormal columns (needs in ≤ out), drawn as `orthogonal_` draws it; every other tap is 0
    (so Var(W) = g²/(out·∏kernel), the mean over all taps)."""
    out, in_ = weight.shape[1], weight.shape[2]
    if in_ > out:
        raise ValueError(
            f"delta_orthogonal needs in ≤ out (an out×in centre tap with orthonormal columns); "
            f"got a member weight of shape {tuple(weight.shape[1:])}"
        )
    centre = torch.empty((weight.shape[0], out, in_), dtype=weight.dtype, device=weight.device)
    if centre[0].numel():
        orthogonal_(centre, gain, generator)
    weight.zero_()
    weight[(slice(None), slice(None), slice(None), *(k // 2 for k in weight.shape[3:]))] = centre


def draw_(
    t: torch.Tensor, kind: str, scale: float = 1.0, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Fill t in place with scale·Z, Z iid "normal" N(0, 1), "uniform" U(−1, 1) or
    "truncated_normal" N(0, 1) cut at ±2 (torch's trunc_normal_)."""
    if kind == "uniform":
        return t.uniform_(-scale, scale, generator=generator)
    if kind == "normal":
        return t.normal_(0.0, scale, generator=generator)
    return torch.nn.init.trunc_normal_(t, 0.0, scale, -2 * scale, 2 * scale, generator)
