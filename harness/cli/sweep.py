"""Sweep jobs: run one grid point without stopping the sweep, resume, and the sweep summary.

Each job of a `--multirun` sweep writes `status.json` (atomically) into its directory:
`running` when it starts, then `done`, `failed` (with the error's one-line message) or `skipped`
(its directory already held a complete result for the same resolved config). A job never raises,
so one bad grid point or an out-of-memory error does not stop the others. At the end of the sweep
the `SweepSummary` callback prints one line (done / skipped / failed) and writes `sweep.json`;
`collect` reads the per-job statuses of any folder without that callback.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from hydra._internal.core_plugins import basic_sweeper
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from harness.core.spec import ConfigError, Spec
from harness.outputs.results import METRICS, write_json

STATUS = "status.json"
SWEEP = "sweep.json"
STATES = ("done", "skipped", "failed", "running")

#: the summary of the last sweep this process ran (read by harness.run for the exit code)
last_summary: dict[str, Any] | None = None


def _now() -> str:
    return datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds")


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or "(no message)"
    return text if isinstance(e, ConfigError) else f"{type(e).__name__}: {text}"


# ---- resume ---------------------------------------------------------------------------------
def stored_spec(job_dir: Path) -> dict[str, Any] | None:
    """The spec stored in `job_dir`'s complete metrics.parquet, or None if there is none.

    metrics.parquet is written last and atomically, so a readable one is a complete result.
    """
    path = job_dir / METRICS
    if not path.is_file():
        return None
    try:
        meta = pq.read_schema(path).metadata or {}
        return json.loads(meta[b"harness"])["spec"]
    except (OSError, KeyError, ValueError, TypeError):
        return None


def spec_differences(spec: Any, stored: Mapping[str, Any]) -> list[str]:
    """Keys where `spec` and a stored spec dict disagree (empty: the same resolved config)."""
    now = json.loads(json.dumps(spec.to_dict(), default=str))
    return sorted(k for k in set(now) | set(stored) if now.get(k) != stored.get(k))


def remove_stale_temporaries(job_dir: Path) -> list[str]:
    """Delete hidden `.NAME.*.tmp` files that a killed write left in `job_dir`; their names."""
    gone = []
    for p in job_dir.glob(".*.tmp"):
        if p.is_file():
            p.unlink(missing_ok=True)
            gone.append(p.name)
    return gone


# ---- one job --------------------------------------------------------------------------------
def run_job(
    cfg: DictConfig,
    job_dir: str | Path,
    *,
    execute: Callable[..., Any],
    overrides: Sequence[str] = (),
    command: str | None = None,
    invocation: str | None = None,
    threads: str | None = None,
    make_spec: Callable[[DictConfig], Any] = Spec.from_config,
) -> dict[str, Any]:
    """Run one sweep job through `execute(cfg, job_dir, command=...)`, never raising.

    Skips the job if `job_dir` already holds a complete result for the same resolved config,
    and refuses (failed) to overwrite a complete result for a different one. Every outcome is
    recorded in `job_dir/status.json`; returns that record. `make_spec`: the config's validated
    spec (with `to_dict()`, compared with the stored one to resume): `Spec.from_config`, or the
    probe's (`harness.probe.spec.ProbeSpec.from_config`).
    """
    out = Path(job_dir)
    t0 = time.perf_counter()
    status: dict[str, Any] = {
        "state": "running",
        "message": "",
        "overrides": list(overrides),
        "command": command,
        "invocation": invocation,
        "started": _now(),
        "host": platform.node(),
        "pid": os.getpid(),
        "threads": threads,
    }
    out.mkdir(parents=True, exist_ok=True)
    write_json(status, out / STATUS)
    remove_stale_temporaries(out)
    try:
        spec = make_spec(cfg)
        stored = stored_spec(out)
        if stored is not None:
            diff = spec_differences(spec, stored)
            if not diff:
                status.update(state="skipped",
                              message="complete result for the same config already here; not rerun")
            else:
                raise ConfigError(
                    f"{out} already holds a complete result for a different config (differs in: "
                    f"{', '.join(diff)}); not overwritten: remove it or use another hydra.sweep.dir"
                )
        else:
            execute(cfg, out, command=command)
            status.update(state="done")
    except Exception as e:  # noqa: BLE001 - a job records its error and lets the sweep go on
        status.update(state="failed", message=_one_line(e), error_type=type(e).__name__)
        if not isinstance(e, ConfigError):
            status["traceback"] = traceback.format_exc()
        print(f"error: job {' '.join(overrides) or out.name}: {status['message']}", file=sys.stderr)
    status.update(finished=_now(), wall_s=round(time.perf_counter() - t0, 3))
    write_json(status, out / STATUS)
    if status["state"] == "skipped":
        print(f"skipped {' '.join(overrides) or out.name}: {status['message']}")
    return status


# ---- the whole sweep ------------------------------------------------------------------------
def collect(path: str | Path) -> list[dict[str, Any]]:
    """Every job status under `path` (status.json files, hidden folders excluded), each with
    its `job_dir`; sorted by directory."""
    root = Path(path)
    files = [root / STATUS] if (root / STATUS).is_file() else []
    files += [p for p in root.rglob(STATUS)
              if p.parent != root and not any(part.startswith(".") for part in p.relative_to(root).parts)]
    jobs = []
    for f in sorted(set(files)):
        try:
            s = json.loads(f.read_text())
        except (OSError, ValueError):
            continue
        s["job_dir"] = str(f.parent)
        jobs.append(s)
    return jobs


def summarize(jobs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Counts per state (a job still `running` after its sweep ended was interrupted)."""
    counts = {s: 0 for s in STATES}
    for j in jobs:
        counts[j.get("state", "running") if j.get("state") in STATES else "running"] += 1
    return {"jobs": len(jobs), **counts}


