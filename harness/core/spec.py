"""`Spec`: the validated, frozen description of one run, built once from the Hydra config.

Every error in a config is caught here, once, with a message naming the key, what was wrong and
what is allowed; nothing downstream re-validates.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from harness import archs
from harness.archs.base import INPUT_CORR, JACOBIAN, LSUV
from harness.core import activations
from harness.core import init as inits
from harness.core.validate import ConfigError
from harness.core.validate import choice as _choice
from harness.core.validate import integer as _int
from harness.core.validate import is_int as _is_int
from harness.core.validate import is_number as _is_number
from harness.core.validate import number as _float

__all__ = ["ALL_QUANTITIES", "DEVICES", "DTYPES", "ConfigError", "Spec", "exact_gain"]

DEVICES = ("auto", "cpu", "cuda")
DTYPES = {"float32": torch.float32, "float64": torch.float64}
#: every quantity some architecture measures, in report order
ALL_QUANTITIES = archs.all_quantities()


@dataclass(frozen=True)
class Spec:
    """One run: the network, its initialization, the inputs and where to compute.

    widths = (n_0, n_1, …, n_L); layer l's weight has torch's layout (n_l, n_{l-1}, *kernel)
    (`weight_shapes`, from the architecture's registry entry, `harness.archs`). The
    architectures' own keys (arch=conv's kernel, image, padding_mode, conv_dim) are fields here,
    validated by their entry, None for the other architectures.
    """

    depth: int
    widths: tuple[int, ...]
    width: int | None
    scheme: str
    mode: str
    gain: float | None  # None: the scheme has no gain (trunc_normal's std is absolute)
    gain_source: str
    nonlinearity: str | None
    a: float | None
    act: str
    act_params: tuple[tuple[str, float], ...]
    bias_std: float
    input_var: float
    batch: int
    replicates: int
    seed: int
    device: str
    dtype: str
    arch: str = "mlp"
    memory_budget_mb: float = 2048.0
    kernel: int | None = None
    image: int | None = None
    padding_mode: str | None = None
    conv_dim: int | None = None
    #: the scheme's own resolved parameters beyond gain/nonlinearity/a (e.g. variance_scaling's
    #: scale and distribution, meanfield's sigma_w2 and sigma_b2), as (key, value) pairs
    scheme_params: tuple[tuple[str, Any], ...] = ()
    #: pairwise correlation of the inputs: x_b = √input_var (√c z + √(1−c) z_b)
    input_corr: float = 0.0
    #: inputs per replicate at which the exact input-output Jacobian is formed (0: not measured)
    jacobian: int = 0

    # ---- derived views ------------------------------------------------------------------
    @property
    def activation(self) -> activations.Activation:
        return activations.get(self.act, **dict(self.act_params))

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def architecture(self) -> archs.Architecture:
        """The registry entry of `arch` (`harness.archs`)."""
        return archs.get(self.arch)

    @property
    def spatial(self) -> tuple[int, ...]:
        """The spatial shape of every layer: () for an MLP, (image,)·conv_dim for a conv."""
        return self.architecture.spatial(self)

    @property
    def kernel_shape(self) -> tuple[int, ...]:
        """The kernel's spatial shape: () for an MLP, (k,)·conv_dim for a conv."""
        return self.architecture.kernel_shape(self)

    @property
    def quantities(self) -> tuple[str, ...]:
        """The quantities measured for this run, as its architecture says: an MLP measures the
        correlation between inputs when it has at least two (batch ≥ 2) and jacobian_* with
        jacobian=k; a conv the channel statistics."""
        return self.architecture.quantities(self)

    @property
    def weight_shapes(self) -> list[tuple[int, ...]]:
        """One member's weight shape per layer, l = 1..L: (n_l, n_{l-1}) for an MLP,
        (C_l, C_{l-1}, *kernel_shape) for a conv."""
        return self.architecture.weight_shapes(self)

    def weight_variances(self) -> list[float]:
        """Var(W^l) per layer, from the one function the sampler uses too."""
        return [
            inits.weight_variance(self.scheme, s, mode=self.mode, gain=self.gain,
                                  **dict(self.scheme_params))
            for s in self.weight_shapes
        ]

    def tap_variances(self) -> list[np.ndarray]:
        """E[W^l[:, :, t]²] per kernel tap t (shape kernel_shape), per layer."""
        return [
            inits.tap_variances(self.scheme, s, mode=self.mode, gain=self.gain,
                                **dict(self.scheme_params))
            for s in self.weight_shapes
        ]

    def init_kwargs(self) -> dict[str, Any]:
        """The keyword arguments `harness.core.init.init_` takes for this run's scheme."""
        kw: dict[str, Any] = dict(mode=self.mode, nonlinearity=self.nonlinearity or "leaky_relu",
                                  a=self.a or 0.0, gain=self.gain)
        kw.update(self.scheme_params)  # trunc_normal's own `a` (its lower bound) wins
        return kw

    def columns(self) -> dict[str, Any]:
        """The config columns every row of this run's metrics carries."""
        act_param = ",".join(f"{k}={v:g}" for k, v in self.act_params)
        return {
            "arch": self.arch,
            "scheme": self.scheme,
            "mode": self.mode,
            "act": self.act,
            "act_params": act_param,
            "depth": self.depth,
            "width": self.width,
            "widths": ",".join(map(str, self.widths)),
            "gain": math.nan if self.gain is None else self.gain,
            "batch": self.batch,
            "replicates": self.replicates,
            "seed": self.seed,
            "bias_std": self.bias_std,
            "input_var": self.input_var,
            "scheme_params": ",".join(f"{k}={v:g}" if isinstance(v, (int, float)) else f"{k}={v}"
                                      for k, v in self.scheme_params),
            "input_corr": self.input_corr,
            "jacobian": self.jacobian,
            "dtype": self.dtype,
            "device": self.device,
            # every architecture's own keys (None where they do not apply): one set of columns
            **{k: getattr(self, k) for k in archs.column_dtypes()},
        }

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["widths"] = list(self.widths)
        d["act_params"] = dict(self.act_params)
        d["scheme_params"] = dict(self.scheme_params)
        return d

    # ---- construction -------------------------------------------------------------------
    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> Spec:
        """Validate a (resolved) config mapping and build the Spec; raises ConfigError."""
        try:
            from omegaconf import DictConfig, OmegaConf

            if isinstance(cfg, DictConfig):
                cfg = OmegaConf.to_container(cfg, resolve=True)  # type: ignore[assignment]
        except ImportError:  # pragma: no cover - omegaconf comes with hydra
            pass
        cfg = dict(cfg)

        arch = archs.get(cfg.get("arch", "mlp"))
        depth = _int(cfg, "depth", minimum=1)
        width = cfg.get("width")
        widths_cfg = cfg.get("widths")
        if widths_cfg is None:
            width = _int(cfg, "width", minimum=1)
            widths = (width,) * (depth + 1)
        else:
            if isinstance(widths_cfg, str) or not isinstance(widths_cfg, (list, tuple)):
                raise ConfigError(
                    f"widths must be a list n_0..n_L of depth+1 = {depth + 1} integers ≥ 1, "
                    f"e.g. widths=[64,128,10]; got {widths_cfg!r}"
                )
            if len(widths_cfg) != depth + 1:
                raise ConfigError(
                    f"widths must list depth+1 = {depth + 1} integers n_0..n_L (depth={depth}); "
                    f"got {len(widths_cfg)}"
                )
            if not all(_is_int(w) and w >= 1 for w in widths_cfg):
                raise ConfigError(f"widths must be integers ≥ 1; got {list(widths_cfg)}")
            widths = tuple(int(w) for w in widths_cfg)
            width = None

        act_cfg = cfg.get("act")
        if not isinstance(act_cfg, Mapping) or "name" not in act_cfg:
            raise ConfigError(f"act must be chosen from: {', '.join(activations.NAMES)}")
        act_cfg = dict(act_cfg)
        act_name = act_cfg.pop("name")
        act_params = {k: v for k, v in act_cfg.items() if v is not None}
        for k, v in act_params.items():
            if not _is_number(v):
                raise ConfigError(f"act.{k} must be a number; got {v!r}")
        try:
            act = activations.get(act_name, **act_params)
        except ValueError as e:
            raise ConfigError(str(e)) from None

        mode = _choice(cfg, "mode", inits.MODES, default="fan_in")
        scheme_name, gain, gain_source, nonlinearity, a, params = _resolve_scheme(cfg, act, mode)

        bias_std = _float(cfg, "bias_std", minimum=0.0, default=0.0)
        if "sigma_b2" in params:  # meanfield: σ_b² is the scheme's, so that σ_w², σ_b² go together
            if bias_std != 0.0:
                raise ConfigError(
                    f"scheme {scheme_name} sets the bias variance with scheme.sigma_b2; leave "
                    f"bias_std at 0 (got bias_std={bias_std:g})"
                )
            bias_std = math.sqrt(params["sigma_b2"])
        input_var = _float(cfg, "input_var", minimum=0.0, default=1.0, strict=True)
        input_corr = cfg.get("input_corr", 0.0)
        if not (_is_number(input_corr) and 0.0 <= input_corr <= 1.0):
            raise ConfigError(f"input_corr must be a number in [0, 1]; got {input_corr!r}")
        batch = _int(cfg, "batch", minimum=1)
        replicates = _int(cfg, "replicates", minimum=1)
        seed = _int(cfg, "seed", minimum=0, default=0)
        device = _resolve_device(cfg.get("device", "auto"))
        dtype = _choice(cfg, "dtype", tuple(DTYPES), default="float32")
        budget = _float(cfg, "memory_budget_mb", minimum=0.0, default=2048.0, strict=True)
        own = arch.config(cfg)  # the architecture's own keys, validated by its entry
        if inits.scheme(scheme_name).family == "lsuv" and LSUV not in arch.capabilities:
            raise ConfigError(f"scheme lsuv calibrates {archs.labels(LSUV)} only; for "
                              f"arch={arch.name} choose another scheme")
        if input_corr != 0 and INPUT_CORR not in arch.capabilities:
            raise ConfigError(f"input_corr is implemented for {archs.names(INPUT_CORR)} only; for "
                              f"arch={arch.name} leave it at 0 (got {input_corr!r})")
        if inits.scheme(scheme_name).family == "delta_orthogonal":
            _check_delta_orthogonal(widths)
        jacobian = _jacobian(cfg, arch, batch)

        return cls(
            arch=arch.name,
            depth=depth,
            widths=widths,
            width=width,
            scheme=scheme_name,
            mode=mode,
            gain=gain,
            gain_source=gain_source,
            nonlinearity=nonlinearity,
            a=a,
            act=act.name,
            act_params=tuple(act.params.items()),
            bias_std=bias_std,
            input_var=input_var,
            batch=batch,
            replicates=replicates,
            seed=seed,
            device=device,
            dtype=dtype,
            memory_budget_mb=budget,
            **own,
            scheme_params=tuple(params.items()),
            input_corr=float(input_corr),
            jacobian=jacobian,
        )


