"""The init-scheme registry: one entry per scheme, holding everything about it.

An entry declares its parameters (the config keys under ``scheme``) with their defaults and
checks, its mode choices, its variance Var(W) (the one function both the sampler and the theory
call), its sampler, its per-tap variances for conv kernels, how it resolves gain, nonlinearity
and a from the config and the activation (with the `gain_source` text a run reports), its own
checks of the rest of a config, and the torch.nn.init call a researcher would write for it.
Nothing outside an entry asks which scheme it is: it asks the entry.

Families share code by composition: xavier_uniform and xavier_normal are one class with a
different `distribution`, likewise kaiming; the Keras/JAX presets are `VarianceScaling` entries
with a fixed (scale, mode, distribution); lsuv is an orthogonal draw with its own parameters.

Checks of a config raise ValueError with a one-line message (what was wrong; what is allowed);
`harness.core.spec.Spec.from_config` turns them into ConfigError. Shapes are ONE member's
torch layout (out, in, *kernel); fans as `harness.core.sampling.fans`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, ClassVar, NamedTuple

import numpy as np
import torch

from harness.core import activations
from harness.core.sampling import (
    DISTRIBUTIONS,
    GAIN_NONLINEARITIES,
    MODES,
    TORCH_MODES,
    TRUNC_STD,
    calculate_gain,
    delta_orthogonal_,
    draw_,
    fan,
    fans,
    orthogonal_,
    trunc_normal_moments,
)

Shape = tuple[int, ...] | torch.Size
#: fills one weight (out, in, *kernel) in place from a torch.Generator
TorchInit = Callable[[torch.Tensor, torch.Generator], Any]


class Resolution(NamedTuple):
    """What a scheme makes of its config: the gain g (None: it has none), how g was chosen,
    kaiming's nonlinearity and a (else None), and its own resolved parameters."""

    gain: float | None
    gain_source: str
    nonlinearity: str | None
    a: float | None
    params: dict[str, Any]


def _is_number(v: Any) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _number(name: str, key: str, v: Any, *, minimum: float | None = None, strict: bool = False,
            integer: bool = False) -> float:
    """v if it is a (finite, or integer) number ≥ / > minimum, else ValueError naming scheme.key."""
    ok = (_is_int(v) if integer else _is_number(v)) and (
        minimum is None or (v > minimum if strict else v >= minimum))
    if not ok:
        kind = "an integer" if integer else "a finite number"
        bound = "" if minimum is None else (f" > {minimum:g}" if strict else f" ≥ {minimum:g}")
        raise ValueError(f"scheme {name}: scheme.{key} must be {kind}{bound}; got {v!r}")
    return v if integer else float(v)


def exact_gain(act: activations.Activation) -> float:
    """The forward-exact gain V_φ(1)^(-1/2): with σ_w² = g² (square layers, fan_in or xavier or
    orthogonal scaling) and no bias, q = 1 maps to σ_w² V_φ(1) = 1, a fixed point."""
    return float(1.0 / math.sqrt(float(act.V(1.0))))


def _exact_source(g: float) -> str:
    return (f"gain exact = V_φ(1)^(-1/2) = {g:.4g} (q* = 1 is a fixed point of square "
            f"layers without bias)")


