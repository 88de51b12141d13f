"""Initialization schemes for stacked ensembles, following `torch.nn.init` exactly.

A stacked weight has shape (R, out, in, *kernel): R independent members, each of torch's own
layout. Fans are computed for ONE member, exactly as `torch.nn.init._calculate_fan_in_and_fan_out`
does for a single network's weight (fan_in = in·∏kernel, fan_out = out·∏kernel), never for the
stacked tensor.

Every scheme's weight variance comes from one function, `weight_variance`, which both the sampler
(`init_`) and the theory (`harness.theory`) call, so code and prediction cannot drift apart:

=================  =========================  ===========================================
scheme             Var(W)                     distribution (torch.nn.init function)
=================  =========================  ===========================================
xavier_uniform     2g²/(fan_in+fan_out)       U(−b, b), b = g√(6/(fan_in+fan_out))
xavier_normal      2g²/(fan_in+fan_out)       N(0, Var)
kaiming_uniform    g²/fan_mode                U(−b, b), b = g√(3/fan_mode)
kaiming_normal     g²/fan_mode                N(0, Var)
orthogonal         g²/max(rows, cols)         g·Q, Q from the QR of a Gaussian (rows, cols)
delta_orthogonal   g²/(out·∏kernel)           centre tap g·Q (out×in, orthonormal columns),
                                              every other tap 0 (Xiao et al. 2018)
lecun_normal       g²/fan_in (g = 1)          N(0, σ²) truncated to ±2σ, σ = √Var/0.8796…
torch_default      1/(3·fan_in)               kaiming_uniform_(a=√5): nn.Linear's default
=================  =========================  ===========================================

For delta_orthogonal the variance is the mean over all entries (the centre tap's entries have
mean square g²/out, the others are 0), so fan_in·Var(W) = g²·in/out, which is g² for square
layers; `tap_variances` gives the per-tap profile the position-resolved conv theory needs.

`xavier` and `kaiming` are short names for xavier_normal and kaiming_normal. lecun_normal is
Keras's and JAX's: a truncated normal whose std is corrected so the realized variance is 1/fan_in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
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


@dataclass(frozen=True)
class Scheme:
    """A registry entry: how one scheme draws a member's weight and which knobs it takes."""

    name: str
    distribution: str  # uniform | normal | truncated_normal | orthogonal | delta_orthogonal
    family: str  # xavier | kaiming | orthogonal | delta_orthogonal | lecun | torch_default
    torch_name: str | None  # the torch.nn.init function it reproduces
    doc: str

    @property
    def uses_mode(self) -> bool:
        return self.family == "kaiming"

    @property
    def uses_nonlinearity(self) -> bool:
        return self.family == "kaiming"

    @property
    def uses_gain(self) -> bool:
        return self.family in ("xavier", "kaiming", "orthogonal", "delta_orthogonal")


SCHEMES: dict[str, Scheme] = {
    s.name: s
    for s in [
        Scheme("xavier_uniform", "uniform", "xavier", "xavier_uniform_", "Glorot & Bengio 2010"),
        Scheme("xavier_normal", "normal", "xavier", "xavier_normal_", "Glorot & Bengio 2010"),
        Scheme("kaiming_uniform", "uniform", "kaiming", "kaiming_uniform_", "He et al. 2015"),
        Scheme("kaiming_normal", "normal", "kaiming", "kaiming_normal_", "He et al. 2015"),
        Scheme("orthogonal", "orthogonal", "orthogonal", "orthogonal_", "Saxe et al. 2014"),
        Scheme("delta_orthogonal", "delta_orthogonal", "delta_orthogonal", None,
               "Xiao et al. 2018"),
        Scheme("lecun_normal", "truncated_normal", "lecun", None, "LeCun et al. 1998 (Keras/JAX)"),
        Scheme("torch_default", "uniform", "torch_default", "kaiming_uniform_", "nn.Linear"),
    ]
}
ALIASES: dict[str, str] = {"xavier": "xavier_normal", "kaiming": "kaiming_normal"}
NAMES: tuple[str, ...] = (*SCHEMES, *ALIASES)
MODES = ("fan_in", "fan_out")


