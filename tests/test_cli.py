"""End to end: `python -m harness.run` in a temp dir (in-process, tests/conftest.py), its outputs, and
every bad input; each `python -m` entry reaches its main."""

from __future__ import annotations

import json
import logging
import os
import runpy
import sys
import warnings

import numpy as np
import pandas as pd
import pytest
import torch

from harness import load
from harness.cli import compose_config, precheck, sweep
from harness.run import execute
from tests.conftest import expect_one_line_error, restored_process_state, run_module

SMALL = ["depth=5", "width=16", "batch=8", "replicates=3"]
CONFIG_COLUMNS = ["arch", "scheme", "mode", "act", "depth", "width", "batch", "replicates",
                  "seed", "bias_std", "input_var", "dtype", "device"]


def test_cli_run_writes_every_output(run_cli, tmp_path):
    out = tmp_path / "run"
    res = run_cli("scheme=kaiming", "act=relu", *SMALL, f"hydra.run.dir={out}")
    assert res.returncode == 0, res.stderr
    for name in ("metrics.parquet", "metadata.json", "config.yaml", "variance.png",
                 ".hydra/config.yaml"):
        assert (out / name).is_file(), name
    df = pd.read_parquet(out / "metrics.parquet")
    assert set(CONFIG_COLUMNS + ["layer", "replicate", "quantity", "value", "theory"]) <= set(df)
    # one row per (replicate, layer, quantity); activation has no row at the readout layer
    # (forward, activation, backward, weight_grad, correlation)
    assert len(df) == 3 * (5 + 4 + 5 + 5 + 5)
    assert not df.duplicated(["replicate", "layer", "quantity"]).any()
    assert df["layer"].min() == 1 and df["layer"].max() == 5
    meta = json.loads((out / "metadata.json").read_text())
    assert {"versions", "git_commit", "device_name", "wall_s", "spec"} <= set(meta)
    assert meta["reproduce"].startswith("python -m harness.run")
    assert "calculate_gain('relu') = 1.414 (follows act)" in res.stdout
    assert "forward" in res.stdout and "worst |log10 ratio|" in res.stdout


def test_default_output_dir_is_under_results(run_cli, tmp_path):
    res = run_cli(*SMALL, "plot=false", "progress=false")
    assert res.returncode == 0, res.stderr
    runs = list((tmp_path / "results" / "runs").glob("*/metrics.parquet"))
    assert len(runs) == 1


BAD = [
    (["scheme=foo"], "unknown scheme 'foo'; allowed:"),
    (["act=swish"], "unknown act 'swish'; allowed:"),
    (["mode=fan_avg"], "unknown mode 'fan_avg'; allowed: fan_in, fan_out"),
    (["device=tpu"], "unknown device 'tpu'; allowed: auto, cpu, cuda"),
    (["dtype=float16"], "unknown dtype 'float16'; allowed: float32, float64"),
    (["depth=0"], "depth must be an integer ≥ 1; got 0"),
    (["width=0"], "width must be an integer ≥ 1; got 0"),
    (["batch=0"], "batch must be an integer ≥ 1; got 0"),
    (["replicates=-2"], "replicates must be an integer ≥ 1; got -2"),
    (["depth=3", "widths=[4,4]"], "widths must list depth+1 = 4 integers"),
    (["dept=3"], "unknown config key 'dept'"),
    (["scheme=xavier", "+scheme.nonlinearity=relu"], "scheme xavier takes no nonlinearity"),
    (["act=relu", "act.negative_slope=0.1"], "unknown config key 'act.negative_slope'; keys under act: name"),
    (["scheme.nonlinearity=swish"], "scheme.nonlinearity 'swish' is not one calculate_gain knows"),
    (["input_var=0"], "input_var must be a finite number > 0"),
]


@pytest.mark.parametrize(("args", "message"), BAD)
def test_bad_input_is_one_line_exit_2(args, message, capsys):
    expect_one_line_error(args, message, capsys)


@pytest.mark.parametrize("args", [["scheme=foo"], ["depth=0"], ["dept=3"]])
def test_bad_input_through_the_cli_writes_nothing(run_cli, tmp_path, args):
    out = tmp_path / "run"
    res = run_cli(*args, f"hydra.run.dir={out}")
    assert res.returncode == 2
    assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr
    assert not out.exists() and not (tmp_path / "results").exists()


