"""Sweeps end to end in temp dirs: the basic launcher, a failing grid point, kill-and-resume,
`launcher=local` (joblib) and `launcher=submitit_local`; job status, threads and the summary."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from harness import load
from harness.cli import compose_config, launchers, precheck
from harness.cli.launchers import plugin_installed
from harness.outputs.results import FAULT_ENV, METRICS
from harness.run import execute
from tests.conftest import CliResult, run_module

SMALL = ["width=8", "batch=4", "replicates=2", "plot=false", "progress=false"]
KEY_COLUMNS = ["run_dir", "replicate", "layer", "quantity"]

def needs(module: str, pip_name: str, extra: str) -> pytest.MarkDecorator:
    return pytest.mark.skipif(not plugin_installed(module),
                              reason=f"{pip_name} not installed (pip install -e '.[{extra}]')")


needs_joblib = needs("hydra_plugins.hydra_joblib_launcher", "hydra-joblib-launcher", "launchers")
needs_submitit = needs("hydra_plugins.hydra_submitit_launcher", "hydra-submitit-launcher", "launchers")
needs_ray = needs("hydra_plugins.hydra_ray_launcher", "hydra-ray-launcher", "ray")


def harness_run(*args: str, cwd: Path) -> CliResult:
    """`python -m harness.run args...` in `cwd`, run in this process (tests/conftest.py)."""
    return run_module("harness.run", *args, cwd=cwd)


def harness_subprocess(*args: str, cwd: Path,
                       env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`python -m harness.run args...` in a new interpreter in `cwd`, with extra environment
    variables `env`: only where the process itself is under test (it is killed, or its launcher
    starts and watches worker processes of its own)."""
    full = {**os.environ, "PYTHONUNBUFFERED": "1", "MPLBACKEND": "Agg", **(env or {})}
    return subprocess.run([sys.executable, "-m", "harness.run", *args], cwd=cwd, env=full,
                          capture_output=True, text=True, timeout=300)


def job_name(**keys: object) -> str:
    """A job folder's name: its overrides sorted by key (plot and progress excluded)."""
    base = {"batch": 4, "replicates": 2, "width": 8, **keys}
    return ",".join(f"{k}={v}" for k, v in sorted(base.items()))


def status(job_dir: Path) -> dict:
    return json.loads((job_dir / "status.json").read_text())


def files(root: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in root.rglob(METRICS)}


@pytest.fixture(scope="module")
def basic_sweep(tmp_path_factory) -> tuple[Path, CliResult]:
    """depth=2,3 × act=relu,tanh with Hydra's basic launcher."""
    root = tmp_path_factory.mktemp("basic")
    # plot left at its default (auto): a sweep's jobs write no figure
    res = harness_run("--multirun", "depth=2,3", "act=relu,tanh", *(a for a in SMALL if a != "plot=false"),
                      f"hydra.sweep.dir={root / 'sweep'}", cwd=root)
    return root / "sweep", res


def test_basic_sweep_layout_status_and_summary(basic_sweep):
    sweep_dir, res = basic_sweep
    assert res.returncode == 0, res.stderr
    assert f"sweep: 4 jobs: 4 done, 0 skipped, 0 failed; summary in {sweep_dir / 'sweep.json'}" in res.stdout
    names = {job_name(depth=d, act=a) for d in (2, 3) for a in ("relu", "tanh")}
    assert {p.parent.name for p in sweep_dir.glob(f"*/{METRICS}")} == names
    for name in names:
        s = status(sweep_dir / name)
        assert s["state"] == "done" and s["message"] == "" and s["wall_s"] >= 0
        assert s["threads"].endswith("(basic launcher: one job at a time)")
        assert not (sweep_dir / name / "variance.png").exists()  # plot=auto in a sweep
    summary = json.loads((sweep_dir / "sweep.json").read_text())
    assert (summary["jobs"], summary["done"], summary["failed"], summary["skipped"]) == (4, 4, 0, 0)
    assert summary["command"].startswith("python -m harness.run --multirun depth=2,3 act=relu,tanh")
    assert summary["command"].endswith(f"hydra.sweep.dir={sweep_dir}")
    df = load(sweep_dir)
    assert df["run_dir"].nunique() == 4
    assert not df.duplicated(KEY_COLUMNS).any()
    assert sorted(df.groupby("run_dir")["depth"].first()) == [2, 2, 3, 3]


def test_reproduce_command_of_a_sweep_job_gives_the_same_values(basic_sweep, tmp_path):
    sweep_dir, _ = basic_sweep
    job = sweep_dir / job_name(depth=3, act="tanh")
    command = json.loads((job / "metadata.json").read_text())["reproduce"]
    assert command.startswith("python -m harness.run ") and "launcher" not in command
    precheck(command.split()[3:])  # a valid single run
    execute(compose_config(command.split()[3:]), tmp_path, echo=False)
    a, b = pd.read_parquet(job / METRICS), pd.read_parquet(tmp_path / METRICS)
    pd.testing.assert_frame_equal(a, b)