def scheme(name: str) -> Scheme:
    """The registry entry for `name` (aliases resolved); ValueError lists the allowed names."""
    entry = SCHEMES.get(ALIASES.get(name, name))
    if entry is None:
        raise ValueError(f"unknown scheme {name!r}; allowed: {', '.join(NAMES)}")
    return entry


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


def resolve_gain(
    name: str, *, nonlinearity: str = "leaky_relu", a: float = 0.0, gain: float | None = None
) -> float:
    """The gain g a scheme uses.

    torch_default: always calculate_gain('leaky_relu', √5) = √(1/3); lecun_normal: always 1
    (neither takes a gain). Otherwise an explicit `gain` wins; else kaiming's
    calculate_gain(nonlinearity, a), and 1 for xavier and orthogonal.
    """
    fam = scheme(name).family
    if fam == "torch_default":
        return calculate_gain("leaky_relu", math.sqrt(5.0))
    if fam == "lecun":
        return 1.0
    if gain is not None:
        return float(gain)
    if fam == "kaiming":
        return float(calculate_gain(nonlinearity, a))
    return 1.0


def weight_variance(
    name: str, shape: tuple[int, ...] | torch.Size, *, mode: str = "fan_in", gain: float = 1.0
) -> float:
    """Var(W) of one member's weight of `shape` under scheme `name` with gain g (see the table).

    The theory's σ_w² is fan_in · weight_variance(...).
    """
    entry = scheme(name)
    fan_in, fan_out = fans(shape)
    if not entry.uses_gain:  # lecun_normal, torch_default: their gain is fixed
        gain = resolve_gain(entry.name)
    g2 = gain * gain
    if entry.family == "xavier":
        return 2.0 * g2 / (fan_in + fan_out)
    if entry.family == "kaiming":
        if mode not in MODES:
            raise ValueError(f"Mode {mode} not supported, please use one of {', '.join(MODES)}")
        return g2 / (fan_in if mode == "fan_in" else fan_out)
    if entry.family == "orthogonal":
        rows, cols = shape[0], math.prod(shape[1:])
        return g2 / max(rows, cols)
    if entry.family == "delta_orthogonal":  # mean over all taps; only the centre is nonzero
        return g2 / (shape[0] * math.prod(shape[2:]))
    # lecun and torch_default scale by fan_in
    return g2 / fan_in