# ---- helpers ------------------------------------------------------------------------------
def _jacobian(cfg: Mapping[str, Any], arch: archs.Architecture, batch: int) -> int:
    """`jacobian`: how many of each replicate's inputs get their exact Jacobian (0: none)."""
    k = cfg.get("jacobian", 0)
    if not _is_int(k) or not 0 <= k <= batch:
        raise ConfigError(f"jacobian must be an integer in [0, batch={batch}]: the inputs per "
                          f"network at which the input-output Jacobian is formed (0: off); got {k!r}")
    if k and JACOBIAN not in arch.capabilities:
        raise ConfigError(f"jacobian is implemented for {archs.names(JACOBIAN)} only; for "
                          f"arch={arch.name} leave it at 0 (got jacobian={k})")
    return int(k)


def _check_delta_orthogonal(widths: tuple[int, ...]) -> None:
    """delta_orthogonal's centre tap has orthonormal columns only if C_in ≤ C_out."""
    for l in range(1, len(widths)):
        if widths[l - 1] > widths[l]:
            raise ConfigError(
                f"scheme delta_orthogonal needs C_in ≤ C_out at every layer (an orthogonal "
                f"C_out×C_in centre tap); layer {l} has C_in={widths[l - 1]} > C_out={widths[l]}"
            )


