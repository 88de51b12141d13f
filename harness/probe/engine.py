"""Measure any nn.Module ensemble: module selection, hooks, the batched (vmap) and loop paths.

Per replicate r and selected module call (a *point*, in execution order: the order in which the
calls return, so a block comes after the modules inside it), with y the module's main output
tensor (a tuple's or dict's first tensor), loss = Σ cot · out (cot ~ N(0, 1) on the model's main
output `out`, as `harness.run`'s runner does) and B the batch:

    forward          = mean y²                        (over every element of y)
    mean             = mean y
    channel_mean_sq  = mean_c ȳ_c²,  channel_var = mean_c mean (y − ȳ_c)²   (Brock et al. 2021;
                       ȳ_c the mean over every dim but the channel dim c: dim 1 for outputs with
                       ≥ 2 spatial dims (N, C, H, W), the last dim otherwise ((N, T, D) token
                       sequences, (N, D) features); `channels` = first | last forces one)
    backward         = mean (∂loss/∂y)²
    weight_grad      = Σ_θ Σ (∂loss/∂θ)² / (B · #θ)  over the module's parameters θ (all of
                       them, recursively for a block): the per-example second moment, since the
                       cotangents of different examples are independent with mean 0, so the
                       cross terms of (Σ_b g_b)² vanish in expectation (with BatchNorm in training
                       mode examples interact and this is the batch gradient's moment / B)
    param_norm       = √(Σ_θ Σ θ²)

weight_grad and param_norm exist only for modules with parameters. The gradient w.r.t. y is
taken by adding a zero tensor ε to y in a forward hook and differentiating w.r.t. ε.

Both paths run the same per-replicate function (`torch.func.functional_call` on one base
module, gradients by `torch.func.grad`): the batched path maps it over the replicates' stacked
parameters and buffers (`torch.func.stack_module_state`) with `torch.func.vmap`; the loop path
calls it once per replicate. A model that vmap cannot trace (data-dependent control flow, .item())
falls back to the loop (vmap=auto), and the metadata says which path ran and why. Sums of
squares are fused reductions (‖t‖₂², no temporary of t's size) and glibc keeps freed memory for
reuse while both paths run (`harness.probe.alloc`): the batched path's R-times larger tensors
otherwise page-fault in afresh at every allocation.
"""

from __future__ import annotations

import contextlib
import difflib
import fnmatch
import math
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, grad, stack_module_state, vmap
from tqdm.auto import tqdm

from harness.core.validate import ConfigError
from harness.probe import alloc, models
from harness.probe.spec import ProbeSpec
from harness.sim.runner import device_name

#: what a probe measures per point, in order (weight_grad, param_norm: modules with parameters)
QUANTITIES = ("forward", "mean", "channel_mean_sq", "channel_var", "backward", "weight_grad",
              "param_norm")
PARAM_QUANTITIES = ("weight_grad", "param_norm")
#: the name of the model itself when it is a single layer (its qualified name is "")
ROOT = "(model)"


@dataclass(frozen=True)
class Point:
    """One measured call of a selected module: `key` (its name, with #k for its k-th call when
    it runs more than once), the module's qualified name and class, its main output's shape
    (with the batch dim), the channel dim of the SPP statistics (None: one channel), and the
    canonical names of its parameters (recursively; shared parameters under their first name)."""

    key: str
    module: str
    module_type: str
    shape: tuple[int, ...]
    channel_dim: int | None
    params: tuple[str, ...]


@dataclass
class ProbeMeasurement:
    """values: (R, points, quantities) float64, NaN where a quantity does not apply; the points
    in execution order; wall time; the device's name; replicates per vmapped call; info (path:
    vmap | loop, why, shims, selection notes)."""

    values: np.ndarray
    points: list[Point]
    wall_s: float
    device_name: str
    chunk_size: int
    info: dict[str, Any] = field(default_factory=dict)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence torch's note that an operator (e.g. the CPU flash-attention backward of a ViT)
    has no batching rule and runs through vmap's per-replicate fallback: correct, just slower."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="There is a performance drop because we have not yet")
        yield


# ---- selection --------------------------------------------------------------------------------
def _segments_match(name: str, pattern: str) -> bool:
    """Whether the last segments of `name` match `pattern` segment by segment (a '*' does not
    cross a dot): "layer*.*" matches "layer1.0" and "model.layer1.0", not "layer1.0.conv1"."""
    p, n = pattern.split("."), name.split(".")
    return len(n) >= len(p) and all(fnmatch.fnmatchcase(a, b) for a, b in zip(n[-len(p):], p, strict=True))


