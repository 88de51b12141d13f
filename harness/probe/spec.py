"""`ProbeSpec`: the validated, frozen description of one probe run, built once from its config.

Every bad value is a one-line `ConfigError` here (what was wrong; what is allowed), before a
model is built or a file written. The scheme is resolved by the harness's scheme registry
(`harness.core.schemes`), as for `harness.run`; `native` keeps the model's own initialization.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch

from harness.core import activations
from harness.core import init as inits
from harness.core.spec import DEVICES, DTYPES
from harness.core.validate import SCALE_MAX, ConfigError
from harness.core.validate import check_integer as _check_integer
from harness.core.validate import check_number as _check_number
from harness.core.validate import choice as _choice
from harness.core.validate import is_int as _is_int
from harness.core.validate import number as _number

#: scheme=native: the model keeps its own initialization
NATIVE = "native"
INPUTS = ("gaussian", "tokens")
CHANNELS = ("auto", "first", "last")
VMAP = ("auto", "true", "false")
#: keys of harness.run that describe the network it builds; the probed model fixes them
NOT_APPLICABLE = ("act", "depth", "width", "widths", "arch")
#: block outputs selected by default (torchvision's layer1.0, timm's blocks.3, transformers' h.5)
DEFAULT_BLOCKS = ("layer*.*", "blocks.*", "h.*")
#: the model node's keys that are not the factory's arguments
MODEL_KEYS = ("name", "_target_")


@dataclass(frozen=True)
class ProbeSpec:
    """One probe run: which model (a factory's dotted path and its arguments, or an object passed
    to `harness.probe`), its initialization, the inputs, the modules measured, where to compute."""

    model: str
    target: str
    model_args: tuple[tuple[str, Any], ...]
    scheme: str
    mode: str
    gain: float | None
    gain_source: str
    nonlinearity: str | None
    a: float | None
    scheme_params: tuple[tuple[str, Any], ...]
    bias_std: float
    input_shape: tuple[int, ...]
    input: str
    vocab: int | None
    input_var: float
    output: str | None
    modules: tuple[str, ...] | None
    module_types: tuple[str, ...] | None
    blocks: tuple[str, ...]
    channels: str
    train: bool
    batch: int
    replicates: int
    seed: int
    device: str
    dtype: str
    vmap: str
    chunk: int | None

    @property
    def native(self) -> bool:
        """Whether the model keeps its own initialization (scheme=native)."""
        return self.scheme == NATIVE

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    def init_kwargs(self) -> dict[str, Any]:
        """The keyword arguments `harness.core.init.init_` takes for this run's scheme."""
        kw: dict[str, Any] = dict(mode=self.mode, nonlinearity=self.nonlinearity or "leaky_relu",
                                  a=self.a or 0.0, gain=self.gain)
        kw.update(self.scheme_params)
        return kw

    def columns(self) -> dict[str, Any]:
        """The config columns every row of this run's metrics carries."""
        return {
            "model": self.model,
            "scheme": self.scheme,
            "mode": self.mode,
            "gain": math.nan if self.gain is None else self.gain,
            "scheme_params": ",".join(f"{k}={v:g}" if isinstance(v, (int, float)) else f"{k}={v}"
                                      for k, v in self.scheme_params),
            "input_shape": ",".join(map(str, self.input_shape)),
            "input": self.input,
            "batch": self.batch,
            "replicates": self.replicates,
            "seed": self.seed,
            "bias_std": self.bias_std,
            "input_var": self.input_var,
            "train": self.train,
            "dtype": self.dtype,
            "device": self.device,
        }

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("model_args", "scheme_params"):
            d[k] = dict(getattr(self, k))
        for k in ("input_shape", "modules", "module_types", "blocks"):
            d[k] = None if d[k] is None else list(d[k])
        return d

    # ---- construction -------------------------------------------------------------------
    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], *, model: str | None = None,
                    target: str | None = None) -> ProbeSpec:
        """Validate a probe config (a DictConfig or mapping); raises ConfigError. `model` and
        `target` name a model object passed to `harness.probe` (then model._target_ is unused)."""
        try:
            from omegaconf import DictConfig, OmegaConf

            if isinstance(cfg, DictConfig):
                cfg = OmegaConf.to_container(cfg, resolve=True)  # type: ignore[assignment]
        except ImportError:  # pragma: no cover - omegaconf comes with hydra
            pass
        cfg = dict(cfg)
        for key in NOT_APPLICABLE:
            if cfg.get(key) is not None:
                raise ConfigError(f"{key} does not apply to harness.probe: the probed model fixes its "
                                  f"layers, widths and activations (got {key}={cfg[key]!r}); leave it unset")
        node = cfg.get("model") or {}
        if not isinstance(node, Mapping):
            raise ConfigError(f"model must be a preset name or model._target_=package.module.Factory; "
                              f"got {node!r}")
        if target is None:
            target = node.get("_target_")
            if not isinstance(target, str) or not target.strip():
                raise ConfigError("no model: choose model=NAME (resnet18, resnet50, vit_s16, gpt2_small) "
                                  "or give model._target_=package.module.Factory")
        label = model or node.get("name") or target
        args = tuple((str(k), v) for k, v in node.items() if k not in MODEL_KEYS)

        nl = cfg.get("nonlinearity")
        if nl is not None and nl not in activations.NAMES:
            raise ConfigError(f"unknown nonlinearity {nl!r}; allowed: {', '.join(activations.NAMES)} "
                              "(or null: torch's default)")
        mode = _choice(cfg, "mode", inits.MODES, default="fan_in")
        sc = cfg.get("scheme")
        if not isinstance(sc, Mapping) or "name" not in sc:
            raise ConfigError(f"scheme must be chosen from: {NATIVE}, {', '.join(inits.NAMES)}")
        scheme_name = sc["name"]
        bias_std = _number(cfg, "bias_std", minimum=0.0, default=0.0, maximum=SCALE_MAX)
        if scheme_name == NATIVE:
            extra = sorted(k for k, v in sc.items() if k != "name" and v is not None)
            if extra:
                raise ConfigError(f"scheme native keeps the model's initialization and takes no "
                                  f"parameters; got scheme.{extra[0]}")
            if bias_std:
                raise ConfigError("bias_std applies to a re-initializing scheme; scheme=native keeps "
                                  "the model's biases (leave bias_std at 0)")
            gain, source, nonlinearity, a, params = None, "the model's own initialization", None, None, {}
        else:
            gain, source, nonlinearity, a, params, bias_std = _resolve_scheme(sc, nl, mode, bias_std)
            source = source.replace("(follows act)", "(follows nonlinearity)")

        shape = cfg.get("input_shape")
        if not isinstance(shape, (list, tuple)) or not shape or not all(
                _is_int(s) and s >= 1 for s in shape):
            raise ConfigError(f"input_shape must be a list of integers ≥ 1 (one input without the "
                              f"batch dimension, e.g. [3,224,224] or [128] for tokens); got {shape!r}")
        kind = _choice(cfg, "input", INPUTS, default="gaussian")
        vocab = cfg.get("vocab")
        if vocab is not None:
            vocab = _check_integer("vocab", vocab, minimum=1)
        if vocab is not None and kind != "tokens":
            raise ConfigError(f"vocab applies to input=tokens only (got vocab={vocab} with input={kind})")
        input_var = _number(cfg, "input_var", minimum=0.0, default=1.0, strict=True)
        output = cfg.get("output")
        if output is not None and not isinstance(output, str):
            raise ConfigError(f"output must name one output of the model (e.g. last_hidden_state); "
                              f"got {output!r}")
        modules = _patterns(cfg, "modules")
        module_types = _patterns(cfg, "module_types")
        blocks = DEFAULT_BLOCKS if "blocks" not in cfg else (
            _patterns(cfg, "blocks") if cfg["blocks"] not in (None, []) else ())
        channels = _choice(cfg, "channels", CHANNELS, default="auto")
        train = cfg.get("train", True)
        if not isinstance(train, bool):
            raise ConfigError(f"train must be true or false; got {train!r}")
        batch = _check_integer("batch", cfg.get("batch", 8), minimum=1)
        replicates = _check_integer("replicates", cfg.get("replicates", 8), minimum=1)
        seed = _check_integer("seed", cfg.get("seed", 0), minimum=0)
        device = cfg.get("device", "auto")
        if device not in DEVICES:
            raise ConfigError(f"unknown device {device!r}; allowed: {', '.join(DEVICES)}")
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        elif device == "cuda" and not torch.cuda.is_available():
            raise ConfigError("device=cuda but CUDA is not available on this machine; allowed: auto, cpu")
        dtype = _choice(cfg, "dtype", tuple(DTYPES), default="float32")
        vmap = cfg.get("vmap", "auto")
        vmap = {True: "true", False: "false"}.get(vmap, vmap) if isinstance(vmap, bool) else vmap
        if vmap not in VMAP:
            raise ConfigError(f"unknown vmap {vmap!r}; allowed: {', '.join(VMAP)}")
        chunk = cfg.get("chunk")
        if chunk is not None:
            chunk = _check_integer("chunk", chunk, minimum=1)
        return cls(
            model=str(label), target=str(target), model_args=args, scheme=scheme_name, mode=mode,
            gain=gain, gain_source=source, nonlinearity=nonlinearity, a=a,
            scheme_params=tuple(params.items()), bias_std=bias_std,
            input_shape=tuple(int(s) for s in shape), input=kind, vocab=vocab, input_var=input_var,
            output=output, modules=modules, module_types=module_types, blocks=tuple(blocks),
            channels=channels, train=train, batch=batch, replicates=replicates, seed=seed,
            device=str(device), dtype=dtype, vmap=vmap, chunk=chunk,
        )


