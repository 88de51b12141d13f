"""The harness in a notebook: run one config or a grid in-process, nothing written unless asked.

    >>> import harness
    >>> r = harness.run("act=tanh", "scheme=xavier", depth=20, width=128)
    >>> r.frame          # the tidy frame metrics.parquet would hold
    >>> r.verdict()      # the console lines of `python -m harness.run`
    >>> fig = r.plot()   # variance.png's figure (a matplotlib Figure; nothing saved)
    >>> r.save("out")    # optional: the files the CLI writes
    >>> s = harness.sweep({"act": ["relu", "tanh"], "depth": [10, 50]}, width=64, replicates=8)
    >>> s.frame, s.runs, s.table()   # all runs as one frame; the results; the agreement table

Overrides are Hydra-style strings ("act=tanh", "scheme.gain=2") and/or keyword arguments, which
become "key=value" (True/False -> true/false, None -> null, a list or tuple -> [a,b]). They are
checked exactly as the CLI checks them (`harness.cli.check_overrides`): a bad one raises
`harness.core.spec.ConfigError` with the CLI's one-line message, before anything is measured.

`compute` (measure, predict, frame, criticality, finite-width band, notes) and `write` (the run's
files) are the two halves of `python -m harness.run` as well (`harness.run.execute`), so a saved
result holds the same files, byte for byte, as the CLI's for the same config and seed.
"""

from __future__ import annotations

import io
import itertools
import re
import shutil
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import DictConfig

from harness import cli
from harness.core.capabilities import POSITIONS as POSITION_MAPS  # the capability
from harness.core.spec import ConfigError, Spec
from harness.outputs import compare, summary
from harness.outputs.results import (
    JACOBIAN,
    METADATA,
    METRICS,
    POSITIONS,
    atomic_write_bytes,
    check_frame,
    positions_frame,
    run_metadata,
    spectrum_frame,
    to_frame,
    write_json,
    write_parquet,
)
from harness.sim import jacobian, lsuv
from harness.sim.chunks import CHUNKS
from harness.sim.runner import Measurement, measure
from harness.theory import criticality, finite_width, nlo
from harness.theory.meanfield import predict

if TYPE_CHECKING:
    from matplotlib.figure import Figure

#: the command a saved in-process run names as the one that reproduces it
CLI = "python -m harness.run"


@dataclass(frozen=True)
class Result:
    """One run, in memory: its config, the tidy frame and everything the CLI prints or writes.

    frame: one row per (replicate, layer, quantity) with `value` (measured), `theory`, and
    `theory_nlo`, `theory_log_var` (the 1/n theory, null where not defined);
    positions: a conv run's position-resolved frame (else None); notes: the verdict's extra lines
    (criticality, finite-width coverage, lsuv, Jacobian slope).
    """

    spec: Spec
    config: DictConfig
    frame: pd.DataFrame
    positions: pd.DataFrame | None
    measurement: Measurement
    predicted: dict[str, np.ndarray]
    criticality: criticality.Criticality
    band: finite_width.Band
    coverage: dict[str, object]
    notes: list[str]
    overrides: tuple[str, ...] = ()

    def verdict(self) -> list[str]:
        """The lines `python -m harness.run` prints: per quantity measured ± s.e. against theory
        (`harness.outputs.summary.verdict`), the notes, and a conv run's position lines."""
        lines = [*summary.verdict(self.frame), *self.notes]
        if self.positions is not None:
            lines += summary.position_lines(self.positions)
        return lines

    def plot(self, kind: str = "variance") -> Figure:
        """The figure the CLI saves as `{kind}.png`: "variance" (measured vs theory per layer,
        with the finite-width band) or, for a conv run, "positions". Nothing is saved."""
        with warnings.catch_warnings():  # log axes spanning an overflow warn; the plot is fine
            warnings.simplefilter("ignore", RuntimeWarning)
            return self._figure(kind)

    def _figure(self, kind: str) -> Figure:
        # matplotlib (~1 s to import) only where a figure is drawn: a plot=false run or a
        # sweep's job never imports it
        from harness.outputs import plots

        if kind == "variance":
            b = self.band
            bands = {"forward": (b.lower, b.upper)} if b.lower is not None else None
            note = criticality.describe(self.criticality, short=True)
            return plots.variance(self.frame, bands=bands, note=note,
                                  band_label=b.source.split(" 2019")[0])
        if kind == "positions" and self.positions is not None:
            return plots.positions(self.positions)
        kinds = "variance, positions" if self.positions is not None else "variance"
        raise ConfigError(f"unknown figure {kind!r}; this run has: {kinds}")

    def metadata(self, command: str | None = None) -> dict[str, Any]:
        """metadata.json: spec, versions, commit, device, wall time, numeric events,
        criticality, finite-width coverage (and lsuv's gains); `command` reproduces the run."""
        m = self.measurement
        return run_metadata(
            self.spec,
            wall_s=m.wall_s,
            device_name=m.device_name,
            chunk_size=m.chunk_size,
            reproduce=command,
            numeric_events=summary.numeric_events(self.frame),
            criticality=self.criticality.to_dict(),
            finite_width_band=self.coverage,
            **({"lsuv": m.info["lsuv"]} if "lsuv" in m.info else {}),
        )

    def save(self, directory: str | Path, *, multirun: bool = False) -> Path:
        """Write the CLI's files for this run into `directory` (created); returns it.
        `multirun`: as a sweep's job (plot=auto then writes no figure)."""
        out = Path(directory)
        write(self, out, command=" ".join([CLI, *self.overrides]), multirun=multirun)
        return out