def _leaf_with_params(m: nn.Module) -> bool:
    return next(m.children(), None) is None and next(m.parameters(recurse=False), None) is not None


def _close(word: str, names: Sequence[str]) -> str:
    """", close names: a, b" (difflib), or a few of the names when none is close."""
    close = difflib.get_close_matches(word, list(dict.fromkeys(names)), n=5, cutoff=0.5)
    if close:
        return "; close names: " + ", ".join(close)
    some = list(dict.fromkeys(names))[:8]
    return "; names start with: " + ", ".join(some) + (", ..." if len(names) > 8 else "")


def select(model: nn.Module, spec: ProbeSpec) -> list[str]:
    """The qualified names of the selected modules (in `named_modules` order): `modules`
    patterns (fnmatch over qualified names; every pattern must match), else every leaf module
    with parameters plus the block outputs (`blocks`, matched segment by segment); then
    `module_types` (fnmatch over class names; every pattern must match a selected module).
    ConfigError (one line, with close names) for a pattern that matches nothing."""
    # the model itself only when it is one layer (a bare nn.Linear): then it is the one leaf
    named = [(n, m) for n, m in model.named_modules() if n or next(m.children(), None) is None]
    names = [n for n, _ in named]
    if spec.modules is None:
        chosen = [n for n, m in named
                  if _leaf_with_params(m) or any(_segments_match(n, b) for b in spec.blocks)]
    else:
        chosen = []
        for pat in spec.modules:
            hit = [n for n in names if fnmatch.fnmatchcase(n, pat)]
            if not hit:
                raise ConfigError(f"modules pattern {pat!r} matches no module of {spec.model}"
                                  + _close(pat, names))
            chosen += hit
        chosen = [n for n in names if n in set(chosen)]
    if spec.module_types is not None:
        kinds = {n: type(m).__name__ for n, m in named}
        for pat in spec.module_types:
            if not any(fnmatch.fnmatchcase(kinds[n], pat) for n in chosen):
                raise ConfigError(f"module_types pattern {pat!r} matches no selected module's class"
                                  + _close(pat, [kinds[n] for n in chosen] or list(kinds.values())))
        chosen = [n for n in chosen if any(fnmatch.fnmatchcase(kinds[n], p) for p in spec.module_types)]
    if not chosen:
        raise ConfigError(f"no module of {spec.model} selected: it has no module with parameters; "
                          f"choose some with modules=[...]" + _close("", names))
    return chosen


# ---- outputs: the main tensor of a tuple / dict ------------------------------------------------
def split(out: Any, key: str | None = None, what: str = "the model") -> tuple[torch.Tensor, Callable]:
    """(main tensor, rebuild): `out` itself, a Mapping's entry `key` (default its first tensor
    value: a Hugging Face ModelOutput's last_hidden_state or logits), a tuple's first tensor;
    rebuild(t) returns `out` with the main tensor replaced by t."""
    if isinstance(out, torch.Tensor):
        if key is not None and what == "the model":
            raise ConfigError(f"output={key} names an entry, but {what} returns one tensor; "
                              "leave output unset")
        return out, lambda t: t
    if isinstance(out, Mapping):
        keys = [k for k, v in out.items() if isinstance(v, torch.Tensor)]
        k = key if key is not None else (keys[0] if keys else None)
        if k not in keys:
            raise ConfigError(f"output={key}: {what} returns no tensor {key!r}; its tensors: "
                              f"{', '.join(map(str, keys)) or 'none'}")

        def rebuild_map(t: torch.Tensor, out=out, k=k) -> Any:
            new = dict(out.items())
            new[k] = t
            try:
                return type(out)(**new)
            except TypeError:
                return new
        return out[k], rebuild_map
    if isinstance(out, (tuple, list)):
        idx = [i for i, v in enumerate(out) if isinstance(v, torch.Tensor)]
        if not idx:
            raise ConfigError(f"{what} returns a {type(out).__name__} without a tensor")
        i = idx[0]
        if key is not None and what == "the model":
            if not (key.isdigit() and int(key) in idx):
                raise ConfigError(f"output={key}: {what} returns a {type(out).__name__}; name the "
                                  f"tensor by its index: {', '.join(map(str, idx))}")
            i = int(key)

        def rebuild_seq(t: torch.Tensor, out=out, i=i) -> Any:
            items = list(out)
            items[i] = t
            return type(out)(items) if isinstance(out, list) else tuple(items)
        return out[i], rebuild_seq
    raise ConfigError(f"{what} returns {type(out).__name__}, not a tensor, tuple or dict of tensors")


