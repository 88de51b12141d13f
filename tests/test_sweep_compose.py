"""A harness sweep composes each job's config once (where the job runs), not a second time in
the launching process before the first job starts; the grid is still checked up front."""

from __future__ import annotations

from hydra._internal.config_loader_impl import ConfigLoaderImpl
from hydra._internal.core_plugins import basic_sweeper
from hydra.plugins.sweeper import Sweeper

from harness.cli import sweep

TINY = ["depth=1", "width=4", "batch=2", "replicates=1", "plot=false", "progress=false"]


def test_each_job_is_composed_once_and_hydra_is_left_as_it_was(run_cli, tmp_path, monkeypatch):
    calls = []
    compose = ConfigLoaderImpl.load_sweep_config

    def counted(self, master_config, sweep_overrides):
        calls.append(tuple(sweep_overrides))
        return compose(self, master_config, sweep_overrides)

    monkeypatch.setattr(ConfigLoaderImpl, "load_sweep_config", counted)
    res = run_cli("--multirun", "seed=0,1,2", *TINY, f"hydra.sweep.dir={tmp_path / 's'}")
    assert res.returncode == 0, res.stderr
    assert "sweep: 3 jobs: 3 done" in res.stdout
    jobs = [c for c in calls if any(o.startswith("seed=") for o in c)]
    assert len(jobs) == 3 and len(set(jobs)) == 3  # Hydra's own check would compose each twice
    check = Sweeper.validate_batch_is_legal
    assert basic_sweeper.BasicSweeper.validate_batch_is_legal is check  # restored at the end
    sweep.compose_each_job_once(True)
    assert basic_sweeper.BasicSweeper.validate_batch_is_legal is not check
    sweep.compose_each_job_once(False)
    assert basic_sweeper.BasicSweeper.validate_batch_is_legal is check


def test_a_bad_value_late_in_the_grid_is_still_one_line_before_any_job(run_cli, tmp_path):
    """What the skipped check would have caught (a group choice that does not exist, a key
    that does not) is the precheck's: exit 2, one line, nothing written."""
    for bad in (["act=relu,nope"], ["seed=0,1", "+nokey=1,2"], ["scheme=kaiming,xavier,nope"]):
        res = run_cli("--multirun", *bad, *TINY, f"hydra.sweep.dir={tmp_path / 's'}")
        assert res.returncode == 2 and res.stderr.count("\n") == 1, (bad, res.stderr)
        assert res.stderr.startswith("error: ") and not (tmp_path / "s").exists()