def test_bad_input_into_an_existing_run_dir_loses_nothing(run_cli, tmp_path):
    out = tmp_path / "run"
    assert run_cli(*SMALL, "plot=false", f"hydra.run.dir={out}").returncode == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    res = run_cli("depth=0", f"hydra.run.dir={out}")
    assert res.returncode == 2
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_overflow_finishes_and_names_the_layer(tmp_path, capsys):
    cfg = compose_config(["act=linear", "scheme.gain=8", "depth=200", "width=8", "batch=4",
                          "replicates=2", "progress=false"])
    res = execute(cfg, tmp_path)
    out = capsys.readouterr().out
    fwd = res.frame[res.frame["quantity"] == "forward"]
    first_inf = int(fwd[~fwd["value"].between(-1e308, 1e308)]["layer"].min())
    assert f"forward overflowed to inf/nan at layer {first_inf}" in out
    assert (tmp_path / "metrics.parquet").is_file() and (tmp_path / "variance.png").is_file()


def test_underflow_is_reported(tmp_path, capsys):
    cfg = compose_config(["act=linear", "scheme.gain=0.05", "depth=60", "width=8", "batch=4",
                          "replicates=2", "progress=false", "plot=false"])
    execute(cfg, tmp_path)
    assert "forward underflowed to 0 at layer" in capsys.readouterr().out


def test_hydra_help_flags_still_work(run_cli):
    res = run_cli("--cfg", "job", "act=tanh")
    assert res.returncode == 0 and "name: tanh" in res.stdout


# ---- arch=conv ---------------------------------------------------------------------------------

CONV = ["arch=conv", "depth=3", "width=4", "image=6", "batch=4", "replicates=3"]


def test_cli_conv_run_writes_positions(run_cli, tmp_path):
    out = tmp_path / "run"
    res = run_cli(*CONV, "progress=false", f"hydra.run.dir={out}")
    assert res.returncode == 0, res.stderr
    for name in ("metrics.parquet", "positions.parquet", "positions.png", "variance.png"):
        assert (out / name).is_file(), name
    df = pd.read_parquet(out / "metrics.parquet")
    # six quantities, activation without the readout layer: 3 replicates × (3+2+3+3+3+3)
    assert len(df) == 3 * 17 and set(df["quantity"]) >= {"channel_mean_sq", "channel_var"}
    assert (df[["kernel", "image", "conv_dim"]].iloc[0].tolist(), df["padding_mode"].iloc[0]) == (
        [3, 6, 2], "zeros")
    pos = pd.read_parquet(out / "positions.parquet")
    assert len(pos) == 2 * 3 * 6 * 6 and not pos.duplicated(["layer", "row", "col", "quantity"]).any()
    assert {"value", "sem", "theory"} <= set(pos) and pos["theory"].notna().all()
    # the pooled theory is the mean over positions of the position-resolved one
    pooled = pos.groupby(["quantity", "layer"])["theory"].mean()
    per_layer = df[df["replicate"] == 0].set_index(["quantity", "layer"])["theory"]
    for q in ("forward", "backward"):
        np.testing.assert_allclose(pooled[q].to_numpy(), per_layer[q].to_numpy(), rtol=1e-12)
    assert "Conv2d kernel 3, image 6×6, zeros padding" in res.stdout
    assert "forward corner" in res.stdout and "no theory" in res.stdout


def test_conv1d_run_in_process(tmp_path):
    cfg = compose_config([*CONV, "conv_dim=1", "padding_mode=circular", "progress=false"])
    res = execute(cfg, tmp_path, echo=False)
    pos = pd.read_parquet(tmp_path / "positions.parquet")
    assert {"pos"} <= set(pos) and not {"row", "col"} & set(pos)
    assert len(pos) == 2 * 3 * 6 and (tmp_path / "positions.png").is_file()
    assert res.frame["conv_dim"].iloc[0] == 1


def test_mlp_and_conv_results_concatenate(tmp_path):
    """The conv keys are null for an MLP, with nullable dtypes, so both kinds load together."""
    for name, extra in (("mlp", ["depth=2", "width=4", "batch=2", "replicates=2"]), ("conv", CONV)):
        execute(compose_config([*extra, "plot=false", "progress=false"]), tmp_path / name,
                echo=False)
    mlp = pd.read_parquet(tmp_path / "mlp" / "metrics.parquet")
    assert mlp[["kernel", "image", "padding_mode", "conv_dim"]].isna().all().all()
    assert set(mlp["quantity"]) == {"forward", "activation", "backward", "weight_grad", "correlation"}
    df = load(tmp_path)
    assert set(df["arch"]) == {"mlp", "conv"}
    assert str(df["kernel"].dtype) == "Int64" and str(df["padding_mode"].dtype).startswith("str")
    assert df.loc[df["arch"] == "conv", "kernel"].eq(3).all()