def _patterns(cfg: Mapping[str, Any], key: str) -> tuple[str, ...] | None:
    v = cfg.get(key)
    if v is None:
        return None
    if isinstance(v, (str, int)) and not isinstance(v, bool):
        v = [v]
    if isinstance(v, (list, tuple)):  # an nn.Sequential's children are named 0, 1, …: Hydra reads ints
        v = [str(p) if isinstance(p, int) and not isinstance(p, bool) and p >= 0 else p for p in v]
    if not isinstance(v, (list, tuple)) or not v or not all(isinstance(p, str) and p for p in v):
        raise ConfigError(f"{key} must be a non-empty list of fnmatch patterns, e.g. {key}=[a*,b.*]; "
                          f"got {v!r}")
    return tuple(v)


def _resolve_scheme(sc: Mapping[str, Any], nonlinearity: str | None, mode: str, bias_std: float
                    ) -> tuple[float | None, str, str | None, float | None, dict[str, Any], float]:
    """(gain, its source text, nonlinearity, a, own parameters, the biases' std) from the scheme
    registry (meanfield's σ_b² sets the biases' std, as for harness.run). The
    gain follows `nonlinearity` (the model's activation, a harness activation name) where the
    scheme asks for one; without it, torch's default (calculate_gain('leaky_relu', 0) = √2 for
    kaiming, as torch.nn.init.kaiming_normal_(w) with its defaults)."""
    name = sc["name"]
    try:
        entry = inits.scheme(name)
    except ValueError:
        raise ConfigError(f"unknown scheme {name!r}; allowed: {NATIVE}, {', '.join(inits.NAMES)}") from None
    if entry.calibrates_on_data:
        raise ConfigError(f"scheme {name} calibrates the layers of the harness's own networks; "
                          f"harness.probe takes native or a scheme that draws each weight on its own")
    try:
        entry.check_branches(None)
    except ValueError:
        raise ConfigError(f"scheme {name} needs the harness's residual blocks (arch=resmlp); "
                          "harness.probe cannot tell a model's branches apart") from None
    given = dict(sc)
    if nonlinearity is None and "nonlinearity" in entry.parameters and given.get("nonlinearity") is None:
        given["nonlinearity"] = "leaky_relu"  # torch.nn.init's default, with a = 0
    act = activations.get(nonlinearity or "linear")
    try:
        r = entry.resolve_config(given, act, mode, name)
        bias_std = entry.bias_std(r.params, bias_std, name)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if r.gain is not None and not math.isfinite(r.gain):
        raise ConfigError(f"scheme {name}: gain {r.gain} is not finite")
    _check_number("gain", r.gain if r.gain is not None else 1.0, minimum=0.0, maximum=SCALE_MAX)
    return r.gain, r.gain_source, r.nonlinearity, r.a, r.params, bias_std