def channel_dim(shape: Sequence[int], channels: str) -> int | None:
    """The channel dim of the SPP statistics for an output of `shape` (batch first): first → 1,
    last → the last dim, auto → 1 with ≥ 2 spatial dims (N, C, H, W…), else the last; None for
    (N,) outputs (one channel)."""
    nd = len(shape)
    if nd < 2:
        return None
    if channels == "first" or (channels == "auto" and nd >= 4):
        return 1
    return nd - 1


def sum_sq(t: torch.Tensor) -> torch.Tensor:
    """Σ t² as ‖t‖₂², one fused reduction: no temporary of t's size (under vmap such a temporary
    is R times larger, and freshly allocated blocks that large cost page faults on CPU)."""
    return torch.linalg.vector_norm(t).square()


def mean_sq(t: torch.Tensor) -> torch.Tensor:
    """mean t² = ‖t‖₂² / #t."""
    return sum_sq(t) / t.numel()


def forward_stats(y: torch.Tensor, cdim: int | None) -> list[torch.Tensor]:
    """[mean y², mean y, mean_c ȳ_c², mean_c Var_c y] (see the module docstring)."""
    fwd, mean = mean_sq(y), y.mean()
    if cdim is None:
        v, m = torch.var_mean(y, correction=0)
        return [fwd, mean, m.square(), v]
    dims = [d for d in range(y.dim()) if d != cdim]
    v, m = torch.var_mean(y, dim=dims, correction=0)
    return [fwd, mean, m.square().mean(), v.mean()]


class Tap:
    """The forward hooks' shared state: off, discovering the points (their order, shapes,
    classes), or measuring (adding each point's ε to its output and recording its statistics)."""

    def __init__(self, channels: str):
        self.channels = channels
        self.mode: str | None = None
        self.calls: dict[str, int] = {}
        self.found: list[tuple[str, str, str, tuple[int, ...]]] = []
        self.eps: dict[str, torch.Tensor] = {}
        self.cdims: dict[str, int | None] = {}
        self.stats: dict[str, list[torch.Tensor]] = {}

    def start(self, mode: str, eps: dict[str, torch.Tensor] | None = None) -> None:
        self.mode, self.calls, self.stats = mode, {}, {}
        self.eps = eps or {}
        if mode == "discover":
            self.found = []

    def stop(self) -> dict[str, list[torch.Tensor]]:
        self.mode = None
        return self.stats

    def hook(self, name: str) -> Callable:
        def fn(module: nn.Module, args: Any, out: Any) -> Any:
            if self.mode is None:
                return None
            k = self.calls.get(name, 0) + 1
            self.calls[name] = k
            label = name or ROOT
            key = label if k == 1 else f"{label}#{k}"
            y, rebuild = split(out, None, f"module {name}")
            if self.mode == "discover":
                self.found.append((key, name, type(module).__name__, tuple(y.shape)))
                return None
            if key not in self.eps:  # a call the discovery pass did not see
                raise RuntimeError(f"module {key} ran, but not when the points were discovered")
            self.stats[key] = forward_stats(y, self.cdims[key])
            return rebuild(y + self.eps[key])
        return fn


# ---- the ensemble ----------------------------------------------------------------------------
@dataclass
class Ensemble:
    """R models' stacked parameters and buffers, the base module they run through (with the
    hooks), the points, the inputs (R, B, *input_shape) and cotangents (R, *output_shape)."""

    base: nn.Module
    params: dict[str, torch.Tensor]
    buffers: dict[str, torch.Tensor]
    points: list[Point]
    x: torch.Tensor
    cot: torch.Tensor
    tap: Tap
    info: dict[str, Any]


def _prepare(model: nn.Module, spec: ProbeSpec) -> nn.Module:
    model = model.to(device=spec.device, dtype=spec.torch_dtype)
    model.train(spec.train)
    models.dropout_off(model)
    if spec.train:  # batch statistics; no running-stat updates (no in-place buffer writes in vmap)
        torch.func.replace_all_batch_norm_modules_(model)
    return model


def _vocab(model: nn.Module, spec: ProbeSpec) -> int:
    if spec.vocab is not None:
        return spec.vocab
    emb = next((m for m in model.modules() if isinstance(m, nn.Embedding)), None)
    if emb is None:
        raise ConfigError(f"input=tokens: {spec.model} has no nn.Embedding to take the vocabulary "
                          "from; set vocab=N")
    return int(emb.num_embeddings)


