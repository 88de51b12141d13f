"""Initialization schemes for stacked ensembles, following `torch.nn.init` exactly.

A stacked weight has shape (R, out, in, *kernel): R independent members, each of torch's own
layout. Fans are computed for ONE member, exactly as `torch.nn.init._calculate_fan_in_and_fan_out`
does for a single network's weight (fan_in = in·∏kernel, fan_out = out·∏kernel), never for the
stacked tensor.

Every scheme's weight variance comes from one function, `weight_variance`, which both the sampler
(`init_`) and the theory (`harness.theory.meanfield`) call, so code and prediction cannot drift apart:

====================  =========================  ==========================================
scheme                Var(W)                     distribution
====================  =========================  ==========================================
xavier_uniform        2g²/(fan_in+fan_out)       U(−b, b), b = g√(6/(fan_in+fan_out))
xavier_normal         2g²/(fan_in+fan_out)       N(0, Var)
kaiming_uniform       g²/fan_mode                U(−b, b), b = g√(3/fan_mode)
kaiming_normal        g²/fan_mode                N(0, Var)
orthogonal            g²/max(rows, cols)         g·Q, Q from the QR of a Gaussian (rows, cols)
delta_orthogonal      g²/(out·∏kernel)           centre tap g·Q (out×in, orthonormal columns),
                                                 every other tap 0 (Xiao et al. 2018)
torch_default         1/(3·fan_in)               kaiming_uniform_(a=√5): nn.Linear's default
trunc_normal          Var of N(μ, σ²) on [a, b]  torch's trunc_normal_(mean, std, a, b): absolute
                                                 bounds, no correction (Var < σ² when cut)
variance_scaling      scale/fan_mode             Keras/JAX VarianceScaling (below)
lecun_normal          1/fan_in                   preset: scale 1, fan_in, truncated_normal
lecun_uniform         1/fan_in                   preset: scale 1, fan_in, uniform
he_normal             2/fan_in                   preset: scale 2, fan_in, truncated_normal
he_uniform            2/fan_in                   preset: scale 2, fan_in, uniform
glorot_normal         2/(fan_in+fan_out)         preset: scale 1, fan_avg, truncated_normal
glorot_uniform        2/(fan_in+fan_out)         preset: scale 1, fan_avg, uniform
meanfield             σ_w²/fan_in                N(0, σ_w²/fan_in); biases N(0, σ_b²)
lsuv                  data-dependent             orthogonal, then rescaled per layer (harness.sim.lsuv)
====================  =========================  ==========================================

`xavier` and `kaiming` are short names for xavier_normal and kaiming_normal.

For delta_orthogonal the variance is the mean over all entries (the centre tap's entries have
mean square g²/out, the others are 0), so fan_in·Var(W) = g²·in/out, which is g² for square
layers; `tap_variances` gives the per-tap profile the position-resolved conv theory needs.

variance_scaling (Keras ``VarianceScaling``, JAX ``jax.nn.initializers.variance_scaling``):
Var = scale/fan with fan = fan_in | fan_out | fan_avg = (fan_in+fan_out)/2 | fan_geo_avg =
√(fan_in·fan_out) (JAX only), and distribution

- ``truncated_normal``: N(0, σ²) cut at ±2σ with σ = √(scale/fan)/0.87962566103423978, so the
  realized variance is scale/fan (Keras's and JAX's formula);
- ``untruncated_normal``: N(0, scale/fan);
- ``uniform``: U(−√(3·scale/fan), √(3·scale/fan)).

Keras and JAX lay a dense kernel out as (in, out) and a conv kernel as (*k, in, out); torch as
(out, in, *k). Their fans of the same layer are the same numbers, so fans here are computed
from torch's layout.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

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


#: every `mode`; torch's kaiming_* take only the first two, fan_geo_avg is JAX's
MODES = ("fan_in", "fan_out", "fan_avg", "fan_geo_avg")
TORCH_MODES = ("fan_in", "fan_out")
#: variance_scaling's `distribution` values (Keras's; JAX calls untruncated_normal "normal")
DISTRIBUTIONS = ("truncated_normal", "untruncated_normal", "uniform")


@dataclass(frozen=True)
class Scheme:
    """A registry entry: how one scheme draws a member's weight and which knobs it takes.

    `params` are the scheme's own parameters (the config keys under ``scheme``) with their
    defaults (None: resolved by `harness.core.spec.Spec`, e.g. kaiming's gain from the activation);
    when it is None they follow from the family (gain for xavier/kaiming/orthogonal,
    nonlinearity and a for kaiming). `modes` are the `mode` values the scheme uses (empty: it
    ignores mode). `preset` fixes a variance_scaling scheme's scale, mode and distribution.
    """

    name: str
    distribution: str  # uniform | normal | truncated_normal | orthogonal | delta_orthogonal
    #                    | trunc_normal | param
    family: str  # xavier | kaiming | orthogonal | delta_orthogonal | torch_default
    #              | variance_scaling | trunc_normal | meanfield | lsuv
    torch_name: str | None  # the torch.nn.init function it reproduces
    doc: str
    params: Mapping[str, Any] | None = None
    modes: tuple[str, ...] | None = None
    preset: Mapping[str, Any] | None = None

    @property
    def uses_mode(self) -> bool:
        return bool(self.mode_choices)

    @property
    def mode_choices(self) -> tuple[str, ...]:
        """The `mode` values this scheme uses (empty: it ignores mode)."""
        if self.modes is not None:
            return self.modes
        return TORCH_MODES if self.family == "kaiming" else ()

    @property
    def spectral_s1(self) -> float:
        """s_1, the first coefficient of the S-transform of WᵀW/σ_w² for a square layer
        (Pennington et al. 2017): 0 for orthogonal weights (every singular value equal), −1
        for iid entries of any distribution (Marchenko–Pastur at aspect ratio 1)."""
        return 0.0 if self.distribution in ("orthogonal", "delta_orthogonal") else -1.0

    @property
    def uses_nonlinearity(self) -> bool:
        return self.family == "kaiming"

    @property
    def uses_gain(self) -> bool:
        if self.params is not None:
            return "gain" in self.params
        return self.family in ("xavier", "kaiming", "orthogonal", "delta_orthogonal")

    @property
    def parameters(self) -> Mapping[str, Any]:
        """The scheme's own parameters (config keys under ``scheme``) with their defaults."""
        if self.params is not None:
            return self.params
        out: dict[str, Any] = {"gain": None} if self.uses_gain else {}
        if self.uses_nonlinearity:
            out.update(nonlinearity=None, a=None)
        return out


def _preset(name: str, scale: float, mode: str, distribution: str, doc: str) -> Scheme:
    return Scheme(name, distribution, "variance_scaling", None, doc, params={}, modes=(),
                  preset=MappingProxyType({"scale": scale, "mode": mode,
                                           "distribution": distribution}))


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
        _preset("lecun_normal", 1.0, "fan_in", "truncated_normal", "LeCun et al. 1998 (Keras/JAX)"),
        Scheme("torch_default", "uniform", "torch_default", "kaiming_uniform_", "nn.Linear"),
        Scheme("variance_scaling", "param", "variance_scaling", None,
               "Keras VarianceScaling / jax.nn.initializers.variance_scaling",
               params=MappingProxyType({"scale": 1.0, "distribution": "truncated_normal"}),
               modes=MODES),
        _preset("lecun_uniform", 1.0, "fan_in", "uniform", "LeCun et al. 1998 (Keras/JAX)"),
        _preset("he_normal", 2.0, "fan_in", "truncated_normal", "He et al. 2015 (Keras/JAX)"),
        _preset("he_uniform", 2.0, "fan_in", "uniform", "He et al. 2015 (Keras/JAX)"),
        _preset("glorot_normal", 1.0, "fan_avg", "truncated_normal",
                "Glorot & Bengio 2010 (Keras/JAX)"),
        _preset("glorot_uniform", 1.0, "fan_avg", "uniform", "Glorot & Bengio 2010 (Keras/JAX)"),
        Scheme("trunc_normal", "trunc_normal", "trunc_normal", "trunc_normal_",
               "torch.nn.init.trunc_normal_: absolute bounds [a, b], no std correction",
               params=MappingProxyType({"mean": 0.0, "std": 1.0, "a": -2.0, "b": 2.0})),
        Scheme("meanfield", "normal", "meanfield", None,
               "Poole et al. 2016, Schoenholz et al. 2017: W ~ N(0, σ_w²/fan_in), b ~ N(0, σ_b²)",
               params=MappingProxyType({"sigma_w2": 1.0, "sigma_b2": 0.0})),
        Scheme("lsuv", "orthogonal", "lsuv", None,
               "Mishkin & Matas 2016: orthogonal, then per-layer output variance 1 on a batch",
               params=MappingProxyType({"tol": 0.1, "max_iter": 10})),
    ]
}
ALIASES: dict[str, str] = {"xavier": "xavier_normal", "kaiming": "kaiming_normal"}
NAMES: tuple[str, ...] = (*SCHEMES, *ALIASES)


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