CONV_BAD = [
    (["arch=conv", "kernel=4"], "kernel must be odd for 'same' padding"),
    (["arch=conv", "kernel=9", "image=8"], "kernel 9 is larger than the image 8; need kernel ≤ image"),
    (["arch=conv", "padding_mode=reflect"], "unknown padding_mode 'reflect'; allowed: zeros, circular"),
    (["arch=conv", "scheme=delta_orthogonal", "depth=2", "widths=[8,16,4]"],
     "scheme delta_orthogonal needs C_in ≤ C_out at every layer"),
    (["arch=conv", "conv_dim=3"], "unknown conv_dim 3; allowed: 1 (Conv1d), 2 (Conv2d)"),
    (["arch=conv", "image=0"], "image must be an integer ≥ 1; got 0"),
    (["arch=resnet"], "unknown arch 'resnet'; allowed: mlp, conv"),
]


@pytest.mark.parametrize(("args", "message"), CONV_BAD)
def test_bad_conv_input_is_one_line_exit_2(args, message, capsys):
    expect_one_line_error(args, message, capsys)


def test_conv_keys_are_ignored_for_mlp():
    precheck(["arch=mlp", "kernel=4", "padding_mode=reflect", "depth=2"])  # returns: no error


def test_bad_conv_input_through_the_cli_writes_nothing(run_cli, tmp_path):
    out = tmp_path / "run"
    res = run_cli("arch=conv", "kernel=4", f"hydra.run.dir={out}")
    assert res.returncode == 2, res.stderr
    assert res.stderr.startswith("error: kernel must be odd") and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert not out.exists() and not (tmp_path / "results").exists()


# ---- `python -m` entry points ------------------------------------------------------------------

ENTRY_POINTS = [("harness.run", "run is powered by Hydra"),
                *((f"harness.{m}", f"usage: python -m harness.{m}")
                  for m in ("report", "papers", "gains", "phase", "bench"))]


@pytest.mark.parametrize(("module", "help_text"), ENTRY_POINTS)
def test_python_dash_m_reaches_the_modules_main(module, help_text, tmp_path, capsys):
    """`python -m MODULE --help` as the interpreter runs it (runpy, as __main__), in this process:
    the other CLI tests call each module's main(argv) directly, so this checks the step from
    `python -m` to main reading sys.argv."""
    with restored_process_state(), warnings.catch_warnings():
        # runpy warns that a plain module (harness.run, gains, phase) is already imported: it
        # runs a fresh copy as __main__, as `python -m` does
        warnings.filterwarnings("ignore", "'harness[.].*' found in sys.modules", RuntimeWarning)
        os.chdir(tmp_path)
        sys.argv = [module, "--help"]
        with pytest.raises(SystemExit) as exc:
            runpy.run_module(module, run_name="__main__", alter_sys=True)
    out = capsys.readouterr().out
    assert exc.value.code == 0 and help_text in out, out
    assert not list(tmp_path.iterdir())  # --help writes nothing


def test_in_process_runs_leave_no_state_behind(tmp_path):
    """The in-process runner (tests/conftest.py) restores what a run changes in this process, so
    the CLI tests cannot leak into each other: a failed sweep's summary must not turn the next
    single run's exit code into 1, and Hydra's log handlers (one holds the run's log file open)
    must not pile up on the root logger."""
    root = logging.getLogger()
    before = (sys.argv, os.getcwd(), dict(os.environ), root.handlers[:], root.level,
              torch.get_num_threads(), sweep.last_summary, sweep.current)
    res = run_module("harness.run", "--multirun", "depth=0,2", "width=4", "batch=2", "replicates=2",
                     "plot=false", "progress=false", f"hydra.sweep.dir={tmp_path / 'sweep'}", cwd=tmp_path)
    assert res.returncode == 1 and "sweep: 2 jobs: 1 done, 0 skipped, 1 failed" in res.stdout
    after = (sys.argv, os.getcwd(), dict(os.environ), root.handlers[:], root.level,
             torch.get_num_threads(), sweep.last_summary, sweep.current)
    assert after == before
    res = run_module("harness.run", "depth=2", "width=4", "batch=2", "replicates=2", "plot=false",
                     "progress=false", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
