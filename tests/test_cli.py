"""End to end: `python -m harness.run` in a temp dir, its outputs, and every bad input."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from harness.cli import compose_config, precheck
from harness.run import execute

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
    (["scheme=xavier", "scheme.nonlinearity=relu"], "scheme xavier takes no nonlinearity"),
    (["act=relu", "act.negative_slope=0.1"], "unknown config key 'act.negative_slope'; keys under act: name"),
    (["scheme.nonlinearity=swish"], "scheme.nonlinearity 'swish' is not one calculate_gain knows"),
    (["input_var=0"], "input_var must be a finite number > 0"),
]


@pytest.mark.parametrize(("args", "message"), BAD)
def test_bad_input_is_one_line_exit_2(args, message, capsys):
    with pytest.raises(SystemExit) as exc:
        precheck(args)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    assert message in err


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
