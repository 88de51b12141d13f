"""`python -m harness.run KEY=VALUE ...`: measure and predict per-layer variance for one config.

A thin `@hydra.main` around `execute(cfg, out_dir)`, the plain function tests call on a composed
config (its halves, `harness.api.compute` and `harness.api.write`, are the notebook API's too).
Outputs (in Hydra's run directory): metrics.parquet, metadata.json, config.yaml, variance.png,
for architectures with positions (arch=conv) positions.parquet and positions.png, and with
jacobian=k jacobian.parquet (the last layer's Jacobian spectrum); `metrics.parquet` is written
last, atomically, and marks a complete run.
"""

# ruff: noqa: E402  (the imports follow the garbage collector's freeze on purpose)
from __future__ import annotations

import gc
import sys

if __name__ == "__main__":
    # python -m harness.run: what is imported lives as long as the process, so full garbage
    # collections need not walk it (frozen again after the imports below, at the end)
    gc.freeze()

import functools
import time
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import pandas as pd
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from harness import api, cli
from harness.cli import launchers, sweep
from harness.core.spec import ConfigError, Spec
from harness.sim.chunks import CHUNKS, stored


class _CallableModule(types.ModuleType):
    """`harness.run` is this module (`python -m harness.run`) and, called, the in-process API:
    `harness.run("act=tanh", depth=20)` is `harness.api.run(...)`, whichever of the two the
    name `harness.run` is bound to (importing this module rebinds it from the function)."""

    def __call__(self, *overrides: str, **kwargs: Any) -> api.Result:
        return api.run(*overrides, **kwargs)


sys.modules[__name__].__class__ = _CallableModule


@dataclass(frozen=True)
class RunResult:
    spec: Spec
    frame: pd.DataFrame
    out_dir: Path
    wall_s: float


def execute(
    cfg: DictConfig, out_dir: str | Path, *, command: str | None = None, echo: bool = True,
    multirun: bool = False,
) -> RunResult:
    """Build the Spec, measure and predict (`harness.api.compute`), write every output to
    `out_dir` (`harness.api.write`; `multirun`: as a sweep's job), print the verdict.

    Each finished chunk of replicates is kept in `out_dir/chunks/` until the run completes, and
    the chunks found there are not recomputed: a killed run rerun into the same folder resumes
    (`harness.sim.chunks`)."""
    t0 = time.perf_counter()
    spec = Spec.from_config(cfg)
    arch = spec.architecture
    out = Path(out_dir)
    say = print if echo else (lambda *a, **k: None)
    norm = spec.normalization.describe(spec.norm_position, spec.norm_eps)  # "" for norm=none
    say(f"harness: {spec.arch} depth {spec.depth}, widths {_widths(spec)}{arch.describe(spec)}{norm}, "
        f"{spec.replicates} replicates × {spec.batch} inputs on {spec.device} ({spec.dtype})")
    say(f"scheme {spec.scheme}, mode {spec.mode}: {spec.gain_source}; act {spec.activation.describe()}")

    kept = out / CHUNKS
    try:
        result = api.compute(cfg, spec, progress=bool(cfg.get("progress", True)) and echo,
                             chunks_dir=kept)
    except KeyboardInterrupt:
        if stored(kept):
            print(f"interrupted: {len(stored(kept))} finished chunk(s) of replicates kept in {kept}; "
                  f"rerun with hydra.run.dir={out} to complete the rest", file=sys.stderr)
        raise
    api.write(result, out, command=command, multirun=multirun)

    wall = time.perf_counter() - t0
    for line in result.verdict():
        say(line)
    m = result.measurement
    say(f"measured in {m.wall_s:.2f} s ({m.device_name}); total {wall:.2f} s; outputs in {out}")
    return RunResult(spec, result.frame, out, wall)


def _widths(spec: Spec) -> str:
    return str(spec.width) if spec.width is not None else "[" + ",".join(map(str, spec.widths)) + "]"


# an absolute config path: found whichever module called main() (python -m, the API, a test)
@hydra.main(version_base="1.3", config_path=str(cli.CONF_DIR), config_name="config")
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
    job = functools.partial(execute, multirun=True)  # plot=auto: no per-job figure
    return sweep.run_job(cfg, hc.runtime.output_dir, execute=job, overrides=list(hc.overrides.task),
                         command=command, invocation=invocation, threads=threads)


def main(argv: list[str] | None = None) -> None:
    """Check the command line (one-line errors, no files), then hand it to Hydra.

    A --multirun sweep exits 1 if any of its jobs failed or was interrupted, 0 otherwise.
    """
    args = sys.argv[1:] if argv is None else argv
    cli.precheck(args)
    sweep.last_summary = None  # a sweep run earlier in this process must not decide this exit code
    saved_argv, sys.argv = sys.argv, [sys.argv[0], *args]  # Hydra reads sys.argv
    try:
        _task()
    except SystemExit:  # a launcher aborted the sweep (e.g. a worker was killed): say what was done
        sweep.finish(stopped="its launcher aborted")
        raise
    except KeyboardInterrupt:
        sweep.finish(stopped="interrupted")
        raise SystemExit(130) from None
    finally:
        sys.argv = saved_argv
    result = sweep.last_summary
    if result is not None and (result["failed"] or result["running"]):
        raise SystemExit(1)


if __name__ == "__main__":
    # the imports too live as long as the process: no full garbage collection walks them again
    # (torch, pandas and Hydra hold ~2e5 objects; a trivial run made two full passes over them
    # and one more at exit; in a process that calls `main` among other work nothing is frozen)
    gc.freeze()
    main()
