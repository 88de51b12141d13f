"""`python -m harness.run KEY=VALUE ...`: measure and predict per-layer variance for one config.

A thin `@hydra.main` around `execute(cfg, out_dir)`, the plain function tests call on a composed
config. Outputs (in Hydra's run directory): metrics.parquet, metadata.json, config.yaml,
variance.png; `metrics.parquet` is written last, atomically, and marks a complete run.
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
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from . import cli, criticality, finite_width, lsuv, plots, summary
from .results import (
    METADATA,
    METRICS,
    atomic_write_bytes,
    run_metadata,
    to_frame,
    write_json,
    write_parquet,
)
from .runner import measure
from .spec import ConfigError, Spec
from .theory import predict


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
    out = Path(out_dir)
    say = print if echo else (lambda *a, **k: None)
    say(f"harness: {spec.arch} depth {spec.depth}, widths {_widths(spec)}, {spec.replicates} "
        f"replicates × {spec.batch} inputs on {spec.device} ({spec.dtype})")
    say(f"scheme {spec.scheme}, mode {spec.mode}: {spec.gain_source}; act {spec.activation.describe()}")

    measurement = measure(spec, progress=bool(cfg.get("progress", True)) and echo)
    theory_var_w = measurement.info.get("weight_variances")  # lsuv: its mean-field gains
    predicted = predict(spec, theory_var_w)
    df = to_frame(spec, measurement.values, predicted)
    crit = criticality.for_spec(spec, theory_var_w)
    band = finite_width.band(spec, predicted["forward"], predicted["correlation"])
    coverage = finite_width.coverage(band, measurement.values["forward"])
    notes = [criticality.describe(crit), finite_width.describe(coverage, spec.replicates)]
    if "lsuv" in measurement.info:
        notes.append(lsuv.describe(measurement.info))

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
        with warnings.catch_warnings():  # log axes spanning an overflow warn; the plot is fine
            warnings.simplefilter("ignore", RuntimeWarning)
            fig = plots.variance(df, bands={"forward": (band.lower, band.upper)}
                                 if band.lower is not None else None,
                                 note=criticality.describe(crit, short=True))
            buf = io.BytesIO()
            fig.savefig(buf, format="png", dpi=120)
        plots.plt.close(fig)
        atomic_write_bytes(out / "variance.png", buf.getvalue())
    write_parquet(df, out / METRICS, meta)

    wall = time.perf_counter() - t0
    for line in [*summary.verdict(df), *notes]:
        say(line)
    say(f"measured in {measurement.wall_s:.2f} s ({measurement.device_name}); "
        f"total {wall:.2f} s; outputs in {out}")
    return RunResult(spec, df, out, wall)


def _widths(spec: Spec) -> str:
    return str(spec.width) if spec.width is not None else "[" + ",".join(map(str, spec.widths)) + "]"


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def _task(cfg: DictConfig) -> None:
    hc = HydraConfig.get()
    command = " ".join(["python -m harness.run", *hc.overrides.task])
    try:
        execute(cfg, hc.runtime.output_dir, command=command)
    except ConfigError as e:  # single runs are checked before Hydra starts; this is a sweep job
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def main(argv: list[str] | None = None) -> None:
    """Check the command line (one-line errors, no files), then hand it to Hydra."""
    args = sys.argv[1:] if argv is None else argv
    cli.precheck(args)
    sys.argv = [sys.argv[0], *args]
    _task()


if __name__ == "__main__":
    main()
