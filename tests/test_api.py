"""The notebook API: harness.run / harness.sweep in-process, against the CLI's own outputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pandas as pd
import pyarrow.parquet as pq
import pytest
from matplotlib.figure import Figure

import harness
from harness import api, load
from harness.cli import compose_config, precheck
from harness.core.spec import ConfigError
from harness.outputs import compare, plots
from harness.run import execute
from tests.conftest import REPO

TINY = ["depth=3", "width=8", "batch=4", "replicates=3"]


def test_run_is_the_cli_run_in_memory(tmp_path, monkeypatch, capsys):
    """Same config and seed: the frame equals the CLI's metrics.parquet, the verdict its printed
    lines, nothing is written in the working directory and no progress bar is drawn; `save`
    writes the CLI's files (the same bytes, but for metadata's timing and command lines)."""
    monkeypatch.chdir(tmp_path)
    r = harness.run("act=tanh", "scheme=xavier", depth=3, width=8, batch=4, replicates=3)
    err = capsys.readouterr().err
    assert err == ""  # progress off by default
    assert list(tmp_path.iterdir()) == []
    fig = r.plot()
    assert isinstance(fig, Figure) and len(fig.axes) >= 3
    plots.plt.close(fig)
    assert list(tmp_path.iterdir()) == []

    cli_dir = tmp_path / "cli"
    cfg = compose_config(["act=tanh", "scheme=xavier", *TINY, "progress=false"])
    execute(cfg, cli_dir, command="cli")
    printed = capsys.readouterr().out.splitlines()
    pd.testing.assert_frame_equal(r.frame, pd.read_parquet(cli_dir / "metrics.parquet"))
    assert r.verdict() == printed[2:-1]  # between the two header lines and the timing line

    saved = r.save(tmp_path / "api")
    assert sorted(p.name for p in saved.iterdir()) == sorted(p.name for p in cli_dir.iterdir())
    assert pq.read_table(saved / "metrics.parquet").equals(pq.read_table(cli_dir / "metrics.parquet"))
    assert (saved / "variance.png").read_bytes() == (cli_dir / "variance.png").read_bytes()
    # config.yaml differs only in `progress` (the CLI's was set false above)
    assert (saved / "config.yaml").read_text().replace("progress: true", "progress: false") == \
        (cli_dir / "config.yaml").read_text()
    ma, mc = (json.loads((d / "metadata.json").read_text()) for d in (saved, cli_dir))
    assert ma["reproduce"] == ("python -m harness.run act=tanh scheme=xavier depth=3 width=8 batch=4 "
                               "replicates=3")
    assert {k for k in ma if ma[k] != mc[k]} <= {"wall_s", "reproduce", "spec"}
    assert {k for k in ma["spec"] if ma["spec"][k] != mc["spec"][k]} <= {"progress"}


def test_conv_run_has_positions_and_its_figure():
    r = harness.run("arch=conv", depth=2, width=3, image=5, batch=2, replicates=3)
    assert r.positions is not None and {"row", "col"} <= set(r.positions)
    assert any(line.startswith("forward centre") for line in r.verdict())
    fig = r.plot("positions")
    assert isinstance(fig, Figure)
    plots.plt.close(fig)
    mlp = harness.run(*TINY)
    with pytest.raises(ConfigError, match="unknown figure 'positions'; this run has: variance$"):
        mlp.plot("positions")


def test_keyword_arguments_become_overrides():
    assert api.as_overrides({"widths": [4, 8, 8], "plot": False, "jacobian": 0, "seed": None,
                             "act": "tanh", "note": "a b,c"}) == \
        ["widths=[4,8,8]", "plot=false", "jacobian=0", "seed=null", "act=tanh", "note='a b,c'"]
    r = harness.run("depth=2", widths=(4, 8, 6), batch=4, replicates=2, bias_std=0.1)
    assert r.spec.widths == (4, 8, 6) and r.spec.bias_std == 0.1


BAD = [
    (("act=swish",), {}),
    (("dept=3",), {}),
    ((), {"depth": 0}),
    ((), {"widths": [4, 4], "depth": 3}),
]


@pytest.mark.parametrize(("overrides", "kwargs"), BAD)
def test_bad_input_raises_the_clis_one_line_message(overrides, kwargs, capsys):
    tokens = [*overrides, *api.as_overrides(kwargs)]
    with pytest.raises(SystemExit):
        precheck(tokens)
    cli_line = capsys.readouterr().err
    with pytest.raises(ConfigError) as e:
        harness.run(*overrides, **kwargs)
    assert f"error: {e.value}\n" == cli_line


@pytest.mark.parametrize(("overrides", "message"), [
    (("depth=2,3",), "'depth=2,3' is a sweep; harness.run takes one value per key"),
    (("--multirun", "depth=2"), "'--multirun' is a command-line flag"),
])
def test_sweeps_and_flags_are_refused(overrides, message):
    with pytest.raises(ConfigError, match=message):
        harness.run(*overrides)


def test_sweep_checks_every_point_before_measuring_any(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("measured before every point was checked")

    monkeypatch.setattr(api, "measure", refuse)
    with pytest.raises(ConfigError, match="unknown act 'nope'"):
        harness.sweep({"act": ["relu", "nope"]}, *TINY)
    with pytest.raises(ConfigError, match="sweep grid 'depth': give a non-empty list"):
        harness.sweep({"depth": 3}, *TINY)


def test_sweep_frame_runs_and_agreement_table(tmp_path):
    grid = {"act": ["relu", "tanh"], "depth": [2, 3]}
    s = harness.sweep(grid, "width=8", batch=4, replicates=3)
    assert s.labels == ["act=relu,depth=2", "act=relu,depth=3", "act=tanh,depth=2", "act=tanh,depth=3"]
    assert [(r.spec.act, r.spec.depth) for r in s.runs] == [("relu", 2), ("relu", 3), ("tanh", 2),
                                                           ("tanh", 3)]
    # each grid point is the single run of the same overrides (same seed: the same numbers)
    one = harness.run("width=8", "act=tanh", depth=3, batch=4, replicates=3)
    pd.testing.assert_frame_equal(s.runs[3].frame, one.frame)
    frame = s.frame
    assert sorted(frame["run_dir"].unique()) == s.labels
    assert len(frame) == sum(len(r.frame) for r in s.runs)
    table = s.table()
    assert len(table) == 4 and {"act", "depth", "class"} <= set(table)
    # saved, the sweep is a folder harness.load and the report read to the same table
    s.save(tmp_path)
    loaded = load(tmp_path)
    loaded["run_dir"] = loaded["run_dir"].map(lambda d: d.rsplit("/", 1)[-1])
    pd.testing.assert_frame_equal(compare.agreement(loaded), table)


def test_both_bindings_of_harness_run(tmp_path):
    """In a fresh interpreter: `import harness` loads neither Hydra nor matplotlib; harness.run
    is then the API function; after `import harness.run` (the CLI module) it is that module, and
    calling it still runs; `from harness import run, sweep` works either way."""
    script = textwrap.dedent(f"""
        import sys
        import harness
        assert "hydra" not in sys.modules and "matplotlib" not in sys.modules, "heavy import"
        tiny = {TINY!r}
        a = harness.run(*tiny)
        import harness.run
        assert type(harness.run).__name__ == "_CallableModule", type(harness.run)
        b = harness.run(*tiny)
        from harness import run, sweep
        c = run(*tiny)
        s = sweep({{"depth": [2]}}, "width=8", "batch=4", "replicates=3")
        assert a.frame.equals(b.frame) and b.frame.equals(c.frame)
        print("ok", len(s.runs))
    """)
    res = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True,
                         timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "ok 1"
    assert list(tmp_path.iterdir()) == []


def test_plot_auto_draws_single_runs_not_sweep_jobs(tmp_path):
    """plot=auto (the default): a single run (CLI or Result.save) writes variance.png, a sweep's
    job (execute(multirun=True), SweepResult.save) does not; plot=true forces it, a bad value
    is a one-line ConfigError before anything runs."""
    cfg = compose_config([*TINY, "progress=false"])
    assert cfg.plot == "auto"
    execute(cfg, tmp_path / "single", echo=False)
    execute(cfg, tmp_path / "job", echo=False, multirun=True)
    execute(compose_config([*TINY, "progress=false", "plot=true"]), tmp_path / "forced", echo=False,
            multirun=True)
    assert (tmp_path / "single" / "variance.png").is_file()
    assert not (tmp_path / "job" / "variance.png").exists()
    assert (tmp_path / "job" / "metrics.parquet").is_file()
    assert (tmp_path / "forced" / "variance.png").is_file()
    s = harness.sweep({"depth": [2, 3]}, width=8, batch=4, replicates=2)
    s.save(tmp_path / "sweep")
    assert not list((tmp_path / "sweep").rglob("variance.png"))
    assert len(list((tmp_path / "sweep").rglob("metrics.parquet"))) == 2
    with pytest.raises(ConfigError, match="plot='maybe'; allowed: auto, true, false"):
        harness.run(*TINY, plot="maybe")