def _own_params(entry: Scheme, params: Mapping[str, Any]) -> dict[str, Any]:
    """The scheme's parameters: its defaults updated by `params` (unknown keys: ValueError)."""
    declared = entry.parameters
    unknown = sorted(set(params) - set(declared))
    if unknown:
        raise ValueError(
            f"scheme {entry.name} takes no parameter {unknown[0]!r}; its parameters: "
            f"{', '.join(declared) or 'none'}"
        )
    return {**declared, **{k: v for k, v in params.items() if v is not None}}


def resolve_gain(
    name: str,
    *,
    nonlinearity: str = "leaky_relu",
    a: float | None = 0.0,
    gain: float | None = None,
    **params: Any,
) -> float:
    """The gain g a scheme uses (the `gain` column of the results).

    torch_default: always calculate_gain('leaky_relu', √5) = √(1/3); variance_scaling and its
    presets: √scale; meanfield: √σ_w²; trunc_normal: nan (an absolute std, no gain); none of
    these takes a gain. Otherwise an explicit `gain` wins; else kaiming's
    calculate_gain(nonlinearity, a), and 1 for xavier, orthogonal and lsuv (its pre-init).
    """
    entry = scheme(name)
    fam = entry.family
    if fam == "torch_default":
        return calculate_gain("leaky_relu", math.sqrt(5.0))
    if fam == "variance_scaling":
        own = entry.preset if entry.preset is not None else _own_params(entry, params)
        return math.sqrt(float(own["scale"]))
    if fam == "meanfield":
        return math.sqrt(float(_own_params(entry, params)["sigma_w2"]))
    if fam == "trunc_normal":
        return math.nan
    if gain is not None:
        return float(gain)
    if fam == "kaiming":
        return float(calculate_gain(nonlinearity, 0.0 if a is None else a))
    return 1.0