@dataclass(frozen=True)
class SweepResult:
    """Every run of a grid: `runs` (Results, in grid order), `labels` (each run's overrides of
    the grid, sorted by key, as Hydra names a sweep's job folders: "act=tanh,depth=10")."""

    runs: list[Result]
    labels: list[str]

    @cached_property
    def frame(self) -> pd.DataFrame:
        """All runs as one tidy frame, shaped like `harness.load` of a sweep folder: `run_dir`
        names each run (its label; after `save`, its folder is DIR/label)."""
        return pd.concat([r.frame.assign(run_dir=label) for r, label in zip(self.runs, self.labels,
                                                                             strict=True)],
                         ignore_index=True)

    def table(self, k: float | None = None, alpha: float | None = None) -> pd.DataFrame:
        """The report's agreement table (`harness.outputs.compare.agreement`): one row per run,
        disagreements first; k standard errors (default: Bonferroni's at family-wise rate α)."""
        return compare.agreement(self.frame, k, alpha=compare.ALPHA if alpha is None else alpha)

    def save(self, directory: str | Path) -> Path:
        """Write each run's files into `directory`/label, as a --multirun sweep's jobs (plot=auto:
        no per-run figure); returns `directory`."""
        out = Path(directory)
        for r, label in zip(self.runs, self.labels, strict=True):
            r.save(out / label, multirun=True)
        return out


# ---- the two halves of a run --------------------------------------------------------------
def compute(cfg: DictConfig, spec: Spec | None = None, *, progress: bool = False,
            overrides: Sequence[str] = (), chunks_dir: str | Path | None = None) -> Result:
    """Measure and predict one composed config: measure(spec), predict(spec) (lsuv: at its
    realized weight variances), the tidy frame, criticality, the finite-width band of the forward
    moment and its coverage, and the notes. `spec` defaults to Spec.from_config(cfg).
    `chunks_dir`: stream each chunk of replicates there and reuse the ones already there
    (`harness.sim.chunks`; `harness.run` uses its output folder's `chunks/`)."""
    spec = Spec.from_config(cfg) if spec is None else spec
    check_frame(spec)  # the tidy frame must fit the machine's memory: refuse before measuring
    m = measure(spec, progress=progress, chunks_dir=None if chunks_dir is None else Path(chunks_dir))
    theory_var_w = m.info.get("weight_variances")  # lsuv: its mean-field gains
    predicted = predict(spec, theory_var_w)
    # the 1/n theory (harness.theory.nlo): the NLO mean and the spread, where defined (never
    # at lsuv's realized gains: its orthogonal draws are not iid)
    nlo_mean = nlo.predict(spec, predicted) if theory_var_w is None else {}
    spread = nlo.log_variance(spec, predicted) if nlo_mean else {}
    crit = criticality.for_spec(spec, theory_var_w)
    band = finite_width.band(spec, predicted["forward"], predicted.get("correlation"),
                             nlo_mean=nlo_mean.get("forward"), nlo_log_var=spread.get("forward"))
    log_var = {**spread, **({"forward": band.log_var} if band.log_var is not None else {})}
    df = to_frame(spec, m.values, predicted, nlo_mean, log_var)
    pos = None
    if POSITION_MAPS in spec.architecture.capabilities:
        pos = positions_frame(spec, m.positions, spec.architecture.position_maps(spec))
    coverage = finite_width.coverage(band, m.values["forward"])
    notes = [criticality.describe(crit), finite_width.describe(coverage, spec.replicates)]
    theory_note = spec.architecture.theory_note(spec)  # e.g. a norm whose theory is missing
    if theory_note:
        notes.append(theory_note)
    if "lsuv" in m.info:
        notes.append(lsuv.describe(m.info))
    if spec.jacobian:
        notes.append(jacobian.describe_slopes(m.values["jacobian_rel_var"],
                                              predicted["jacobian_rel_var"]))
    return Result(spec, cfg, df, pos, m, predicted, crit, band, coverage, notes, tuple(overrides))


