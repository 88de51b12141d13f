"""`python -m harness.run KEY=VALUE ...`: measure and predict per-layer variance for one config.

A thin `@hydra.main` around `execute(cfg, out_dir)`, the plain function tests call on a composed
config. Outputs (in Hydra's run directory): metrics.parquet, metadata.json, config.yaml,
variance.png, for architectures with positions (arch=conv) positions.parquet and positions.png,
and with jacobian=k jacobian.parquet (the last layer's Jacobian spectrum); `metrics.parquet` is
written last, atomically, and marks a complete run.
"""

from __future__ import annotations

import io
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import hydra
import pandas as pd
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from harness import cli
from harness.archs.base import POSITIONS as POSITION_MAPS  # the capability
from harness.cli import launchers, sweep
from harness.core.spec import ConfigError, Spec
from harness.outputs import plots, summary
from harness.outputs.results import (
    JACOBIAN,
    METADATA,
    METRICS,
    POSITIONS,
    atomic_write_bytes,
    positions_frame,
    run_metadata,
    spectrum_frame,
    to_frame,
    write_json,
    write_parquet,
)
from harness.sim import jacobian, lsuv
from harness.sim.runner import measure
from harness.theory import criticality, finite_width
from harness.theory.meanfield import predict


@dataclass(frozen=True)
class RunResult:
    spec: Spec
    frame: pd.DataFrame
    out_dir: Path
    wall_s: float


def execute(
    cfg: DictConfig, out_dir: str | Path, *, command: str | None = None, echo: bool = True
) -> RunResult:
    """Build the Spec, measure, predict, write every output to `out_dir`, print the verdict."""
    t0 = time.perf_counter()
    spec = Spec.from_config(cfg)
    arch = spec.architecture
    out = Path(out_dir)
    say = print if echo else (lambda *a, **k: None)
    say(f"harness: {spec.arch} depth {spec.depth}, widths {_widths(spec)}{arch.describe(spec)}, "
        f"{spec.replicates} replicates × {spec.batch} inputs on {spec.device} ({spec.dtype})")
    say(f"scheme {spec.scheme}, mode {spec.mode}: {spec.gain_source}; act {spec.activation.describe()}")

    measurement = measure(spec, progress=bool(cfg.get("progress", True)) and echo)
    theory_var_w = measurement.info.get("weight_variances")  # lsuv: its mean-field gains
    predicted = predict(spec, theory_var_w)
    df = to_frame(spec, measurement.values, predicted)
    pos = None
    if POSITION_MAPS in arch.capabilities:
        pos = positions_frame(spec, measurement.positions, arch.position_maps(spec))
    crit = criticality.for_spec(spec, theory_var_w)
    band = finite_width.band(spec, predicted["forward"], predicted.get("correlation"))
    coverage = finite_width.coverage(band, measurement.values["forward"])
    notes = [criticality.describe(crit), finite_width.describe(coverage, spec.replicates)]
    if "lsuv" in measurement.info:
        notes.append(lsuv.describe(measurement.info))
    if spec.jacobian:
        notes.append(jacobian.describe_slopes(measurement.values["jacobian_rel_var"],
                                              predicted["jacobian_rel_var"]))

    meta = run_metadata(
        spec,
        wall_s=measurement.wall_s,
        device_name=measurement.device_name,
        chunk_size=measurement.chunk_size,
        reproduce=command,
        numeric_events=summary.numeric_events(df),
        criticality=crit.to_dict(),
        finite_width_band=coverage,
        **({"lsuv": measurement.info["lsuv"]} if "lsuv" in measurement.info else {}),
    )
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "config.yaml", cli.resolved_yaml(cfg).encode())
    write_json(meta, out / METADATA)
    if cfg.get("plot", True):
        bands = {"forward": (band.lower, band.upper)} if band.lower is not None else None
        note = criticality.describe(crit, short=True)
        _save_png(lambda frame: plots.variance(frame, bands=bands, note=note), df, out / "variance.png")
        if pos is not None:
            _save_png(plots.positions, pos, out / "positions.png")
    if pos is not None:
        write_parquet(pos, out / POSITIONS, meta)
    if "jacobian_spectrum" in measurement.info:
        write_parquet(spectrum_frame(spec, measurement.info["jacobian_spectrum"]),
                      out / JACOBIAN, meta)
    write_parquet(df, out / METRICS, meta)

    wall = time.perf_counter() - t0
    for line in [*summary.verdict(df), *notes]:
        say(line)
    if pos is not None:
        for line in summary.position_lines(pos):
            say(line)
    say(f"measured in {measurement.wall_s:.2f} s ({measurement.device_name}); "
        f"total {wall:.2f} s; outputs in {out}")
    return RunResult(spec, df, out, wall)


def _save_png(plot, frame: pd.DataFrame, path: Path) -> None:
    with warnings.catch_warnings():  # log axes spanning an overflow warn; the plot is fine
        warnings.simplefilter("ignore", RuntimeWarning)
        fig = plot(frame)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=120)
    plots.plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def _widths(spec: Spec) -> str:
    return str(spec.width) if spec.width is not None else "[" + ",".join(map(str, spec.widths)) + "]"


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def _task(cfg: DictConfig) -> dict | None:
    hc = HydraConfig.get()
    command = " ".join(["python -m harness.run",
                        *(o for o in hc.overrides.task if not o.startswith("launcher="))])
    if hc.mode == RunMode.MULTIRUN:
        return _sweep_job(cfg, hc, command)
    try:
        execute(cfg, hc.runtime.output_dir, command=command)
    except ConfigError as e:  # main() prechecks single runs; this catches callers that bypass it
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def _sweep_job(cfg: DictConfig, hc: DictConfig, command: str) -> dict:
    """One job of a --multirun sweep: threads for its launcher, then sweep.run_job (never raises)."""
    try:
        launcher = OmegaConf.to_container(hc.launcher, resolve=True)
        n, why = launchers.job_threads(launcher, launchers.cores())
    except Exception as e:  # noqa: BLE001 - an odd launcher config must not abort the sweep
        n, why = None, f"torch's default: launcher config unreadable ({type(e).__name__})"
    if n is not None:
        torch.set_num_threads(n)
    invocation = sweep.invocation_of(hc.sweep.dir)
    threads = f"{torch.get_num_threads()} ({why})"
    return sweep.run_job(cfg, hc.runtime.output_dir, execute=execute, overrides=list(hc.overrides.task),
                         command=command, invocation=invocation, threads=threads)


def main(argv: list[str] | None = None) -> None:
    """Check the command line (one-line errors, no files), then hand it to Hydra.

    A --multirun sweep exits 1 if any of its jobs failed or was interrupted, 0 otherwise.
    """
    args = sys.argv[1:] if argv is None else argv
    cli.precheck(args)
    sys.argv = [sys.argv[0], *args]
    try:
        _task()
    except SystemExit:  # a launcher aborted the sweep (e.g. a worker was killed): say what was done
        sweep.finish(stopped="its launcher aborted")
        raise
    except KeyboardInterrupt:
        sweep.finish(stopped="interrupted")
        raise SystemExit(130) from None
    result = sweep.last_summary
    if result is not None and (result["failed"] or result["running"]):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