def weight_variance(
    name: str,
    shape: tuple[int, ...] | torch.Size,
    *,
    mode: str = "fan_in",
    gain: float = 1.0,
    **params: Any,
) -> float:
    """Var(W) of one member's weight of `shape` under scheme `name` (see the table).

    `gain` is used by xavier, kaiming, orthogonal and lsuv (its orthogonal pre-init); `params`
    are the scheme's own (variance_scaling: scale; trunc_normal: mean, std, a, b; meanfield:
    sigma_w2; kaiming's nonlinearity and a are accepted and unused: pass the resolved gain).
    The theory's σ_w² is fan_in · weight_variance(...).
    """
    entry = scheme(name)
    own = _own_params(entry, params)
    fan_in, fan_out = fans(shape)
    if not entry.uses_gain:  # their gain is fixed (or they have none)
        gain = 1.0 if entry.family == "trunc_normal" else resolve_gain(entry.name, **own)
    g2 = gain * gain
    fam = entry.family
    if fam == "xavier":
        return 2.0 * g2 / (fan_in + fan_out)
    if fam == "kaiming":
        if mode not in TORCH_MODES:
            raise ValueError(f"Mode {mode} not supported, please use one of {', '.join(TORCH_MODES)}")
        return g2 / (fan_in if mode == "fan_in" else fan_out)
    if fam in ("orthogonal", "lsuv"):
        rows, cols = shape[0], math.prod(shape[1:])
        return g2 / max(rows, cols)
    if fam == "delta_orthogonal":  # mean over all taps; only the centre is nonzero
        return g2 / (shape[0] * math.prod(shape[2:]))
    if fam == "variance_scaling":
        m = entry.preset["mode"] if entry.preset is not None else mode
        return g2 / fan(shape, m)  # g² = scale
    if fam == "trunc_normal":
        return trunc_normal_moments(own["mean"], own["std"], own["a"], own["b"])[1]
    # torch_default (g² = 1/3) and meanfield (g² = σ_w²) scale by fan_in
    return g2 / fan_in