def test_resume_skips_complete_jobs_and_runs_new_ones_in_any_order(basic_sweep, tmp_path):
    sweep_dir = tmp_path / "sweep"
    shutil.copytree(basic_sweep[0], sweep_dir)
    before = files(sweep_dir)
    # the same grid, reordered, plus one new depth: each config maps to the same folder
    res = harness_run("--multirun", "act=tanh,relu", "depth=4,3,2", *reversed(SMALL),
                      f"hydra.sweep.dir={sweep_dir}", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "sweep: 6 jobs: 2 done, 4 skipped, 0 failed" in res.stdout
    after = files(sweep_dir)
    assert {p: after[p] for p in before} == before  # kept byte for byte, not rerun
    assert {status(p.parent)["state"] for p in before} == {"skipped"}
    assert len(after) == 6
    df = load(sweep_dir)
    assert df["run_dir"].nunique() == 6 and not df.duplicated(KEY_COLUMNS).any()


def test_a_failing_grid_point_is_recorded_and_the_others_finish(tmp_path):
    sweep_dir = tmp_path / "sweep"
    res = harness_run("--multirun", "depth=0,2", *SMALL, f"hydra.sweep.dir={sweep_dir}", cwd=tmp_path)
    assert res.returncode == 1
    assert "sweep: 2 jobs: 1 done, 0 skipped, 1 failed" in res.stdout
    assert "Traceback" not in res.stderr
    bad = sweep_dir / job_name(depth=0)
    assert f"failed: {bad.name}: depth must be an integer ≥ 1; got 0" in res.stderr
    s = status(bad)
    assert (s["state"], s["message"], s["error_type"]) == (
        "failed", "depth must be an integer ≥ 1; got 0", "ConfigError")
    assert "depth=0" in s["overrides"] and not (bad / METRICS).exists()
    assert (sweep_dir / job_name(depth=2) / METRICS).is_file()
    failures = json.loads((sweep_dir / "sweep.json").read_text())["failures"]
    assert [Path(f["job_dir"]).name for f in failures] == [bad.name]


def test_a_job_killed_mid_write_leaves_nothing_complete_and_the_rerun_completes(tmp_path):
    sweep_dir = tmp_path / "sweep"
    args = ["--multirun", "depth=2,3,4", *SMALL, f"hydra.sweep.dir={sweep_dir}"]
    # SIGKILL the whole sweep at job #1's metrics.parquet write: temp file written, not renamed.
    # A subprocess: the process is killed, and `python -m harness.run` starts up for real here
    res = harness_subprocess(*args, cwd=tmp_path, env={FAULT_ENV: f"{METRICS}:2"})
    assert res.returncode == -9, (res.returncode, res.stderr)
    first, killed, never = (sweep_dir / job_name(depth=d) for d in (2, 3, 4))
    assert (first / METRICS).is_file() and status(first)["state"] == "done"
    assert not (killed / METRICS).exists()
    assert len(list(killed.glob(f".{METRICS}.*.tmp"))) == 1  # the complete-looking bytes, hidden
    assert status(killed)["state"] == "running"
    assert not never.exists()
    assert load(sweep_dir)["run_dir"].unique().tolist() == [str(first)]
    kept = (first / METRICS).read_bytes()

    res = harness_run(*args, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "sweep: 3 jobs: 2 done, 1 skipped, 0 failed" in res.stdout
    assert (first / METRICS).read_bytes() == kept and status(first)["state"] == "skipped"
    assert status(killed)["state"] == "done" and not list(killed.glob(".*.tmp"))
    assert sorted(p.parent.name for p in sweep_dir.rglob(METRICS)) == sorted(
        p.name for p in (first, killed, never))
    df = load(sweep_dir)
    assert df["run_dir"].nunique() == 3 and not df.duplicated(KEY_COLUMNS).any()


@needs_joblib
def test_launcher_local_runs_jobs_in_parallel_with_threads_split(tmp_path):
    sweep_dir = tmp_path / "sweep"
    # a subprocess: joblib's loky workers outlive the call (its reusable executor keeps them, ~370 MB
    # each, for minutes), so they go with the interpreter that started them
    res = harness_subprocess("--multirun", "launcher=local", "depth=2,3", *SMALL,
                      "hydra.launcher.n_jobs=2", f"hydra.sweep.dir={sweep_dir}", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "sweep: 2 jobs: 2 done, 0 skipped, 0 failed" in res.stdout
    threads = max(1, launchers.cores() // 2)
    for d in (2, 3):  # the launcher is not part of the job's folder name
        s = status(sweep_dir / job_name(depth=d))
        assert s["state"] == "done"
        assert s["threads"] == f"{threads} (joblib n_jobs=2 on {launchers.cores()} cores)"
        assert s["pid"] != os.getpid()
    assert load(sweep_dir)["run_dir"].nunique() == 2


@needs_submitit
def test_submitit_local_runs_the_cluster_path(tmp_path):
    sweep_dir = tmp_path / "sweep"
    # a subprocess: submitit's local executor starts, watches and pickles to worker processes
    res = harness_subprocess("--multirun", "launcher=submitit_local", "depth=2", *SMALL,
                      f"hydra.sweep.dir={sweep_dir}", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "sweep: 1 jobs: 1 done, 0 skipped, 0 failed" in res.stdout
    assert list((sweep_dir / ".submitit").rglob("*_log.out"))  # the job ran in its own process
    s = status(sweep_dir / job_name(depth=2))
    assert s["threads"] == "1 (submitit cpus_per_task=1)" and s["pid"] != os.getpid()
    assert load(sweep_dir)["run_dir"].nunique() == 1  # .submitit/ is not searched


@pytest.mark.slow  # starts a local Ray: ~20-35 s on 2 cores
@needs_ray
def test_launcher_ray_runs_the_sweep(tmp_path):
    sweep_dir = tmp_path / "sweep"
    # a subprocess: Ray starts a local cluster whose workers outlive the call
    res = harness_subprocess("--multirun", "launcher=ray", "depth=2,3", *SMALL,
                      f"hydra.sweep.dir={sweep_dir}", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "sweep: 2 jobs: 2 done, 0 skipped, 0 failed" in res.stdout
    assert status(sweep_dir / job_name(depth=2))["threads"] == "1 (ray remote num_cpus=1)"