def tap_variances(
    name: str, shape: tuple[int, ...] | torch.Size, *, mode: str = "fan_in", gain: float = 1.0
) -> np.ndarray:
    """E[W[:, :, t]²] per kernel tap t, an array of shape ``shape[2:]`` (a 0-d array for a
    Linear weight); its mean over taps is `weight_variance`.

    Every scheme but delta_orthogonal treats all taps alike; delta_orthogonal puts g²/out on
    the centre tap (an orthogonal out×in matrix with orthonormal columns) and 0 elsewhere.
    """
    kernel = tuple(shape[2:])
    var = weight_variance(name, shape, mode=mode, gain=gain)
    if scheme(name).family != "delta_orthogonal":
        return np.full(kernel, var)
    taps = np.zeros(kernel)
    taps[tuple(k // 2 for k in kernel)] = var * math.prod(kernel)
    return taps


def _orthogonal_(weight: torch.Tensor, gain: float, generator: torch.Generator | None) -> None:
    # torch.nn.init.orthogonal_, batched over the leading member dimension
    R, rows = weight.shape[0], weight.shape[1]
    cols = weight[0].numel() // rows
    flat = torch.empty((R, rows, cols), dtype=weight.dtype, device=weight.device)
    flat.normal_(0, 1, generator=generator)
    if rows < cols:
        flat = flat.transpose(1, 2)
    q, r = torch.linalg.qr(flat)  # (R, max, min)
    q = q * torch.diagonal(r, dim1=-2, dim2=-1).sign().unsqueeze(-2)
    if rows < cols:
        q = q.transpose(1, 2)
    weight.copy_(q.reshape(weight.shape)).mul_(gain)


def _delta_orthogonal_(
    weight: torch.Tensor, gain: float, generator: torch.Generator | None
) -> None:
    # Xiao et al. 2018, Algorithm 2: the centre tap is g·H, H (out, in) with orthonormal
    # columns (out ≥ in), drawn as torch's orthogonal_ draws it; every other tap is 0
    out, in_ = weight.shape[1], weight.shape[2]
    if in_ > out:
        raise ValueError(
            f"delta_orthogonal needs in ≤ out (an out×in centre tap with orthonormal columns); "
            f"got a member weight of shape {tuple(weight.shape[1:])}"
        )
    centre = torch.empty((weight.shape[0], out, in_), dtype=weight.dtype, device=weight.device)
    if centre[0].numel():
        _orthogonal_(centre, gain, generator)
    weight.zero_()
    weight[(slice(None), slice(None), slice(None), *(k // 2 for k in weight.shape[3:]))] = centre


@torch.no_grad()
def init_(
    weight: torch.Tensor,
    scheme_name: str,
    *,
    mode: str = "fan_in",
    nonlinearity: str = "leaky_relu",
    a: float = 0.0,
    gain: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Fill a stacked weight (R, out, in, *kernel) in place, each member distributed exactly as
    the torch.nn.init function of that scheme would fill that member's own (out, in, *kernel)
    tensor.

    Args:
        weight: the stacked tensor; fans come from ``weight.shape[1:]``.
        scheme_name: one of `NAMES` (``xavier`` = xavier_normal, ``kaiming`` = kaiming_normal).
        mode: ``fan_in`` or ``fan_out`` (kaiming schemes only, as in torch).
        nonlinearity, a: passed to `calculate_gain` by the kaiming schemes, as in torch.
        gain: overrides the scheme's gain (default: 1, or kaiming's calculate_gain).
        generator: the torch.Generator to draw from (on the weight's device).

    Std σ = √weight_variance(...); uniform variants draw U(−√3σ, √3σ). delta_orthogonal zeroes
    the weight and sets its centre tap to g·H, H (out, in) with orthonormal columns (in ≤ out).

    >>> w = torch.empty(8, 64, 32)
    >>> _ = init_(w, "kaiming_normal", nonlinearity="relu")   # each member: std √(2/32)
    """
    if weight.dim() < 3:
        raise ValueError(
            f"init_ needs a stacked weight (R, out, in, *kernel); got shape {tuple(weight.shape)}"
        )
    entry = scheme(scheme_name)
    g = resolve_gain(entry.name, nonlinearity=nonlinearity, a=a, gain=gain)
    member = tuple(weight.shape[1:])
    if entry.distribution == "orthogonal":
        if weight[0].numel() == 0:
            return weight
        _orthogonal_(weight, g, generator)
        return weight
    if entry.distribution == "delta_orthogonal":
        _delta_orthogonal_(weight, g, generator)
        return weight
    std = math.sqrt(weight_variance(entry.name, member, mode=mode, gain=g))
    if entry.distribution == "uniform":
        bound = math.sqrt(3.0) * std
        return weight.uniform_(-bound, bound, generator=generator)
    if entry.distribution == "normal":
        return weight.normal_(0.0, std, generator=generator)
    # truncated normal at ±2σ, σ corrected so that the realized std is `std`
    sigma = std / TRUNC_STD
    return torch.nn.init.trunc_normal_(weight, 0.0, sigma, -2 * sigma, 2 * sigma, generator)