def summary_line(summary: Mapping[str, Any], sweep_dir: str | Path, stopped: str = "") -> str:
    """`sweep: N jobs: a done, b skipped, c failed[, d interrupted]; summary in …/sweep.json`;
    with `stopped` (why the sweep ended early) it counts the jobs that started and says how to
    resume."""
    c = summary
    parts = [f"{c['done']} done", f"{c['skipped']} skipped", f"{c['failed']} failed"]
    if c["running"]:
        parts.append(f"{c['running']} interrupted")
    where = f"summary in {Path(sweep_dir) / SWEEP}"
    if stopped:
        return (f"sweep stopped early ({stopped}): {c['jobs']} jobs started: {', '.join(parts)}; "
                f"{where}; rerun the same command to resume")
    return f"sweep: {c['jobs']} jobs: {', '.join(parts)}; {where}"


class SweepSummary(Callback):
    """Hydra callback: marks each sweep invocation, then prints and writes its summary.

    At the start it writes `sweep.json` (state `running`, an invocation id the jobs copy into
    their status); at the end `finish` gathers the statuses of this invocation's jobs, prints one
    line (plus one per failed job on stderr) and rewrites `sweep.json` with counts and failures.
    `cli`: the command that reruns the sweep (`python -m harness.run`, `python -m harness.probe`).
    """

    def __init__(self, cli: str = "python -m harness.run") -> None:
        self.cli = cli

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        global last_summary, current
        last_summary = None
        compose_each_job_once(True)
        sweep_dir = Path(str(config.hydra.sweep.dir))
        current = {"sweep_dir": sweep_dir, "command": sweep_command(config, self.cli),
                   "invocation": f"{datetime.now():%Y%m%d-%H%M%S-%f}-{os.getpid()}",
                   "t0": time.perf_counter()}
        write_json({"state": "running", "invocation": current["invocation"], "started": _now(),
                    "command": current["command"]}, sweep_dir / SWEEP)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        compose_each_job_once(False)
        finish()


