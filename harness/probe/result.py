"""The probe's result and its two halves (`compute`, `write`), and the notebook entry point
`probe(model_or_factory, ...)` (exported as the callable `harness.probe`).

`ProbeResult` is a `harness.Result` (harness/api.py): the same frame contract, verdict, plot,
metadata and save, with no theory.
"""

from __future__ import annotations

import io
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig

from harness import api, cli
from harness.core.validate import ConfigError
from harness.outputs import summary
from harness.outputs.results import (
    METADATA,
    METRICS,
    atomic_write_bytes,
    run_metadata,
    write_json,
    write_parquet,
)
from harness.probe import checks as probe_cli
from harness.probe import engine, models
from harness.probe import frame as probe_frame
from harness.probe.spec import ProbeSpec

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from torch import nn

#: the figure a probe run saves
FIGURE = "modules.png"
#: the optional libraries whose versions a probe's metadata records
LIBRARIES = ("torchvision", "timm", "transformers")

__all__ = ["FIGURE", "ProbeResult", "compute", "probe", "write"]


@dataclass(frozen=True)
class ProbeResult(api.Result):
    """One probe run in memory: a `harness.Result` whose frame has `module` and `module_type`
    columns and no theory (predicted is empty; criticality and band are None); `measurement` is
    the probe's (`harness.probe.engine.ProbeMeasurement`: values, points, path)."""

    def verdict(self) -> list[str]:
        """The lines `python -m harness.probe` prints: per quantity the first and last point's
        replicate mean ± s.e. and the decades it spans over the points; the path that ran."""
        return [*probe_frame.verdict(self.spec, self.frame, self.measurement.info), *self.notes]

    def plot(self, kind: str = "modules") -> Figure:
        """The figure the CLI saves as modules.png: the statistics along execution order."""
        if kind != "modules":
            raise ConfigError(f"unknown figure {kind!r}; a probe run has: modules")
        from harness.probe import figure  # matplotlib only where a figure is drawn (as harness.api)

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return figure.modules(self.frame)

    def metadata(self, command: str | None = None) -> dict[str, Any]:
        """metadata.json: spec, versions (with the model libraries'), commit, device, wall time,
        numeric events, the probe's info (path: vmap | loop and why, points, output, shims)."""
        m = self.measurement
        return run_metadata(self.spec, wall_s=m.wall_s, device_name=m.device_name,
                            chunk_size=m.chunk_size, reproduce=command,
                            numeric_events=summary.numeric_events(self.frame),
                            probe=m.info, model_libraries=_library_versions())

    def save(self, directory: str | Path, *, multirun: bool = False) -> Path:
        """Write the CLI's files for this run into `directory`; returns it."""
        out = Path(directory)
        write(self, out, command=" ".join([probe_cli.COMMAND, *self.overrides]), multirun=multirun)
        return out


def _library_versions() -> dict[str, str]:
    out = {}
    for name in LIBRARIES:
        mod = sys.modules.get(name)
        if mod is not None:
            out[name] = str(getattr(mod, "__version__", "?"))
    return out


def compute(cfg: DictConfig, factory: Callable[..., Any] | nn.Module | None = None, *,
            label: str | None = None, target: str | None = None, progress: bool = False,
            overrides: tuple[str, ...] = (), path: str | None = None) -> ProbeResult:
    """Measure one composed probe config: the spec, the factory (model._target_, or `factory`
    given with its `label` and dotted `target`), the ensemble's statistics, the tidy frame."""
    spec = ProbeSpec.from_config(cfg, model=label, target=target)
    if factory is None:
        factory = models.resolve(spec.target, f"model {spec.model}")
    m = engine.measure(factory, spec, progress=progress, path=path)
    frame = probe_frame.to_frame(spec, m)
    return ProbeResult(spec, cfg, frame, None, m, {}, None, None, {}, [], tuple(overrides))


def write(result: ProbeResult, out_dir: str | Path, *, command: str | None = None,
          multirun: bool = False) -> None:
    """Write config.yaml, metadata.json, modules.png (as `plot` says) and last, atomically,
    metrics.parquet (which marks a complete run)."""
    out = Path(out_dir)
    meta = result.metadata(command)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "config.yaml", cli.resolved_yaml(result.config).encode())
    write_json(meta, out / METADATA)
    if cli.wants_plot(result.config.get("plot", "auto"), multirun=multirun):
        from harness.probe import figure  # matplotlib only where a figure is drawn (as harness.api)

        fig = result.plot()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110)
        figure.plt.close(fig)
        atomic_write_bytes(out / FIGURE, buf.getvalue())
    write_parquet(result.frame, out / METRICS, meta)


def _describe(obj: Any) -> tuple[str, str]:
    """(label, dotted target) of a factory or module object passed to `probe`."""
    kind = obj if isinstance(obj, type) or callable(obj) and not hasattr(obj, "forward") else type(obj)
    name = getattr(kind, "__qualname__", getattr(kind, "__name__", type(obj).__name__))
    target = f"{getattr(kind, '__module__', '?')}.{name}"
    return (name if kind is obj else f"{name} (instance)"), target


def probe(model_or_factory: str | Callable[..., Any] | nn.Module, *overrides: str,
          progress: bool = False, **kwargs: Any) -> ProbeResult:
    """Probe one model in-process (nothing written; `ProbeResult.save` writes).

    `model_or_factory`: a preset name ("resnet18"), a dotted path ("pkg.mod.Factory"), a callable
    returning an nn.Module (called once per replicate under that replicate's seed), or an
    nn.Module instance (copied per replicate, its layers' reset_parameters() re-run).
    `overrides`/`kwargs`: as for `harness.run` (e.g. "scheme=kaiming", input_shape=[3, 64, 64]).
    Raises ConfigError (one line) on bad input."""
    tokens = [*overrides, *api.as_overrides(kwargs)]
    label = target = None
    factory = None
    if isinstance(model_or_factory, str):
        tokens.insert(0, f"model._target_={model_or_factory}" if "." in model_or_factory
                      else f"model={model_or_factory}")
    else:
        factory = model_or_factory
        label, target = _describe(model_or_factory)
    for t in tokens:
        if t.startswith("-"):
            raise ConfigError(f"{t!r} is a command-line flag; pass key=value overrides or keyword arguments")
    cfg = probe_cli.check_overrides(tokens, multirun=False, target=target)
    return compute(cfg, factory, label=label, target=target, progress=progress, overrides=tuple(tokens))
