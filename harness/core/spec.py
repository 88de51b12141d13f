"""`Spec`: the validated, frozen description of one run, built once from the Hydra config.

Every error in a config is caught here, once, with a message naming the key, what was wrong and
what is allowed; nothing downstream re-validates.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

import numpy as np
import torch

from harness import archs
from harness.core import activations, norms
from harness.core import init as inits
from harness.core.capabilities import INPUT_CORR, JACOBIAN, LSUV, WS
from harness.core.validate import DEPTH_MAX, INT_MAX, SCALE_MAX, ConfigError
from harness.core.validate import check_number as _check_number
from harness.core.validate import choice as _choice
from harness.core.validate import integer as _int
from harness.core.validate import is_int as _is_int
from harness.core.validate import is_number as _is_number
from harness.core.validate import number as _float

__all__ = ["ALL_QUANTITIES", "DEVICES", "DTYPES", "ConfigError", "Spec"]

DEVICES = ("auto", "cpu", "cuda")
DTYPES = {"float32": torch.float32, "float64": torch.float64}
#: every quantity some architecture measures, in report order
ALL_QUANTITIES = archs.all_quantities()
T = TypeVar("T")


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
    #: arch=resmlp's residual.* keys (harness.archs.resmlp), None for the other architectures
    residual_branch_depth: int | None = None
    residual_alpha: float | None = None
    residual_depth_scaling: str | None = None
    residual_nf: bool | None = None
    #: the scheme's own resolved parameters beyond gain/nonlinearity/a (e.g. variance_scaling's
    #: scale and distribution, meanfield's sigma_w2 and sigma_b2), as (key, value) pairs
    scheme_params: tuple[tuple[str, Any], ...] = ()
    #: pairwise correlation of the inputs: x_b = √input_var (√c z + √(1−c) z_b)
    input_corr: float = 0.0
    #: inputs per replicate at which the exact input-output Jacobian is formed (0: not measured)
    jacobian: int = 0
    #: scaled weight standardization: per output unit W ← g (W − mean)/(std·√fan_in)
    ws: bool = False
    #: the normalization layer (harness.core.norms: none | batchnorm | layernorm | rmsnorm), its
    #: position (pre | post; None for none) and ε (torch's default resolved; None for none)
    norm: str = "none"
    norm_position: str | None = None
    norm_eps: float | None = None

    # ---- derived views ------------------------------------------------------------------
    @property
    def activation(self) -> activations.Activation:
        return activations.get(self.act, **dict(self.act_params))

    @property
    def normalization(self) -> norms.Norm:
        """The registry entry of `norm` (`harness.core.norms`)."""
        return norms.get(self.norm)

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
        """Var(W^l) per layer, from the one function the sampler uses too (times the square of
        the architecture's layer scale, e.g. scheme=fixup's branch factor)."""
        if self.ws:  # standardized rows: Σ_j W_ij² = g² exactly, Var(W) = g²/fan_in
            g = 1.0 if self.gain is None else self.gain
            var = [g * g / inits.fans(s)[0] for s in self.weight_shapes]
        else:
            var = [
                inits.weight_variance(self.scheme, s, mode=self.mode, gain=self.gain,
                                      **dict(self.scheme_params))
                for s in self.weight_shapes
            ]
        scales = self.layer_scales()
        return var if scales is None else [v * s * s for v, s in zip(var, scales, strict=True)]

    def layer_scales(self) -> list[float] | None:
        """The architecture's factor per weight layer on the scheme's draw (None: all 1)."""
        return self.architecture.layer_scales(self)

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
            "ws": self.ws,
            **{k: getattr(self, k) for k in norms.COLUMNS},
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
        depth = _int(cfg, "depth", minimum=1, maximum=DEPTH_MAX)
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
            if not all(w <= INT_MAX for w in widths_cfg):
                raise ConfigError(f"widths must be integers ≥ 1 and < 2^63; got {list(widths_cfg)}")
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
            _check_number(f"act.{k}", v, maximum=SCALE_MAX)  # a slope or scale: |v| < 2^32
        try:
            act = activations.get(act_name, **act_params)
        except ValueError as e:
            raise ConfigError(str(e)) from None

        mode = _choice(cfg, "mode", inits.MODES, default="fan_in")
        scheme_name, gain, gain_source, nonlinearity, a, params = _resolve_scheme(cfg, act, mode)

        bias_std = _float(cfg, "bias_std", minimum=0.0, default=0.0, maximum=SCALE_MAX)
        # meanfield's σ_b² is the scheme's, so that σ_w², σ_b² go together
        bias_std = _ask(inits.scheme(scheme_name).bias_std, params, bias_std, scheme_name)
        input_var = _float(cfg, "input_var", minimum=0.0, default=1.0, strict=True)
        input_corr = cfg.get("input_corr", 0.0)
        if not (_is_number(input_corr) and 0.0 <= input_corr <= 1.0):
            raise ConfigError(f"input_corr must be a number in [0, 1]; got {input_corr!r}")
        ws = cfg.get("ws", False)
        if not isinstance(ws, bool):
            raise ConfigError(f"ws must be true or false (scaled weight standardization); got {ws!r}")
        if ws and WS not in arch.capabilities:
            raise ConfigError(f"ws is implemented for {archs.names(WS)} only; for arch={arch.name} "
                              f"leave it false")
        batch = _int(cfg, "batch", minimum=1)
        replicates = _int(cfg, "replicates", minimum=1)
        seed = _int(cfg, "seed", minimum=0, default=0)
        device = _resolve_device(cfg.get("device", "auto"))
        dtype = _choice(cfg, "dtype", tuple(DTYPES), default="float32")
        # in bytes (· 2^20) an int64
        budget = _float(cfg, "memory_budget_mb", minimum=0.0, default=2048.0, strict=True, maximum=2.0**43)
        own = arch.config(cfg)  # the architecture's own keys, validated by its entry
        norm = norms.from_config(cfg, batch, DTYPES[dtype])  # the norm group, by its entry
        _unused_groups(cfg, arch)
        if inits.scheme(scheme_name).calibrates_on_data and LSUV not in arch.capabilities:
            raise ConfigError(f"scheme lsuv calibrates {archs.labels(LSUV)} only; for "
                              f"arch={arch.name} choose another scheme")
        if input_corr != 0 and INPUT_CORR not in arch.capabilities:
            raise ConfigError(f"input_corr is implemented for {archs.names(INPUT_CORR)} only; for "
                              f"arch={arch.name} leave it at 0 (got {input_corr!r})")
        _ask(inits.scheme(scheme_name).check_widths, widths)  # delta_orthogonal: C_in ≤ C_out
        jacobian = _jacobian(cfg, arch, batch)
        _norm_capabilities(norm["norm"], arch, scheme_name, cfg, jacobian)

        spec = cls(
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
            ws=ws,
            **norm,
        )
        _ask(inits.scheme(scheme_name).check_branches, arch.branch_depth(spec))  # fixup: m ≥ 2
        return spec


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


def _norm_capabilities(name: str, arch: archs.Architecture, scheme_name: str,
                       cfg: Mapping[str, Any], jacobian: int) -> None:
    """Requests a norm leaves undefined (jacobian=k, scheme=lsuv) and norms the architecture
    cannot hold are one-line errors."""
    entry = norms.get(name)
    if entry.identity:
        return
    why = arch.norm_limits(cfg)
    if why:
        raise ConfigError(f"norm={name} with arch={arch.name}: {why}")
    if jacobian and entry.why_not(JACOBIAN):
        raise ConfigError(f"jacobian=k is not defined with norm={name} ({entry.why_not(JACOBIAN)}); "
                          f"leave it at 0 or choose norm=none")
    if inits.scheme(scheme_name).calibrates_on_data and entry.why_not(LSUV):
        raise ConfigError(f"scheme lsuv is not defined with norm={name} ({entry.why_not(LSUV)}); "
                          f"choose another scheme or norm=none")


def _unused_groups(cfg: Mapping[str, Any], arch: archs.Architecture) -> None:
    """A key set (not None) in a config group the architecture does not read is an error
    (e.g. residual.alpha with arch=mlp), not silently ignored."""
    for group, readers in archs.groups().items():
        if group in arch.groups:
            continue
        node = cfg.get(group) or {}
        for key, value in node.items():
            if value is not None:
                raise ConfigError(
                    f"{group}.{key} applies to {', '.join(f'arch={r}' for r in readers)} only; "
                    f"for arch={arch.name} leave it unset (got {group}.{key}={value!r})")


def _resolve_device(device: Any) -> str:
    if device not in DEVICES:
        raise ConfigError(f"unknown device {device!r}; allowed: {', '.join(DEVICES)}")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda but CUDA is not available on this machine; allowed: auto, cpu")
    return str(device)


def _ask(check: Callable[..., T], *args: Any) -> T:
    """Call a registry entry's check or resolution; its one-line ValueError becomes ConfigError."""
    try:
        return check(*args)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def _resolve_scheme(
    cfg: Mapping[str, Any], act: activations.Activation, mode: str
) -> tuple[str, float | None, str, str | None, float | None, dict[str, Any]]:
    """(scheme name, gain, how the gain was chosen, nonlinearity, a, the scheme's own params)
    from cfg['scheme'], as its registry entry resolves them (`Scheme.resolve_config`)."""
    sc = cfg.get("scheme")
    if not isinstance(sc, Mapping) or "name" not in sc:
        raise ConfigError(f"scheme must be chosen from: {', '.join(inits.NAMES)}")
    name = sc["name"]
    entry = _ask(inits.scheme, name)
    r = _ask(entry.resolve_config, sc, act, mode, name)
    return name, r.gain, r.gain_source, r.nonlinearity, r.a, r.params
