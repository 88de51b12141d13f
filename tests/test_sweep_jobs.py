"""One sweep job in-process: every error recorded (never raised), skip on the same config,
refuse to overwrite a different one, stale temporaries cleaned; the summary counts."""

from __future__ import annotations

import json

import pytest

from harness.cli import compose_config, sweep
from harness.outputs.results import METRICS
from harness.run import execute

SMALL = ["depth=2", "width=8", "batch=4", "replicates=2", "plot=false", "progress=false"]


def quiet_execute(cfg, out, command=None):
    return execute(cfg, out, command=command, echo=False)


def never_called(*args, **kwargs):
    raise AssertionError("execute must not run")


def test_a_done_job_records_its_status(tmp_path):
    s = sweep.run_job(compose_config(SMALL), tmp_path, execute=quiet_execute,
                      overrides=["depth=2"], command="python -m harness.run depth=2", invocation="x")
    assert s["state"] == "done" and (tmp_path / METRICS).is_file()
    on_disk = json.loads((tmp_path / sweep.STATUS).read_text())
    assert on_disk == s
    assert {"started", "finished", "wall_s", "host", "pid", "overrides", "command"} <= set(s)


@pytest.mark.parametrize(("error", "message"), [
    (RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore"),
     "RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB more"),
    (MemoryError(), "MemoryError: (no message)"),
])
def test_any_error_is_recorded_not_raised(tmp_path, capsys, error, message):
    def boom(*args, **kwargs):
        raise error

    s = sweep.run_job(compose_config(SMALL), tmp_path, execute=boom, overrides=["depth=2"])
    assert (s["state"], s["message"], s["error_type"]) == ("failed", message, type(error).__name__)
    assert "Traceback" in s["traceback"]
    err = capsys.readouterr().err
    assert err == f"error: job depth=2: {message}\n"
    assert json.loads((tmp_path / sweep.STATUS).read_text())["state"] == "failed"


def test_the_same_config_is_skipped_without_running(tmp_path):
    cfg = compose_config(SMALL)
    sweep.run_job(cfg, tmp_path, execute=quiet_execute)
    before = (tmp_path / METRICS).read_bytes()
    s = sweep.run_job(compose_config([*SMALL, "plot=true"]), tmp_path, execute=never_called)
    assert s["state"] == "skipped" and (tmp_path / METRICS).read_bytes() == before


def test_a_different_config_is_not_overwritten(tmp_path, capsys):
    sweep.run_job(compose_config(SMALL), tmp_path, execute=quiet_execute)
    before = (tmp_path / METRICS).read_bytes()
    s = sweep.run_job(compose_config([*SMALL, "seed=1", "act=tanh"]), tmp_path, execute=never_called)
    assert s["state"] == "failed"
    assert "already holds a complete result for a different config (differs in: act, " in s["message"]
    assert "seed); not overwritten: remove it or use another hydra.sweep.dir" in s["message"]
    assert (tmp_path / METRICS).read_bytes() == before


def test_stale_temporaries_of_a_killed_write_are_removed(tmp_path):
    (tmp_path / f".{METRICS}.abc123.tmp").write_bytes(b"PAR1 half")
    (tmp_path / "notes.tmp").write_text("not ours: not hidden")
    s = sweep.run_job(compose_config(SMALL), tmp_path, execute=quiet_execute)
    assert s["state"] == "done"
    assert sorted(p.name for p in tmp_path.glob("*.tmp")) == ["notes.tmp"]
    assert not list(tmp_path.glob(".*.tmp"))


def test_summary_counts_an_unfinished_job_as_interrupted(tmp_path):
    jobs = [{"state": "done"}, {"state": "skipped"}, {"state": "failed"}, {"state": "running"}]
    summary = sweep.summarize(jobs)
    assert summary == {"jobs": 4, "done": 1, "skipped": 1, "failed": 1, "running": 1}
    line = sweep.summary_line(summary, tmp_path)
    assert line == (f"sweep: 4 jobs: 1 done, 1 skipped, 1 failed, 1 interrupted; "
                    f"summary in {tmp_path / 'sweep.json'}")


def test_collect_reads_job_statuses_but_not_hidden_folders(tmp_path):
    for name, state in (("a=1", "done"), ("a=2", "failed"), (".submitit/1", "done")):
        (tmp_path / name).mkdir(parents=True)
        (tmp_path / name / sweep.STATUS).write_text(json.dumps({"state": state}))
    jobs = sweep.collect(tmp_path)
    assert [(j["job_dir"], j["state"]) for j in jobs] == [
        (str(tmp_path / "a=1"), "done"), (str(tmp_path / "a=2"), "failed")]


def test_a_sweep_stopped_early_still_gets_its_summary(tmp_path, capsys, monkeypatch):
    for name, state in (("a=1", "done"), ("a=2", "running"), ("old", "done")):
        (tmp_path / name).mkdir()
        inv = "old-run" if name == "old" else "this-run"
        (tmp_path / name / sweep.STATUS).write_text(json.dumps({"state": state, "invocation": inv}))
    monkeypatch.setattr(sweep, "last_summary", None)
    monkeypatch.setattr(sweep, "current", {"sweep_dir": tmp_path, "invocation": "this-run",
                                           "command": "python -m harness.run --multirun a=1,2",
                                           "t0": 0.0})
    record = sweep.finish(stopped="its launcher aborted")
    out, err = capsys.readouterr()
    assert out == (f"sweep stopped early (its launcher aborted): 2 jobs started: 1 done, 0 skipped, "
                   f"0 failed, 1 interrupted; summary in {tmp_path / 'sweep.json'}; rerun the same "
                   f"command to resume\n")
    assert err == "interrupted: a=2\n"
    on_disk = json.loads((tmp_path / "sweep.json").read_text())
    assert on_disk == record and on_disk["state"] == "stopped early"
    assert on_disk["job_states"] == {"a=1": "done", "a=2": "running"}  # not the earlier run's job
    assert sweep.current is None and sweep.finish() is None