def _no_revalidation(self: Any, batch: Any) -> None:
    """In place of `Sweeper.validate_batch_is_legal` (see `compose_each_job_once`)."""


def compose_each_job_once(on: bool) -> None:
    """While a harness sweep runs (`on`), Hydra's basic sweeper does not compose every job's
    config in the launching process before the first job starts (`validate_batch_is_legal`);
    the launcher composes each job's config anyway, where the job runs.

    That check only repeats the composition: the entry points' precheck (`harness.cli`) has
    already checked every group choice and key name of the grid, so it cannot fail there, and
    it cost ~0.1 CPU-s per job (a Hydra composition), one job after another on one core while
    the other cores waited: ~10 s before the first job of a 100-job sweep. `on=False` restores
    Hydra's check.
    """
    # looked up now: Hydra's plugin scan executes basic_sweeper again, redefining the class
    cls = basic_sweeper.BasicSweeper
    if on:
        cls.validate_batch_is_legal = _no_revalidation
    elif cls.__dict__.get("validate_batch_is_legal") is _no_revalidation:
        del cls.validate_batch_is_legal


#: the sweep this process is running (set when it starts), for `finish`
current: dict[str, Any] | None = None


def finish(*, stopped: str = "") -> dict[str, Any] | None:
    """Summarize the current sweep from its jobs' statuses: print the summary line (and one line
    per failed or interrupted job on stderr), write sweep.json, return the record.

    `stopped`: why the sweep ended early (its launcher aborted because a job's process was
    killed, or Ctrl-C); jobs that never started are then missing from the counts.
    """
    global last_summary, current
    compose_each_job_once(False)
    if current is None:
        return None
    sweep_dir, invocation = current["sweep_dir"], current["invocation"]
    jobs = [j for j in collect(sweep_dir) if j.get("invocation") == invocation]
    summary = summarize(jobs)
    record = {
        "state": "stopped early" if stopped else "finished",
        "invocation": invocation,
        "finished": _now(),
        "wall_s": round(time.perf_counter() - current["t0"], 3),
        "command": current["command"],
        **summary,
        "job_states": {_relative(j["job_dir"], sweep_dir): j.get("state") for j in jobs},
        "failures": [{"job_dir": j["job_dir"], "message": j.get("message", "")}
                     for j in jobs if j.get("state") not in ("done", "skipped")],
    }
    write_json(record, sweep_dir / SWEEP)
    print(summary_line(summary, sweep_dir, stopped), flush=True)
    for j in jobs:
        if j.get("state") == "failed":
            print(f"failed: {_relative(j['job_dir'], sweep_dir)}: {j.get('message', '')}", file=sys.stderr)
        elif j.get("state") not in ("done", "skipped"):
            print(f"interrupted: {_relative(j['job_dir'], sweep_dir)}", file=sys.stderr)
    last_summary, current = record, None
    return record


def _relative(job_dir: str, sweep_dir: Path) -> str:
    try:
        return str(Path(job_dir).relative_to(sweep_dir)) or "."
    except ValueError:
        return job_dir


def invocation_of(sweep_dir: str | Path) -> str | None:
    """The id of the sweep invocation now running in `sweep_dir` (from its sweep.json)."""
    try:
        return json.loads((Path(str(sweep_dir)) / SWEEP).read_text()).get("invocation")
    except (OSError, ValueError, AttributeError):
        return None


def sweep_command(config: DictConfig, cli: str = "python -m harness.run") -> str:
    """The command line (`cli --multirun ...`) that reruns (resumes) this sweep into the same
    directory."""
    hc = config.hydra
    task = list(hc.overrides.task)
    hydra_overrides = [o for o in hc.overrides.hydra
                       if not o.startswith(("hydra.sweep.dir=", "hydra.mode="))]
    return " ".join([f"{cli} --multirun", *task, *hydra_overrides,
                     f"hydra.sweep.dir={hc.sweep.dir}"])