def _resolve_device(device: Any) -> str:
    if device not in DEVICES:
        raise ConfigError(f"unknown device {device!r}; allowed: {', '.join(DEVICES)}")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda but CUDA is not available on this machine; allowed: auto, cpu")
    return str(device)


def _resolve_scheme(
    cfg: Mapping[str, Any], act: activations.Activation, mode: str
) -> tuple[str, float | None, str, str | None, float | None, dict[str, Any]]:
    """(scheme name, gain, how the gain was chosen, nonlinearity, a, the scheme's own params)
    from cfg['scheme'], validated against the registry entry's declared parameters."""
    sc = cfg.get("scheme")
    if not isinstance(sc, Mapping) or "name" not in sc:
        raise ConfigError(f"scheme must be chosen from: {', '.join(inits.NAMES)}")
    name = sc["name"]
    try:
        entry = inits.scheme(name)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    declared = entry.parameters
    for key, val in sc.items():
        if key != "name" and val is not None and key not in declared:
            raise ConfigError(
                f"scheme {name} takes no {key} (its parameters: {', '.join(declared) or 'none'}); "
                f"got scheme.{key}={val!r}"
            )
    _check_mode(entry, name, mode)
    if entry.family in ("variance_scaling", "trunc_normal", "meanfield", "lsuv"):
        return _resolve_own(entry, name, {k: sc.get(k) for k in declared})

    gain, nonlinearity, a = sc.get("gain"), sc.get("nonlinearity"), sc.get("a")
    if gain is not None and gain != "exact" and not (_is_number(gain) and gain > 0):
        raise ConfigError(f"scheme.gain must be a finite number > 0 or exact; got {gain!r}")
    if a is not None and not _is_number(a):
        raise ConfigError(f"scheme.a must be a number; got {a!r}")

    if entry.family == "torch_default":
        g = inits.resolve_gain(entry.name)
        return name, g, f"kaiming_uniform_(a=√5): gain √(1/3) = {g:.4g}", None, None, {}
    if gain == "exact":
        g = exact_gain(act)
        source = (f"gain exact = V_φ(1)^(-1/2) = {g:.4g} (q* = 1 is a fixed point of square "
                  f"layers without bias)")
        if entry.family != "kaiming":
            return name, g, source, None, None, {}
    elif gain is not None:
        g = float(gain)
        return name, g, f"gain {g:g} (set by scheme.gain)", nonlinearity, a, {}
    elif entry.family == "delta_orthogonal":
        return name, 1.0, "gain 1 (the default; no torch function)", None, None, {}
    elif entry.family != "kaiming":
        return name, 1.0, "gain 1 (torch's default)", None, None, {}

    # kaiming: the nonlinearity follows act where calculate_gain knows it
    note = ""
    if nonlinearity is None:
        if act.kind.gain_name is not None:
            nonlinearity = act.kind.gain_name
            note = "follows act"
        else:
            nonlinearity = "leaky_relu"
            note = f"torch's default: calculate_gain does not know {act.name}"
            a = 0.0 if a is None else a
    elif nonlinearity not in inits.GAIN_NONLINEARITIES:
        raise ConfigError(
            f"scheme.nonlinearity {nonlinearity!r} is not one calculate_gain knows; allowed: "
            f"{', '.join(inits.GAIN_NONLINEARITIES)}"
        )
    if a is None:
        a = act.gain_param if (nonlinearity == "leaky_relu" and act.gain_param is not None) else 0.0
    if gain == "exact":
        return name, g, source, nonlinearity, float(a), {}
    g = float(inits.calculate_gain(nonlinearity, float(a)))
    arg = f", a={a:g}" if nonlinearity == "leaky_relu" else ""
    source = f"calculate_gain('{nonlinearity}'{arg}) = {g:.4g}" + (f" ({note})" if note else "")
    return name, g, source, nonlinearity, float(a), {}