# ---- the base entry -------------------------------------------------------------------------
@dataclass(frozen=True)
class Scheme:
    """A registry entry: one scheme's parameters, variance, sampler and config resolution.

    `distribution` is what a member's entries are drawn from (uniform | normal |
    truncated_normal | orthogonal | delta_orthogonal | trunc_normal | param: chosen by the
    ``distribution`` parameter); `torch_name` the torch.nn.init function it reproduces (None:
    there is none); `doc` its Var(W), distribution and reference.

    The base class is an iid scheme: `variance` is its Var(W) (given the resolved gain and own
    parameters), `iid_kind` names the standard variate Z and `iid_form` the scale of the draw
    scale·Z; a non-iid scheme (iid = False) draws in `sample_`. Subclasses override what differs.
    """

    name: str
    distribution: str
    doc: str
    torch_name: str | None = None

    #: the scheme's own parameters (config keys under ``scheme``) with their defaults
    PARAMS: ClassVar[Mapping[str, Any]] = MappingProxyType({})
    #: the `mode` values it uses (empty: it ignores mode)
    MODES: ClassVar[tuple[str, ...]] = ()
    #: s_1 of the S-transform of WᵀW/σ_w² for a square layer (Pennington et al. 2017): 0 for
    #: orthogonal weights (every singular value equal), −1 for iid entries (Marchenko–Pastur)
    spectral_s1: ClassVar[float] = -1.0
    #: whether the weights are rescaled on a calibration batch after the draw (harness.sim.lsuv)
    calibrates_on_data: ClassVar[bool] = False
    #: a descriptive label of the entry's family (ask the entry's methods; never branch on it)
    family: ClassVar[str] = ""
    #: whether a member's entries are iid, drawn as scale·Z (`iid_form`); else `sample_` draws
    iid: ClassVar[bool] = True
    #: the parameters the gain is resolved from, passed to `gain` rather than to the draw
    GAIN_KEYS: ClassVar[tuple[str, ...]] = ()

    # ---- parameters and modes -------------------------------------------------------------
    @property
    def parameters(self) -> Mapping[str, Any]:
        """The scheme's own parameters (config keys under ``scheme``) with their defaults
        (None: resolved from the config and the activation by `resolve`)."""
        return self.PARAMS

    @property
    def mode_choices(self) -> tuple[str, ...]:
        """The `mode` values this scheme uses (empty: it ignores mode)."""
        return self.MODES

    @property
    def uses_mode(self) -> bool:
        return bool(self.mode_choices)

    @property
    def uses_gain(self) -> bool:
        """Whether `scheme.gain` is one of its parameters (else its gain is fixed or absent)."""
        return "gain" in self.parameters

    def own(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """Its parameters: the defaults updated by the non-None `params` (unknown keys: ValueError)."""
        declared = self.parameters
        unknown = sorted(set(params) - set(declared))
        if unknown:
            raise ValueError(
                f"scheme {self.name} takes no parameter {unknown[0]!r}; its parameters: "
                f"{', '.join(declared) or 'none'}"
            )
        return {**declared, **{k: v for k, v in params.items() if v is not None}}

    def own_draw(self, params: Mapping[str, Any], a: float | None = None) -> dict[str, Any]:
        """`own` without the keys the gain is resolved from; `a` is `init_`'s argument, which is
        kaiming's slope (passed to `gain`), not an own parameter, except for trunc_normal."""
        return {k: v for k, v in self.own(params).items() if k not in self.GAIN_KEYS}

    # ---- config ---------------------------------------------------------------------------
    def check_mode(self, mode: str, name: str) -> None:
        """kaiming takes fan_in | fan_out (as torch); fan_avg | fan_geo_avg only variance_scaling;
        a scheme without mode choices accepts (and ignores) fan_in | fan_out."""
        choices = self.mode_choices
        if choices and mode not in choices:
            raise ValueError(
                f"unknown mode {mode!r}; allowed: {', '.join(choices)} for scheme {name} (torch's "
                f"kaiming_* take only these; fan_avg and fan_geo_avg are variance_scaling's)"
            )
        if not choices and mode not in TORCH_MODES:
            raise ValueError(
                f"mode {mode} is used only by variance_scaling (and fan_in/fan_out by kaiming); "
                f"scheme {name} takes no mode"
            )

    def resolve_config(
        self, sc: Mapping[str, Any], act: activations.Activation, mode: str, name: str
    ) -> Resolution:
        """Resolve the config's ``scheme`` mapping `sc` (named `name`, an alias or not) under
        `act` and `mode`: every key it sets must be a declared parameter; then `resolve`."""
        declared = self.parameters
        for key, val in sc.items():
            if key != "name" and val is not None and key not in declared:
                raise ValueError(
                    f"scheme {name} takes no {key} (its parameters: {', '.join(declared) or 'none'});"
                    f" got scheme.{key}={val!r}"
                )
        self.check_mode(mode, name)
        return self.resolve({k: sc.get(k) for k in declared}, act, name)

    def resolve(self, given: Mapping[str, Any], act: activations.Activation, name: str) -> Resolution:
        """The gain, its source text, nonlinearity, a and own parameters from the declared
        parameters' config values `given` (None: not set)."""
        raise NotImplementedError

    def bias_std(self, params: Mapping[str, Any], bias_std: float, name: str) -> float:
        """The biases' std given the resolved own `params` and the config's bias_std."""
        return bias_std

    def branch_scale(self, j: int, m: int, depth: int) -> float:
        """The factor on the standard deviation of weight layer j = 1..m of a residual branch of
        m layers, in a stack of `depth` blocks: 1 (the scheme draws every layer alike)."""
        return 1.0

    def check_branches(self, m: int | None) -> None:
        """ValueError (one line) if the scheme needs residual branches the architecture does not
        have; m = the layers per branch, None: the architecture has no residual branches."""

    def check_widths(self, widths: tuple[int, ...]) -> None:
        """Reject layer widths n_0..n_L (channels for conv) the scheme cannot draw."""

    # ---- the weights ----------------------------------------------------------------------
    def gain(self, params: Mapping[str, Any], *, gain: float | None = None,
             nonlinearity: str = "leaky_relu", a: float | None = 0.0) -> float:
        """The gain g it uses (the `gain` column): an explicit `gain` wins, else 1."""
        return float(gain) if gain is not None else 1.0

    def variance(self, shape: Shape, mode: str, gain: float, own: Mapping[str, Any]) -> float:
        """Var(W) of one member's weight of `shape` (see the class docstring); `gain` is the
        resolved g, `own` the resolved own parameters."""
        raise NotImplementedError

    def weight_variance(self, shape: Shape, *, mode: str = "fan_in", gain: float = 1.0,
                        params: Mapping[str, Any] = MappingProxyType({})) -> float:
        """Var(W) of one member's weight of `shape`: `variance` with the own parameters
        resolved and, for a scheme that takes no gain, its own fixed g in place of `gain`."""
        own = self.own(params)
        fans(shape)  # torch's error for a shape of fewer than 2 dims comes first
        if not self.uses_gain:  # their gain is fixed (or they have none)
            gain = self.gain(own)
        return self.variance(shape, mode, gain, own)

    def taps(self, kernel: tuple[int, ...], var: float) -> np.ndarray:
        """E[W[:, :, t]²] per kernel tap t of a weight of variance `var`: every tap alike."""
        return np.full(kernel, var)

    def tap_variances(self, shape: Shape, *, mode: str = "fan_in", gain: float = 1.0,
                      params: Mapping[str, Any] = MappingProxyType({})) -> np.ndarray:
        """E[W[:, :, t]²] per kernel tap t, shape ``shape[2:]``; its mean is `weight_variance`."""
        kernel = tuple(shape[2:])
        return self.taps(kernel, self.weight_variance(shape, mode=mode, gain=gain, params=params))

    def iid_kind(self, own: Mapping[str, Any]) -> str:
        """The standard variate Z of an iid scheme's draw scale·Z: "normal" N(0, 1), "uniform"
        U(−1, 1) or "truncated_normal" N(0, 1) cut at ±2."""
        return self.distribution

    def draws(self, own: Mapping[str, Any]) -> str:
        """The distribution a member's entries are drawn from, given its own parameters."""
        return self.distribution

    def iid_form(self, shape: Shape, *, mode: str = "fan_in", nonlinearity: str = "leaky_relu",
                 a: float | None = None, gain: float | None = None,
                 params: Mapping[str, Any] = MappingProxyType({})) -> tuple[str, float] | None:
        """(kind, scale) such that one member's weight is scale·Z, Z iid of `iid_kind`, with std
        σ = √weight_variance (scale σ, √3σ, σ/0.8796… for normal, uniform, truncated_normal);
        None if the scheme does not draw iid entries (`sample_` draws it)."""
        if not self.iid:
            return None
        own = self.own_draw(params)
        g = self.gain(own, gain=gain, nonlinearity=nonlinearity, a=a)
        std = math.sqrt(self.weight_variance(shape, mode=mode, gain=g, params=own))
        return _iid_scale(self.iid_kind(own), std)

    def sample_(self, weight: torch.Tensor, gain: float, own: Mapping[str, Any],
                generator: torch.Generator | None) -> torch.Tensor:
        """Fill the stacked weight (R, out, in, *kernel) of a non-iid scheme in place, with the
        resolved gain and own parameters."""
        raise NotImplementedError(f"scheme {self.name} draws iid entries (iid_form)")

    def init_(self, weight: torch.Tensor, *, mode: str = "fan_in", nonlinearity: str = "leaky_relu",
              a: float | None = None, gain: float | None = None,
              generator: torch.Generator | None = None,
              params: Mapping[str, Any] = MappingProxyType({})) -> torch.Tensor:
        """Fill the stacked weight (R, out, in, *kernel) in place, each member as the scheme's
        library function would fill its own (out, in, *kernel) tensor."""
        form = self.iid_form(tuple(weight.shape[1:]), mode=mode, nonlinearity=nonlinearity, a=a,
                             gain=gain, params=params)
        if form is not None:
            return draw_(weight, *form, generator=generator)
        own = self.own_draw(params, a)
        return self.sample_(weight, self.gain(own, gain=gain, nonlinearity=nonlinearity, a=a), own,
                            generator)

    def torch_init(self, gain: float | None, mode: str, nonlinearity: str | None,
                   a: float | None) -> TorchInit | None:
        """The torch.nn.init call a researcher would write for one weight (None: there is none)."""
        return None


def _iid_scale(kind: str, std: float) -> tuple[str, float]:
    """(kind, scale) with scale·Z of standard deviation `std`: U(−1, 1) has std 1/√3, N(0, 1) cut
    at ±2 has std TRUNC_STD."""
    if kind == "uniform":
        return "uniform", math.sqrt(3.0) * std
    if kind == "normal":
        return "normal", std
    return "truncated_normal", std / TRUNC_STD  # realized std: std


# ---- torch's schemes with a gain --------------------------------------------------------------
@dataclass(frozen=True)
class TorchGain(Scheme):
    """A scheme whose gain is `scheme.gain`: a number > 0, ``exact`` (V_φ(1)^(-1/2)) or null
    (1, `default_source`)."""

    default_source: str = "gain 1 (torch's default)"
    PARAMS: ClassVar[Mapping[str, Any]] = MappingProxyType({"gain": None})
    GAIN_KEYS: ClassVar[tuple[str, ...]] = ("gain", "nonlinearity", "a")

    def _check_gain(self, given: Mapping[str, Any]) -> None:
        gain, a = given.get("gain"), given.get("a")
        if gain is not None and gain != "exact" and not (_is_number(gain) and gain > 0):
            raise ValueError(f"scheme.gain must be a finite number > 0 or exact; got {gain!r}")
        if a is not None and not _is_number(a):
            raise ValueError(f"scheme.a must be a number; got {a!r}")

    def resolve(self, given: Mapping[str, Any], act: activations.Activation, name: str) -> Resolution:
        self._check_gain(given)
        gain = given.get("gain")
        if gain == "exact":
            g = exact_gain(act)
            return Resolution(g, _exact_source(g), None, None, {})
        if gain is not None:
            return Resolution(float(gain), f"gain {float(gain):g} (set by scheme.gain)", None, None, {})
        return Resolution(1.0, self.default_source, None, None, {})

    def torch_init(self, gain: float | None, mode: str, nonlinearity: str | None,
                   a: float | None) -> TorchInit | None:
        if self.torch_name is None:
            return None
        fn = getattr(torch.nn.init, self.torch_name)
        return lambda w, g: fn(w, gain=gain, generator=g)


@dataclass(frozen=True)
class Xavier(TorchGain):
    """Fill each member's weight with values from a Xavier (Glorot) uniform or normal
    distribution, as torch.nn.init.xavier_uniform_ / xavier_normal_.

    The method is described in `Understanding the difficulty of training deep feedforward neural
    networks` - Glorot, X. & Bengio, Y. (2010).

        Var(W) = 2g²/(fan_in + fan_out);  uniform: U(−b, b), b = g·√(6/(fan_in + fan_out));
        normal: N(0, Var(W)).  g = scheme.gain (default 1).
    """

    family: ClassVar[str] = "xavier"

    def variance(self, shape: Shape, mode: str, gain: float, own: Mapping[str, Any]) -> float:
        fan_in, fan_out = fans(shape)
        return 2.0 * (gain * gain) / (fan_in + fan_out)


@dataclass(frozen=True)
class Kaiming(TorchGain):
    """Fill each member's weight with values from a Kaiming (He) uniform or normal
    distribution, as torch.nn.init.kaiming_uniform_ / kaiming_normal_.

    The method is described in `Delving deep into rectifiers: Surpassing human-level performance
    on ImageNet classification` - He, K. et al. (2015).

        Var(W) = g²/fan_mode, mode fan_in | fan_out;  uniform: U(−b, b), b = g·√(3/fan_mode);
        normal: N(0, Var(W)).

    g = calculate_gain(nonlinearity, a) unless scheme.gain is set; the nonlinearity follows the
    activation where calculate_gain knows it (else torch's default leaky_relu, a = 0), a is the
    activation's negative_slope for leaky_relu (else 0).
    """

    family: ClassVar[str] = "kaiming"
    PARAMS: ClassVar[Mapping[str, Any]] = MappingProxyType({"gain": None, "nonlinearity": None,
                                                            "a": None})
    MODES: ClassVar[tuple[str, ...]] = TORCH_MODES

    def resolve(self, given: Mapping[str, Any], act: activations.Activation, name: str) -> Resolution:
        self._check_gain(given)
        gain, nonlinearity, a = given.get("gain"), given.get("nonlinearity"), given.get("a")
        if gain is not None and gain != "exact":
            g = float(gain)
            return Resolution(g, f"gain {g:g} (set by scheme.gain)", nonlinearity, a, {})
        # the nonlinearity follows act where calculate_gain knows it
        note = ""
        if nonlinearity is None:
            if act.kind.gain_name is not None:
                nonlinearity = act.kind.gain_name
                note = "follows act"
            else:
                nonlinearity = "leaky_relu"
                note = f"torch's default: calculate_gain does not know {act.name}"
                a = 0.0 if a is None else a
        elif nonlinearity not in GAIN_NONLINEARITIES:
            raise ValueError(
                f"scheme.nonlinearity {nonlinearity!r} is not one calculate_gain knows; allowed: "
                f"{', '.join(GAIN_NONLINEARITIES)}"
            )
        if a is None:
            a = act.gain_param if (nonlinearity == "leaky_relu" and act.gain_param is not None) else 0.0
        if gain == "exact":
            g = exact_gain(act)
            return Resolution(g, _exact_source(g), nonlinearity, float(a), {})
        g = float(calculate_gain(nonlinearity, float(a)))
        arg = f", a={a:g}" if nonlinearity == "leaky_relu" else ""
        source = f"calculate_gain('{nonlinearity}'{arg}) = {g:.4g}" + (f" ({note})" if note else "")
        return Resolution(g, source, nonlinearity, float(a), {})

    def gain(self, params: Mapping[str, Any], *, gain: float | None = None,
             nonlinearity: str = "leaky_relu", a: float | None = 0.0) -> float:
        """An explicit `gain` wins, else calculate_gain(nonlinearity, a) (a None: 0)."""
        if gain is not None:
            return float(gain)
        return float(calculate_gain(nonlinearity, 0.0 if a is None else a))

    def variance(self, shape: Shape, mode: str, gain: float, own: Mapping[str, Any]) -> float:
        fan_in, fan_out = fans(shape)
        if mode not in TORCH_MODES:
            raise ValueError(f"Mode {mode} not supported, please use one of {', '.join(TORCH_MODES)}")
        return gain * gain / (fan_in if mode == "fan_in" else fan_out)

    def torch_init(self, gain: float | None, mode: str, nonlinearity: str | None,
                   a: float | None) -> TorchInit | None:
        fn = getattr(torch.nn.init, self.torch_name)  # type: ignore[arg-type]
        # the gain is applied through calculate_gain(nonlinearity, a) exactly as the harness does
        nl, slope = nonlinearity or "leaky_relu", a or 0.0
        if torch.nn.init.calculate_gain(nl, slope) == gain:
            return lambda w, g: fn(w, a=slope, mode=mode, nonlinearity=nl, generator=g)
        # an explicit gain: kaiming has none in torch; linear nonlinearity + scale
        return lambda w, g: fn(w, mode=mode, nonlinearity="linear", generator=g).mul_(gain)


@dataclass(frozen=True)
class Fixup(Kaiming):
    """Fixup (Zhang, Dauphin & Ma 2019, "Fixup initialization: residual learning without
    normalization"): in a stack of L residual blocks with m ≥ 2 weight layers per branch, each
    branch's last layer is 0 and its other layers are kaiming-initialized and scaled by
    L^(−1/(2m−2)):

        Var(W) = g²/fan_mode · L^(−1/(m−1)) for branch layers j < m,  Var(W) = 0 for j = m;

    `variance` is kaiming's (normal); the branch factor is `branch_scale`, which the residual
    architecture applies to the draw and to the theory alike.
    """

    family: ClassVar[str] = "fixup"

    def branch_scale(self, j: int, m: int, depth: int) -> float:
        """0 for the branch's last layer (j = m), L^(−1/(2m−2)) for the others."""
        return 0.0 if j == m else float(depth) ** (-1.0 / (2 * m - 2))

    def check_branches(self, m: int | None) -> None:
        """Fixup needs residual branches of m ≥ 2 layers."""
        if m is None or m < 2:
            got = "no residual branches" if m is None else f"residual.branch_depth={m}"
            raise ValueError(f"scheme fixup zeroes each residual branch's last layer and scales the "
                             f"others by L^(-1/(2m-2)): it needs residual blocks with "
                             f"residual.branch_depth ≥ 2; got {got}")


@dataclass(frozen=True)
class Orthogonal(TorchGain):
    """Fill each member's weight with a (semi-)orthogonal matrix, as torch.nn.init.orthogonal_.

    The method is described in `Exact solutions to the nonlinear dynamics of learning in deep
    linear neural networks` - Saxe, A. et al. (2014).

        W = g·Q, Q (rows, cols = in·∏kernel) with orthonormal rows or columns (the QR of a
        Gaussian matrix);  Var(W) = g²/max(rows, cols).  g = scheme.gain (default 1).
    """

    family: ClassVar[str] = "orthogonal"
    spectral_s1: ClassVar[float] = 0.0

    def variance(self, shape: Shape, mode: str, gain: float, own: Mapping[str, Any]) -> float:
        rows, cols = shape[0], math.prod(shape[1:])
        return gain * gain / max(rows, cols)

    iid: ClassVar[bool] = False

    def sample_(self, weight: torch.Tensor, gain: float, own: Mapping[str, Any],
                generator: torch.Generator | None) -> torch.Tensor:
        if weight[0].numel() == 0:
            return weight
        orthogonal_(weight, gain, generator)
        return weight


@dataclass(frozen=True)
class DeltaOrthogonal(Orthogonal):
    """Fill each member's kernel with a delta-orthogonal one; there is no torch function.

    The method is described in `Dynamical isometry and a mean field theory of CNNs: how to train
    10,000-layer vanilla convolutional neural networks` - Xiao, L. et al. (2018), Algorithm 2.

        centre tap g·H, H (out, in) with orthonormal columns (needs in ≤ out), every other tap 0;
        Var(W) = g²/(out·∏kernel), the mean over all taps (fan_in·Var(W) = g²·in/out);
        `taps`: g²/out on the centre tap.  g = scheme.gain (default 1).
    """

    default_source: str = "gain 1 (the default; no torch function)"
    family: ClassVar[str] = "delta_orthogonal"

    def variance(self, shape: Shape, mode: str, gain: float, own: Mapping[str, Any]) -> float:
        return gain * gain / (shape[0] * math.prod(shape[2:]))  # only the centre tap is nonzero

    def taps(self, kernel: tuple[int, ...], var: float) -> np.ndarray:
        """Var(W)·∏kernel = g²/out on the centre tap, 0 on every other."""
        taps = np.zeros(kernel)
        taps[tuple(k // 2 for k in kernel)] = var * math.prod(kernel)
        return taps

    def check_widths(self, widths: tuple[int, ...]) -> None:
        """The centre tap has orthonormal columns only if C_in ≤ C_out at every layer."""
        for l in range(1, len(widths)):
            if widths[l - 1] > widths[l]:
                raise ValueError(
                    f"scheme delta_orthogonal needs C_in ≤ C_out at every layer (an orthogonal "
                    f"C_out×C_in centre tap); layer {l} has C_in={widths[l - 1]} > C_out={widths[l]}"
                )

    def sample_(self, weight: torch.Tensor, gain: float, own: Mapping[str, Any],
                generator: torch.Generator | None) -> torch.Tensor:
        delta_orthogonal_(weight, gain, generator)
        return weight


# ---- schemes with a fixed gain or their own parameters ---------------------------------------
@dataclass(frozen=True)
class TorchDefault(Scheme):
    """Fill each member's weight as nn.Linear (and nn.Conv*) does by default:
    torch.nn.init.kaiming_uniform_(w, a=√5).

        g = calculate_gain('leaky_relu', √5) = √(1/3);  Var(W) = g²/fan_in = 1/(3·fan_in);
        W ~ U(−1/√fan_in, 1/√fan_in).  Takes no parameters.
    """

    family: ClassVar[str] = "torch_default"

    def gain(self, params: Mapping[str, Any], *, gain: float | None = None,
             nonlinearity: str = "leaky_relu", a: float | None = 0.0) -> float:
        """Always calculate_gain('leaky_relu', √5) = √(1/3)."""
        return calculate_gain("leaky_relu", math.sqrt(5.0))

    def resolve(self, given: Mapping[str, Any], act: activations.Activation, name: str) -> Resolution:
        g = self.gain(given)
        return Resolution(g, f"kaiming_uniform_(a=√5): gain √(1/3) = {g:.4g}", None, None, {})

    def variance(self, shape: Shape, mode: str, gain: float, own: Mapping[str, Any]) -> float:
        return gain * gain / fans(shape)[0]  # g² = 1/3

    def torch_init(self, gain: float | None, mode: str, nonlinearity: str | None,
                   a: float | None) -> TorchInit | None:
        return lambda w, g: torch.nn.init.kaiming_uniform_(w, a=math.sqrt(5), generator=g)


@dataclass(frozen=True)
class VarianceScaling(Scheme):
    """Fill each member's weight as Keras ``VarianceScaling`` /
    ``jax.nn.initializers.variance_scaling`` does, or one of their presets.

        Var(W) = scale/fan, fan = fan_in | fan_out | fan_avg = (fan_in + fan_out)/2 |
        fan_geo_avg = √(fan_in·fan_out) (JAX only);
        truncated_normal: N(0, σ²) cut at ±2σ, σ = √(scale/fan)/0.8796…, so Var(W) = scale/fan;
        untruncated_normal: N(0, scale/fan);  uniform: U(−√(3·scale/fan), √(3·scale/fan)).

    A preset fixes scale, mode and distribution and takes no parameters: lecun_* (`Efficient
    BackProp` - LeCun, Y. et al. (1998)): 1, fan_in; he_* (He et al. 2015): 2, fan_in;
    glorot_* (Glorot & Bengio 2010): 1, fan_avg. g = √scale.
    """

    preset: Mapping[str, Any] | None = None
    family: ClassVar[str] = "variance_scaling"
    PARAMS: ClassVar[Mapping[str, Any]] = MappingProxyType({"scale": 1.0,
                                                            "distribution": "truncated_normal"})

    @property
    def parameters(self) -> Mapping[str, Any]:
        return MappingProxyType({}) if self.preset is not None else self.PARAMS

    @property
    def mode_choices(self) -> tuple[str, ...]:
        return () if self.preset is not None else MODES

    def gain(self, params: Mapping[str, Any], *, gain: float | None = None,
             nonlinearity: str = "leaky_relu", a: float | None = 0.0) -> float:
        """√scale (a preset's, else its parameter's)."""
        own = self.preset if self.preset is not None else self.own(params)
        return math.sqrt(float(own["scale"]))

    def resolve(self, given: Mapping[str, Any], act: activations.Activation, name: str) -> Resolution:
        if self.preset is not None:
            pr = self.preset
            return Resolution(math.sqrt(pr["scale"]), (f"Keras/JAX {name}: scale {pr['scale']:g}, "
                                                       f"{pr['mode']}, {pr['distribution']}"),
                              None, None, {})
        p = {k: (self.PARAMS[k] if v is None else v) for k, v in given.items()}
        p["scale"] = _number(name, "scale", p["scale"], minimum=0.0, strict=True)
        if p["distribution"] not in DISTRIBUTIONS:
            hint = (" ('normal' is ambiguous: Keras reads it as truncated_normal, JAX as "
                    "untruncated_normal)") if p["distribution"] == "normal" else ""
            raise ValueError(f"unknown scheme.distribution {p['distribution']!r}{hint}; allowed: "
                             f"{', '.join(DISTRIBUTIONS)}")
        g = math.sqrt(p["scale"])
        return Resolution(g, f"variance_scaling: scale {p['scale']:g}, {p['distribution']}", None, None, p)

    def variance(self, shape: Shape, mode: str, gain: float, own: Mapping[str, Any]) -> float:
        m = self.preset["mode"] if self.preset is not None else mode
        return gain * gain / fan(shape, m)  # g² = scale

    def draws(self, own: Mapping[str, Any]) -> str:
        return (self.preset if self.preset is not None else own)["distribution"]

    def iid_kind(self, own: Mapping[str, Any]) -> str:
        dist = self.draws(own)
        if dist not in DISTRIBUTIONS:
            raise ValueError(f"unknown distribution {dist!r}; allowed: {', '.join(DISTRIBUTIONS)}")
        return {"untruncated_normal": "normal"}.get(dist, dist)


def _preset(name: str, scale: float, mode: str, distribution: str, reference: str) -> VarianceScaling:
    return VarianceScaling(
        name, distribution,
        f"Var(W) = {scale:g}/{mode}, {distribution}: variance_scaling(scale={scale:g}, mode={mode}, "
        f"distribution={distribution}). {reference} (Keras/JAX).",
        preset=MappingProxyType({"scale": scale, "mode": mode, "distribution": distribution}))


@dataclass(frozen=True)
class TruncNormal(Scheme):
    """Fill each member's weight as torch.nn.init.trunc_normal_(w, mean, std, a, b):
    N(mean, std²) cut at the ABSOLUTE bounds [a, b], no std correction, no fan scaling.

        α = (a − μ)/σ, β = (b − μ)/σ, Z = Φ(β) − Φ(α):
        Var(W) = σ²[1 + (αϕ(α) − βϕ(β))/Z − ((ϕ(α) − ϕ(β))/Z)²]  (`trunc_normal_moments`).

    A run needs zero-mean weights (mean 0, a = −b > 0), which the theory assumes. It has no
    gain (nan).
    """

    family: ClassVar[str] = "trunc_normal"
    PARAMS: ClassVar[Mapping[str, Any]] = MappingProxyType({"mean": 0.0, "std": 1.0, "a": -2.0,
                                                            "b": 2.0})

    def gain(self, params: Mapping[str, Any], *, gain: float | None = None,
             nonlinearity: str = "leaky_relu", a: float | None = 0.0) -> float:
        """nan: its std is absolute, there is no gain."""
        return math.nan

    def resolve(self, given: Mapping[str, Any], act: activations.Activation, name: str) -> Resolution:
        p = {k: (self.PARAMS[k] if v is None else v) for k, v in given.items()}
        for k in ("mean", "a", "b"):
            p[k] = _number(name, k, p[k])
        p["std"] = _number(name, "std", p["std"], minimum=0.0, strict=True)
        if not (p["mean"] == 0.0 and p["a"] == -p["b"] and p["b"] > 0):
            raise ValueError(
                f"scheme trunc_normal: the theory needs zero-mean weights, so mean 0 and a = −b > 0;"
                f" got mean={p['mean']:g}, a={p['a']:g}, b={p['b']:g}"
            )
        var = trunc_normal_moments(p["mean"], p["std"], p["a"], p["b"])[1]
        k = p["b"] / p["std"]
        cut = f"cut at ±{k:.3g}σ" + (" (in effect untruncated)" if k >= 6 else "")
        return Resolution(None, (f"trunc_normal_(std={p['std']:g}, a={p['a']:g}, b={p['b']:g}): "
                                 f"{cut}, Var(W) = {var:.4g}, no fan scaling"), None, None, p)

    iid: ClassVar[bool] = False  # iid, but torch's own trunc_normal_ draws it (absolute bounds)

    def variance(self, shape: Shape, mode: str, gain: float, own: Mapping[str, Any]) -> float:
        return trunc_normal_moments(own["mean"], own["std"], own["a"], own["b"])[1]

    def own_draw(self, params: Mapping[str, Any], a: float | None = None) -> dict[str, Any]:
        """`init_`'s `a` is trunc_normal's lower bound (None: the default −2)."""
        return self.own({**params, "a": a})

    def sample_(self, weight: torch.Tensor, gain: float, own: Mapping[str, Any],
                generator: torch.Generator | None) -> torch.Tensor:
        return torch.nn.init.trunc_normal_(weight, own["mean"], own["std"], own["a"], own["b"],
                                           generator)


@dataclass(frozen=True)
class MeanField(Scheme):
    """Fill each member's weight in the mean-field parametrization.

    The method is described in `Exponential expressivity in deep neural networks through
    transient chaos` - Poole, B. et al. (2016) and `Deep information propagation` - Schoenholz,
    S. et al. (2017).

        W ~ N(0, σ_w²/fan_in), Var(W) = σ_w²/fan_in;  b ~ N(0, σ_b²) (sigma_b2 replaces
        bias_std).  g = √σ_w².
    """

    family: ClassVar[str] = "meanfield"
    PARAMS: ClassVar[Mapping[str, Any]] = MappingProxyType({"sigma_w2": 1.0, "sigma_b2": 0.0})

    def gain(self, params: Mapping[str, Any], *, gain: float | None = None,
             nonlinearity: str = "leaky_relu", a: float | None = 0.0) -> float:
        """√σ_w²."""
        return math.sqrt(float(self.own(params)["sigma_w2"]))

    def resolve(self, given: Mapping[str, Any], act: activations.Activation, name: str) -> Resolution:
        p = {k: (self.PARAMS[k] if v is None else v) for k, v in given.items()}
        p["sigma_w2"] = _number(name, "sigma_w2", p["sigma_w2"], minimum=0.0, strict=True)
        p["sigma_b2"] = _number(name, "sigma_b2", p["sigma_b2"], minimum=0.0)
        return Resolution(math.sqrt(p["sigma_w2"]),
                          f"σ_w² = {p['sigma_w2']:g}, σ_b² = {p['sigma_b2']:g}", None, None, p)

    def bias_std(self, params: Mapping[str, Any], bias_std: float, name: str) -> float:
        """√σ_b², so that σ_w² and σ_b² go together; bias_std itself must stay 0."""
        if bias_std != 0.0:
            raise ValueError(
                f"scheme {name} sets the bias variance with scheme.sigma_b2; leave "
                f"bias_std at 0 (got bias_std={bias_std:g})"
            )
        return math.sqrt(params["sigma_b2"])

    def variance(self, shape: Shape, mode: str, gain: float, own: Mapping[str, Any]) -> float:
        return gain * gain / fans(shape)[0]  # g² = σ_w²


@dataclass(frozen=True)
class LSUV(Orthogonal):
    """Draw each member's weight orthogonally for LSUV; the calibration is `harness.sim.lsuv`.

    The method is described in `All you need is a good init` - Mishkin, D. & Matas, J. (2016).

        pre-init: Var(W) = 1/max(rows, cols) (orthogonal, gain 1); then layer by layer each
        network's weight is divided by the std of its output on a calibration batch until
        |Var − 1| < tol (at most max_iter times), so the realized Var(W) is data-dependent.
    """

    family: ClassVar[str] = "lsuv"
    calibrates_on_data: ClassVar[bool] = True
    PARAMS: ClassVar[Mapping[str, Any]] = MappingProxyType({"tol": 0.1, "max_iter": 10})
    GAIN_KEYS: ClassVar[tuple[str, ...]] = ()

    def resolve(self, given: Mapping[str, Any], act: activations.Activation, name: str) -> Resolution:
        p = {k: (self.PARAMS[k] if v is None else v) for k, v in given.items()}
        p["tol"] = _number(name, "tol", p["tol"], minimum=0.0, strict=True)
        p["max_iter"] = _number(name, "max_iter", p["max_iter"], minimum=1, integer=True)
        return Resolution(1.0, (f"orthogonal pre-init, then each layer rescaled until its output "
                                f"variance is 1 ± {p['tol']:g} (≤ {p['max_iter']} iterations)"),
                          None, None, p)

    def torch_init(self, gain: float | None, mode: str, nonlinearity: str | None,
                   a: float | None) -> TorchInit | None:
        return None  # data-dependent: the harness's own pre-init


# ---- the registry -----------------------------------------------------------------------------
_GLOROT = 'Glorot & Bengio 2010, "Understanding the difficulty of training deep feedforward neural networks"'
_HE = 'He et al. 2015, "Delving deep into rectifiers"'
_LECUN = 'LeCun et al. 1998, "Efficient BackProp"'

SCHEMES: dict[str, Scheme] = {
    s.name: s
    for s in [
        Xavier("xavier_uniform", "uniform", "Var(W) = 2g²/(fan_in+fan_out), U(−b, b), "
               f"b = g√(6/(fan_in+fan_out)). {_GLOROT}.", "xavier_uniform_"),
        Xavier("xavier_normal", "normal", f"Var(W) = 2g²/(fan_in+fan_out), N(0, Var). {_GLOROT}.",
               "xavier_normal_"),
        Kaiming("kaiming_uniform", "uniform", f"Var(W) = g²/fan_mode, U(−b, b), b = g√(3/fan_mode). "
                f"{_HE}.", "kaiming_uniform_"),
        Kaiming("kaiming_normal", "normal", f"Var(W) = g²/fan_mode, N(0, Var). {_HE}.",
                "kaiming_normal_"),
        Orthogonal("orthogonal", "orthogonal", "Var(W) = g²/max(rows, cols), g·Q with Q orthogonal. "
                   'Saxe et al. 2014, "Exact solutions to the nonlinear dynamics of learning".',
                   "orthogonal_"),
        DeltaOrthogonal("delta_orthogonal", "delta_orthogonal",
                        "Var(W) = g²/(out·∏kernel): centre tap g·H, H (out, in) orthonormal "
                        'columns, other taps 0. Xiao et al. 2018, "Dynamical isometry and a mean '
                        'field theory of CNNs".'),
        _preset("lecun_normal", 1.0, "fan_in", "truncated_normal", _LECUN),
        TorchDefault("torch_default", "uniform", "Var(W) = 1/(3·fan_in), U(−1/√fan_in, 1/√fan_in): "
                     "nn.Linear's default, kaiming_uniform_(a=√5).", "kaiming_uniform_"),
        VarianceScaling("variance_scaling", "param",
                        "Var(W) = scale/fan(mode), truncated_normal | untruncated_normal | uniform. "
                        "Keras VarianceScaling / jax.nn.initializers.variance_scaling."),
        _preset("lecun_uniform", 1.0, "fan_in", "uniform", _LECUN),
        _preset("he_normal", 2.0, "fan_in", "truncated_normal", _HE),
        _preset("he_uniform", 2.0, "fan_in", "uniform", _HE),
        _preset("glorot_normal", 1.0, "fan_avg", "truncated_normal", _GLOROT),
        _preset("glorot_uniform", 1.0, "fan_avg", "uniform", _GLOROT),
        TruncNormal("trunc_normal", "trunc_normal", "Var(W) = the variance of N(mean, std²) on "
                    "[a, b]: torch.nn.init.trunc_normal_, absolute bounds, no std correction.",
                    "trunc_normal_"),
        MeanField("meanfield", "normal", "Var(W) = σ_w²/fan_in, N(0, Var); b ~ N(0, σ_b²). "
                  "Poole et al. 2016, Schoenholz et al. 2017."),
        Fixup("fixup", "normal", "Var(W) = g²/fan_mode · L^(−1/(m−1)) inside a residual branch, "
              "0 for its last layer. Zhang, Dauphin & Ma 2019, \"Fixup initialization\".",
              "kaiming_normal_"),
        LSUV("lsuv", "orthogonal", "Var(W) data-dependent: orthogonal, then per-layer output "
             'variance 1 on a batch. Mishkin & Matas 2016, "All you need is a good init".'),
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
