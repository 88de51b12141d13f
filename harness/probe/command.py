"""The command `python -m harness.probe model=NAME KEY=VALUE ...` (harness/probe/__main__.py).

A single run is composed and checked (`harness.probe.cli.check_overrides`), measured in memory,
and only then written into Hydra's run directory (`hydra.run.dir`, results/probes/...):
config.yaml, metadata.json, modules.png, and last, atomically, metrics.parquet. So any error (a
bad key, a missing extra, a factory that raises, inputs the model does not take, a pattern that
matches nothing) is one line on stderr, exit code 2, and no files. `--multirun` sweeps go through
Hydra's launcher as `harness.run`'s do (`harness.cli.sweep`: status.json per job, sweep.json,
resume).
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from harness import cli
from harness.cli import launchers, sweep
from harness.core.validate import ConfigError
from harness.probe import checks as probe_cli
from harness.probe.result import compute, write
from harness.probe.spec import ProbeSpec


def execute(cfg: DictConfig, out_dir: str | Path, *, command: str | None = None, echo: bool = True,
            multirun: bool = False) -> None:
    """Measure one config (`harness.probe.compute`), write its files into `out_dir`
    (`harness.probe.write`), print the verdict."""
    say = print if echo else (lambda *a, **k: None)
    spec = ProbeSpec.from_config(cfg)
    say(f"harness.probe: {spec.model} ({spec.target}), scheme {spec.scheme} ({spec.gain_source}); "
        f"{spec.replicates} replicates × {spec.batch} inputs of shape {list(spec.input_shape)} "
        f"({spec.input}) on {spec.device} ({spec.dtype})")
    result = compute(cfg, progress=bool(cfg.get("progress", True)) and echo)
    write(result, out_dir, command=command, multirun=multirun)
    for line in result.verdict():
        say(line)
    m = result.measurement
    say(f"measured in {m.wall_s:.2f} s ({m.device_name}, path {m.info.get('path')}); outputs in {out_dir}")


@hydra.main(version_base="1.3", config_path=str(probe_cli.CONF_DIR), config_name=probe_cli.CONFIG)
def _task(cfg: DictConfig) -> dict:
    """One job of a --multirun sweep (single runs do not come through Hydra: see `main`)."""
    hc = HydraConfig.get()
    command = " ".join([probe_cli.COMMAND,
                        *(o for o in hc.overrides.task if not o.startswith("launcher="))])
    try:
        launcher = OmegaConf.to_container(hc.launcher, resolve=True)
        n, _ = launchers.job_threads(launcher, launchers.cores())
    except Exception:  # noqa: BLE001 - an odd launcher config must not abort the sweep
        n = None
    if n is not None:
        torch.set_num_threads(n)
    job = functools.partial(execute, multirun=True)
    return sweep.run_job(cfg, hc.runtime.output_dir, execute=job, overrides=list(hc.overrides.task),
                         command=command, invocation=sweep.invocation_of(hc.sweep.dir),
                         threads=str(torch.get_num_threads()), make_spec=ProbeSpec.from_config)


def main(argv: list[str] | None = None) -> None:
    """Check the command line (one line, exit 2, no files on bad input); run one probe, or hand
    a --multirun sweep to Hydra (exit 1 if a job failed)."""
    args = sys.argv[1:] if argv is None else argv
    flags, overrides = cli.split_argv(args)
    multirun = bool(cli.MULTIRUN_FLAGS & set(flags))
    info = bool(cli.INFO_FLAGS & set(flags))
    if not info:
        try:
            cfg = probe_cli.check_overrides(overrides, multirun=multirun)
            if not multirun:
                out = probe_cli.run_dir(overrides)
                execute(cfg, out, command=" ".join([probe_cli.COMMAND, *overrides]))
                return
        except ConfigError as e:
            print(f"error: {e}", file=sys.stderr)
            raise SystemExit(2) from None
    sweep.last_summary = None
    saved_argv, sys.argv = sys.argv, [sys.argv[0], *args]
    try:
        _task()
    except SystemExit:
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