def exact_gain(act: activations.Activation) -> float:
    """The forward-exact gain V_φ(1)^(-1/2): with σ_w² = g² (square layers, fan_in or xavier or
    orthogonal scaling) and no bias, q = 1 maps to σ_w² V_φ(1) = 1, a fixed point."""
    return float(1.0 / math.sqrt(float(act.V(1.0))))


def _check_mode(entry: inits.Scheme, name: str, mode: str) -> None:
    """kaiming takes fan_in | fan_out (as torch); fan_avg | fan_geo_avg only variance_scaling."""
    choices = entry.mode_choices
    if choices and mode not in choices:
        raise ConfigError(
            f"unknown mode {mode!r}; allowed: {', '.join(choices)} for scheme {name} (torch's "
            f"kaiming_* take only these; fan_avg and fan_geo_avg are variance_scaling's)"
        )
    if not choices and mode not in inits.TORCH_MODES:
        raise ConfigError(
            f"mode {mode} is used only by variance_scaling (and fan_in/fan_out by kaiming); "
            f"scheme {name} takes no mode"
        )


def _number(name: str, key: str, v: Any, *, minimum: float | None = None, strict: bool = False,
            integer: bool = False) -> float:
    ok = (_is_int(v) if integer else _is_number(v)) and (
        minimum is None or (v > minimum if strict else v >= minimum))
    if not ok:
        kind = "an integer" if integer else "a finite number"
        bound = "" if minimum is None else (f" > {minimum:g}" if strict else f" ≥ {minimum:g}")
        raise ConfigError(f"scheme {name}: scheme.{key} must be {kind}{bound}; got {v!r}")
    return v if integer else float(v)