def write(result: Result, out_dir: str | Path, *, command: str | None = None,
          multirun: bool = False) -> None:
    """Write a run's files into out_dir: config.yaml, metadata.json, variance.png (as the
    `plot` key says: true, false, or auto — on unless `multirun`, a job of a sweep), a conv
    run's positions.parquet and positions.png, jacobian.parquet (jacobian=k), and last,
    atomically, metrics.parquet (which marks a complete run); then the run's streamed chunks
    (`chunks/`, `harness.sim.chunks`) are deleted."""
    out = Path(out_dir)
    meta = result.metadata(command)
    info = result.measurement.info
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "config.yaml", cli.resolved_yaml(result.config).encode())
    write_json(meta, out / METADATA)
    if cli.wants_plot(result.config.get("plot", "auto"), multirun=multirun):
        _save_png(result, "variance", out / "variance.png")
        if result.positions is not None:
            _save_png(result, "positions", out / "positions.png")
    if result.positions is not None:
        write_parquet(result.positions, out / POSITIONS, meta)
    if "jacobian_spectrum" in info:
        write_parquet(spectrum_frame(result.spec, info["jacobian_spectrum"]), out / JACOBIAN, meta)
    write_parquet(result.frame, out / METRICS, meta)
    shutil.rmtree(out / CHUNKS, ignore_errors=True)  # the streamed chunks: all in metrics now


def _save_png(result: Result, kind: str, path: Path) -> None:
    from harness.outputs import plots  # matplotlib only where a figure is drawn (Result._figure)

    with warnings.catch_warnings():  # log axes spanning an overflow warn; the plot is fine
        warnings.simplefilter("ignore", RuntimeWarning)
        fig = result._figure(kind)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=120)
    plots.plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


# ---- the notebook entry points ------------------------------------------------------------
def run(*overrides: str, progress: bool = False, **kwargs: Any) -> Result:
    """Measure and predict one config in-process (nothing is written; `Result.save` writes).

    `overrides`: Hydra-style "key=value" strings; `kwargs`: more, as key=value (lists -> [a,b]).
    `progress`: show the tqdm bar (off by default here). Raises ConfigError (one line, the CLI's
    message) on a bad override or value."""
    tokens = [*overrides, *as_overrides(kwargs)]
    return compute(compose(tokens), progress=progress, overrides=tokens)


def sweep(grid: Mapping[str, Sequence[Any]], *overrides: str, progress: bool = False,
          **kwargs: Any) -> SweepResult:
    """Run every point of the Cartesian product of `grid` (key -> values, in the given order),
    each with the fixed `overrides` and `kwargs` (as in `run`). Every point is checked before
    any is measured: one bad value raises ConfigError and nothing runs."""
    fixed = [*overrides, *as_overrides(kwargs)]
    for key, values in grid.items():
        if isinstance(values, str | bytes) or not isinstance(values, Sequence) or not values:
            raise ConfigError(f"sweep grid {key!r}: give a non-empty list of values (got {values!r})")
    points = [dict(zip(grid, combo, strict=True)) for combo in itertools.product(*grid.values())]
    jobs = []
    for point in points:
        swept = as_overrides(point)
        tokens = [*fixed, *swept]
        jobs.append((compose(tokens), tokens, ",".join(sorted(swept)) or "run"))
    runs = [compute(cfg, progress=progress, overrides=tokens) for cfg, tokens, _ in jobs]
    return SweepResult(runs, [label for _, _, label in jobs])


def compose(overrides: Sequence[str]) -> DictConfig:
    """The config of one run for these overrides, checked as the CLI checks a single run
    (`harness.cli.check_overrides`); ConfigError on a bad one, a flag, or a sweep (a,b)."""
    for o in overrides:
        if o.startswith("-"):
            raise ConfigError(f"{o!r} is a command-line flag; pass key=value overrides or keyword "
                              "arguments (a grid: harness.sweep)")
    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except HydraException:
        parsed = []  # check_overrides reports it in the CLI's words
    for p in parsed:
        if p.is_sweep_override():
            raise ConfigError(f"{p.input_line!r} is a sweep; harness.run takes one value per key "
                              "(a grid: harness.sweep({key: [values]}))")
    return cli.check_overrides(overrides, multirun=False)


_PLAIN = re.compile(r"[\w.+\-/:]+")


def as_overrides(kwargs: Mapping[str, Any]) -> list[str]:
    """key=value strings for keyword arguments: True/False -> true/false, None -> null, a list
    or tuple -> [a,b], a string with characters Hydra would parse (spaces, commas) quoted."""
    return [f"{k}={_value(v)}" for k, v in kwargs.items()]


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "null"
    if isinstance(v, list | tuple):
        return "[" + ",".join(_value(x) for x in v) + "]"
    if isinstance(v, Mapping):
        return "{" + ",".join(f"{k}:{_value(x)}" for k, x in v.items()) + "}"
    text = str(v)
    if isinstance(v, str) and not _PLAIN.fullmatch(text):
        return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return text