def tap_variances(
    name: str,
    shape: tuple[int, ...] | torch.Size,
    *,
    mode: str = "fan_in",
    gain: float = 1.0,
    **params: Any,
) -> np.ndarray:
    """E[W[:, :, t]²] per kernel tap t, an array of shape ``shape[2:]`` (a 0-d array for a
    Linear weight); its mean over taps is `weight_variance`.

    Every scheme but delta_orthogonal treats all taps alike; delta_orthogonal puts g²/out on
    the centre tap (an orthogonal out×in matrix with orthonormal columns) and 0 elsewhere.
    """
    kernel = tuple(shape[2:])
    var = weight_variance(name, shape, mode=mode, gain=gain, **params)
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
    if flat.is_cuda:
        q, r = torch.linalg.qr(flat)  # (R, max, min)
    else:  # batched CPU QR is ~100× slower than a loop with 2+ threads (torch 2.13)
        q, r = (torch.stack(t) for t in zip(*(torch.linalg.qr(m) for m in flat), strict=True))
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
    a: float | None = None,
    gain: float | None = None,
    generator: torch.Generator | None = None,
    **params: Any,
) -> torch.Tensor:
    """Fill a stacked weight (R, out, in, *kernel) in place, each member distributed exactly as
    the torch.nn.init function (or the Keras/JAX initializer) of that scheme would fill that
    member's own (out, in, *kernel) tensor.

    Args:
        weight: the stacked tensor; fans come from ``weight.shape[1:]``.
        scheme_name: one of `NAMES` (``xavier`` = xavier_normal, ``kaiming`` = kaiming_normal).
        mode: ``fan_in`` or ``fan_out`` (kaiming, as in torch); also ``fan_avg`` and
            ``fan_geo_avg`` for variance_scaling (Keras/JAX). Other schemes ignore it.
        nonlinearity, a: passed to `calculate_gain` by the kaiming schemes, as in torch
            (a default 0). For trunc_normal `a` is torch's lower bound (default −2).
        gain: overrides the scheme's gain (xavier, kaiming, orthogonal, lsuv).
        generator: the torch.Generator to draw from (on the weight's device).
        params: the scheme's own parameters: variance_scaling ``scale``, ``distribution``;
            trunc_normal ``mean``, ``std``, ``b``; meanfield ``sigma_w2`` (``sigma_b2`` is the
            biases'); lsuv ``tol``, ``max_iter`` (used by `harness.sim.lsuv`, not here).

    Std σ = √weight_variance(...); uniform variants draw U(−√3σ, √3σ); truncated normals of
    the variance_scaling family draw N(0, (σ/0.8796…)²) cut at ±2σ/0.8796…; trunc_normal is
    ``torch.nn.init.trunc_normal_(w, mean, std, a, b)`` itself (elementwise iid, so the stacked
    call equals one call per member). lsuv draws its orthogonal pre-init here. delta_orthogonal
    zeroes the weight and sets its centre tap to g·H, H (out, in) with orthonormal columns.

    >>> w = torch.empty(8, 64, 32)
    >>> _ = init_(w, "kaiming_normal", nonlinearity="relu")   # each member: std √(2/32)
    >>> _ = init_(w, "variance_scaling", scale=2.0, mode="fan_avg", distribution="uniform")
    """
    if weight.dim() < 3:
        raise ValueError(
            f"init_ needs a stacked weight (R, out, in, *kernel); got shape {tuple(weight.shape)}"
        )
    entry = scheme(scheme_name)
    if entry.family == "trunc_normal":
        own = _own_params(entry, {**params, "a": a})
        return torch.nn.init.trunc_normal_(
            weight, own["mean"], own["std"], own["a"], own["b"], generator
        )
    form = iid_form(entry.name, tuple(weight.shape[1:]), mode=mode, nonlinearity=nonlinearity,
                    a=a, gain=gain, **params)
    if form is not None:
        return draw_(weight, *form, generator=generator)
    own = _own_params(entry, params)
    own = {k: v for k, v in own.items() if k not in ("gain", "nonlinearity", "a")}
    g = resolve_gain(entry.name, nonlinearity=nonlinearity, a=a, gain=gain, **own)
    if entry.distribution == "orthogonal":
        if weight[0].numel() == 0:
            return weight
        _orthogonal_(weight, g, generator)
        return weight
    _delta_orthogonal_(weight, g, generator)
    return weight


def iid_form(
    scheme_name: str,
    shape: tuple[int, ...],
    *,
    mode: str = "fan_in",
    nonlinearity: str = "leaky_relu",
    a: float | None = None,
    gain: float | None = None,
    **params: Any,
) -> tuple[str, float] | None:
    """(kind, scale) such that one member's weight of `shape` is scale·Z with Z iid of `kind`:
    "normal" N(0, 1), "uniform" U(−1, 1), "truncated_normal" N(0, 1) cut at ±2 — for the
    schemes that draw iid entries with a std σ = √weight_variance (scale σ, √3σ and σ/0.8796…
    respectively). None for orthogonal, delta_orthogonal, lsuv and torch-semantics
    trunc_normal, which draw otherwise (`init_`)."""
    entry = scheme(scheme_name)
    if entry.family == "trunc_normal" or entry.distribution in ("orthogonal", "delta_orthogonal"):
        return None
    own = _own_params(entry, params)
    own = {k: v for k, v in own.items() if k not in ("gain", "nonlinearity", "a")}
    g = resolve_gain(entry.name, nonlinearity=nonlinearity, a=a, gain=gain, **own)
    std = math.sqrt(weight_variance(entry.name, shape, mode=mode, gain=g, **own))
    dist = entry.distribution
    if entry.family == "variance_scaling":
        dist = (entry.preset or own)["distribution"]
        if dist not in DISTRIBUTIONS:
            raise ValueError(f"unknown distribution {dist!r}; allowed: {', '.join(DISTRIBUTIONS)}")
        dist = {"untruncated_normal": "normal"}.get(dist, dist)
    if dist == "uniform":
        return "uniform", math.sqrt(3.0) * std
    if dist == "normal":
        return "normal", std
    return "truncated_normal", std / TRUNC_STD  # realized std: std


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