def _resolve_own(
    entry: inits.Scheme, name: str, given: dict[str, Any]
) -> tuple[str, float | None, str, None, None, dict[str, Any]]:
    """variance_scaling (and presets), trunc_normal, meanfield, lsuv: their own parameters."""
    p = {k: (entry.parameters[k] if v is None else v) for k, v in given.items()}
    fam = entry.family
    if fam == "variance_scaling":
        if entry.preset is not None:
            pr = entry.preset
            g = math.sqrt(pr["scale"])
            return name, g, (f"Keras/JAX {name}: scale {pr['scale']:g}, {pr['mode']}, "
                             f"{pr['distribution']}"), None, None, {}
        p["scale"] = _number(name, "scale", p["scale"], minimum=0.0, strict=True)
        if p["distribution"] not in inits.DISTRIBUTIONS:
            hint = (" ('normal' is ambiguous: Keras reads it as truncated_normal, JAX as "
                    "untruncated_normal)") if p["distribution"] == "normal" else ""
            raise ConfigError(f"unknown scheme.distribution {p['distribution']!r}{hint}; allowed: "
                              f"{', '.join(inits.DISTRIBUTIONS)}")
        g = math.sqrt(p["scale"])
        return name, g, f"variance_scaling: scale {p['scale']:g}, {p['distribution']}", None, None, p
    if fam == "trunc_normal":
        for k in ("mean", "a", "b"):
            p[k] = _number(name, k, p[k])
        p["std"] = _number(name, "std", p["std"], minimum=0.0, strict=True)
        if not (p["mean"] == 0.0 and p["a"] == -p["b"] and p["b"] > 0):
            raise ConfigError(
                f"scheme trunc_normal: the theory needs zero-mean weights, so mean 0 and a = −b > 0;"
                f" got mean={p['mean']:g}, a={p['a']:g}, b={p['b']:g}"
            )
        var = inits.trunc_normal_moments(p["mean"], p["std"], p["a"], p["b"])[1]
        k = p["b"] / p["std"]
        cut = f"cut at ±{k:.3g}σ" + (" (in effect untruncated)" if k >= 6 else "")
        return name, None, (f"trunc_normal_(std={p['std']:g}, a={p['a']:g}, b={p['b']:g}): "
                                f"{cut}, Var(W) = {var:.4g}, no fan scaling"), None, None, p
    if fam == "meanfield":
        p["sigma_w2"] = _number(name, "sigma_w2", p["sigma_w2"], minimum=0.0, strict=True)
        p["sigma_b2"] = _number(name, "sigma_b2", p["sigma_b2"], minimum=0.0)
        return name, math.sqrt(p["sigma_w2"]), (f"σ_w² = {p['sigma_w2']:g}, σ_b² = "
                                                f"{p['sigma_b2']:g}"), None, None, p
    # lsuv
    p["tol"] = _number(name, "tol", p["tol"], minimum=0.0, strict=True)
    p["max_iter"] = _number(name, "max_iter", p["max_iter"], minimum=1, integer=True)
    return name, 1.0, (f"orthogonal pre-init, then each layer rescaled until its output variance "
                       f"is 1 ± {p['tol']:g} (≤ {p['max_iter']} iterations)"), None, None, p