def inputs(spec: ProbeSpec, vocab: int | None) -> torch.Tensor:
    """(R, B, *input_shape): N(0, input_var) floats, or token ids uniform over 0..vocab-1, each
    replicate from its own inputs stream."""
    shape = (spec.batch, *spec.input_shape)
    xs = []
    for r in range(spec.replicates):
        g = models.generator(spec.seed, r, models.INPUTS, spec.device)
        if spec.input == "tokens":
            xs.append(torch.randint(0, vocab, shape, generator=g, device=spec.device))
        else:
            x = torch.empty(shape, dtype=spec.torch_dtype, device=spec.device)
            xs.append(x.normal_(0.0, math.sqrt(spec.input_var), generator=g))
    return torch.stack(xs)


def ensemble(factory: Callable[..., Any] | nn.Module, spec: ProbeSpec) -> Ensemble:
    """Build the R replicates (`models.build`; a harness scheme re-draws their Linear/Conv
    weights from their model streams), select the modules, discover the points with one forward
    pass of replicate 0, stack the parameters. ConfigError (one line) for a factory that raises,
    a pattern that matches nothing, inputs the model does not take."""
    what = f"model {spec.model}"
    nets = []
    for r in range(spec.replicates):
        m = models.build(factory, dict(spec.model_args), spec.seed, r, what)
        if not spec.native:
            g = models.generator(spec.seed, r, models.MODEL, "cpu")
            m = m.to(dtype=spec.torch_dtype)
            if models.reinitialize(m, spec.scheme, spec.init_kwargs(), spec.bias_std, g) == 0:
                raise ConfigError(f"scheme {spec.scheme}: {spec.model} has no Linear or Conv layer "
                                  "to re-initialize; use scheme=native")
        nets.append(_prepare(m, spec))
    base = nets[0]
    chosen = select(base, spec)
    tap = Tap(spec.channels)
    handles = {n: base.get_submodule(n).register_forward_hook(tap.hook(n)) for n in chosen}
    vocab = _vocab(base, spec) if spec.input == "tokens" else None
    x = inputs(spec, vocab)
    tap.start("discover")
    try:
        with torch.no_grad():
            out = base(x[0])
    except ConfigError:
        raise
    except Exception as e:  # noqa: BLE001 - the model's own error, as one line
        shape = [spec.batch, *spec.input_shape]
        raise ConfigError(f"{what} does not take inputs of shape {shape} (batch × input_shape="
                          f"{list(spec.input_shape)}, {spec.input}): {type(e).__name__}: "
                          f"{models._one_line(e)}") from None
    finally:
        tap.stop()
    y, _ = split(out, spec.output)
    canonical = {id(p): n for n, p in base.named_parameters()}
    points = []
    for key, name, kind, shape in tap.found:
        own = base.get_submodule(name).parameters()
        name = name or ROOT
        params = tuple(dict.fromkeys(canonical[id(p)] for p in own if id(p) in canonical))
        points.append(Point(key, name, kind, shape, channel_dim(shape, spec.channels), params))
    never = [n or ROOT for n in chosen if (n or ROOT) not in {p.module for p in points}]
    tap.cdims = {p.key: p.channel_dim for p in points}
    if not points:
        for h in handles.values():
            h.remove()
        raise ConfigError(f"none of the selected modules of {spec.model} ran in its forward pass")
    cot = torch.empty((spec.replicates, *y.shape), dtype=y.dtype, device=spec.device)
    for r in range(spec.replicates):
        cot[r].normal_(0.0, 1.0, generator=models.generator(spec.seed, r, models.COTANGENT, spec.device))
    params, buffers = stack_module_state(nets)
    params = {k: v.detach() for k, v in params.items()}
    del nets[1:]  # stacked copies hold the replicates now; the base module stays
    info: dict[str, Any] = {"output": spec.output or _output_name(out), "points": len(points),
                            "output_shape": list(y.shape)}
    if never:
        info["never_called"] = never
    if vocab is not None:
        info["vocab"] = vocab
    return Ensemble(base, params, dict(buffers), points, x, cot, tap, info)


def _output_name(out: Any) -> str:
    if isinstance(out, Mapping):
        return str(next(k for k, v in out.items() if isinstance(v, torch.Tensor)))
    if isinstance(out, (tuple, list)):
        return f"[{next(i for i, v in enumerate(out) if isinstance(v, torch.Tensor))}]"
    return "the output tensor"


def point_function(ens: Ensemble, spec: ProbeSpec) -> Callable:
    """f(params, buffers, x, cot) -> (points, quantities) statistics of one replicate; vmap maps
    it over the stacked replicates, the loop calls it once per replicate."""
    points, tap, base = ens.points, ens.tap, ens.base
    used = list(dict.fromkeys(n for p in points for n in p.params))
    nan = torch.tensor(float("nan"), dtype=spec.torch_dtype, device=spec.device)

    def f(params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor], x: torch.Tensor,
          cot: torch.Tensor) -> torch.Tensor:
        eps = {p.key: torch.zeros(p.shape, dtype=cot.dtype, device=cot.device) for p in points}

        def loss(p: dict[str, torch.Tensor], e: dict[str, torch.Tensor]):
            tap.start("measure", e)
            try:
                out = functional_call(base, (p, buffers), (x,))
            finally:
                stats = tap.stop()
            y, _ = split(out, spec.output)
            return (y * cot).sum(), stats

        (gp, ge), stats = grad(loss, argnums=(0, 1), has_aux=True)(params, eps)
        # each parameter once (a block's point shares its leaves' parameters)
        gsq = {n: sum_sq(gp[n]) for n in used}
        psq = {n: sum_sq(params[n]) for n in used}
        rows = []
        for pt in points:
            row = [*stats[pt.key], mean_sq(ge[pt.key])]
            if pt.params:
                sq = sum(gsq[n] for n in pt.params)
                count = sum(params[n].numel() for n in pt.params)
                row.append(sq / (count * spec.batch))
                row.append(torch.sqrt(sum(psq[n] for n in pt.params)))
            else:
                row += [nan, nan]
            rows.append(torch.stack([v.to(nan.dtype) for v in row]))
        return torch.stack(rows)

    return f


def measure(factory: Callable[..., Any] | nn.Module, spec: ProbeSpec, progress: bool = False,
            path: str | None = None) -> ProbeMeasurement:
    """Build, select, discover, then measure every replicate: `path` "vmap" or "loop" forces
    one (default: spec.vmap: auto tries vmap and falls back to the loop)."""
    t0 = time.perf_counter()
    ens = ensemble(factory, spec)
    f = point_function(ens, spec)
    R = spec.replicates
    chunk = spec.chunk or R
    want = path or {"auto": "vmap", "true": "vmap", "false": "loop"}[spec.vmap]
    info = dict(ens.info)
    with alloc.retained() as how:
        info["allocator"] = how
        out = _run(f, ens, spec, R, chunk, want, path, progress, info)
    if models.SHIMS:
        info["shims"] = dict(models.SHIMS)
    values = out.detach().to("cpu", torch.float64).numpy()
    return ProbeMeasurement(values, ens.points, time.perf_counter() - t0, device_name(spec.device),
                            chunk if info["path"] == "vmap" else 1, info)


def _run(f: Callable, ens: Ensemble, spec: ProbeSpec, R: int, chunk: int, want: str,
         path: str | None, progress: bool, info: dict[str, Any]) -> torch.Tensor:
    """The wanted path's (R, points, quantities) values; vmap falls back to the loop when it
    cannot trace the model (unless forced), recording why in `info`."""
    out = None
    if want == "vmap":
        try:
            with quiet():
                out = _run_vmap(f, ens, R, chunk, progress)
            info["path"] = "vmap"
        except (ConfigError, torch.OutOfMemoryError, MemoryError):
            raise
        except Exception as e:  # noqa: BLE001 - vmap cannot trace this model: the loop can
            if path == "vmap" or spec.vmap == "true":
                raise ConfigError(f"vmap=true, but {spec.model} cannot be vmapped over replicates "
                                  f"({type(e).__name__}: {models._one_line(e)}); use vmap=auto or "
                                  "false") from None
            info["path"] = "loop"
            info["vmap_error"] = f"{type(e).__name__}: {models._one_line(e)}"
    if out is None:
        out = _run_loop(f, ens, R, progress)
        info.setdefault("path", "loop")
    return out


def _run_vmap(f: Callable, ens: Ensemble, R: int, chunk: int, progress: bool) -> torch.Tensor:
    parts = []
    vf = vmap(f, in_dims=(0, 0, 0, 0), randomness="error")
    for s in tqdm(range(0, R, chunk), disable=not progress, desc="probe (vmap)"):
        sl = slice(s, min(R, s + chunk))
        parts.append(vf({k: v[sl] for k, v in ens.params.items()},
                        {k: v[sl] for k, v in ens.buffers.items()}, ens.x[sl], ens.cot[sl]))
    return torch.cat(parts)


def _run_loop(f: Callable, ens: Ensemble, R: int, progress: bool) -> torch.Tensor:
    parts = []
    for r in tqdm(range(R), disable=not progress, desc="probe (loop)"):
        parts.append(f({k: v[r] for k, v in ens.params.items()},
                       {k: v[r] for k, v in ens.buffers.items()}, ens.x[r], ens.cot[r]))
    return torch.stack(parts)
