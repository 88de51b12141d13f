"""Memory: the preflight's one-line error (no files, no traceback, sweep jobs fail with it) and
the low-memory path (weights regenerated from the streams, activations recomputed between
checkpoints), which must give the stored path's numbers bitwise."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from tqdm import tqdm

from harness.archs import mlp
from harness.bench import memory as bench_memory
from harness.cli import compose_config
from harness.cli import sweep as sweep_jobs
from harness.core.spec import ConfigError
from harness.outputs import results
from harness.run import execute
from harness.sim import memory
from harness.sim.regen import RegeneratedWeights
from harness.sim.runner import BAR_FORMAT, bytes_per_replicate, measure, replicate_generators
from tests.conftest import small_spec

HUGE = ["width=100000", "depth=3", "replicates=2", "batch=4"]


def test_cli_preflight_is_one_line_exit_2_and_writes_nothing(run_cli, tmp_path):
    r = run_cli(*HUGE)
    assert r.returncode == 2, r.stderr
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("error: one replicate"), r.stderr
    assert "Traceback" not in r.stderr and "GiB" in r.stderr and "reduce depth" in r.stderr
    assert list(tmp_path.iterdir()) == []  # no run folder, no .hydra, no run.log


def test_preflight_against_available_memory_names_what_is_available():
    spec = small_spec("depth=4", "width=64", "batch=8", "replicates=2")
    need = memory.plan(spec).bytes
    assert memory.preflight(spec, available=2 * need).chunk == 2
    with pytest.raises(ConfigError, match=r"cpu has .* available; reduce depth, width"):
        memory.preflight(spec, available=need // 2)


def test_sweep_job_that_does_not_fit_is_failed_with_the_line(tmp_path, capsys):
    status = sweep_jobs.run_job(compose_config([*HUGE, "plot=false", "progress=false"]),
                                tmp_path / "job", execute=execute, overrides=HUGE)
    assert status["state"] == "failed" and status["error_type"] == "ConfigError"
    assert status["message"].startswith("one replicate of this run needs")
    assert "traceback" not in status
    stored = json.loads((tmp_path / "job" / sweep_jobs.STATUS).read_text())
    assert stored["message"] == status["message"]
    assert "one replicate" in capsys.readouterr().err


CASES = [
    ("depth=13", "width=24", "batch=5", "act=tanh"),                       # φ' from h
    ("depth=13", "width=10", "batch=5", "act=relu", "bias_std=0.3"),      # φ' from φ(h); 100
    ("depth=9", "width=7", "batch=1", "act=gelu", "scheme=orthogonal"),   # layer-by-layer draw
    ("depth=9", "widths=[5,7,9,3,8,8,8,8,8,6]", "batch=4", "scheme=xavier_uniform"),
    ("depth=12", "width=9", "batch=3", "act=softplus", "dtype=float64", "bias_std=0.1"),
]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("segment", [1, 3, 5, 100])
def test_checkpointed_regenerated_path_equals_stored_path_bitwise(case, segment):
    """Layer sizes that are not multiples of 16 (torch's normal_ blocks), per-layer scales,
    orthogonal draws, both kinds of φ' and segments that do not divide the depth."""
    spec = small_spec(*case, "replicates=3")
    stored = measure(spec, progress=False)
    gens = replicate_generators(spec, 0, 3)
    lazy = RegeneratedWeights(spec, 3, gens, segment)
    got = spec.architecture.propagate_recompute(spec, lazy, lazy.biases, lazy.x0, lazy.cotangent,
                                                segment)
    assert set(got) == set(stored.values)
    for q, v in stored.values.items():
        np.testing.assert_array_equal(got[q].double().numpy(), v, err_msg=q)


def test_a_run_over_budget_takes_the_low_memory_path_with_the_same_numbers():
    base = ("depth=40", "width=32", "batch=8", "replicates=3", "act=tanh", "bias_std=0.1")
    stored = measure(small_spec(*base), progress=False)
    budget = 0.5 * bytes_per_replicate(small_spec(*base)) / 2**20
    spec = small_spec(*base, f"memory_budget_mb={budget}")
    plan = memory.plan(spec)
    assert plan.recompute and 1 < plan.segment < 40 and plan.bytes <= budget * 2**20
    low = measure(spec, progress=False)
    for q, v in stored.values.items():
        np.testing.assert_array_equal(low.values[q], v, err_msg=q)


def test_low_memory_bytes_grow_like_the_square_root_of_depth():
    """The stored path's bytes grow ∝ L; the low-memory path's best ∝ √L (checkpoints ⌈L/k⌉
    and one segment of k layers): 100× the depth is ~10× the bytes, not 100×."""
    a = small_spec("depth=100", "width=256", "batch=64", "replicates=1")
    b = small_spec("depth=10000", "width=256", "batch=64", "replicates=1")
    ratio = memory.best_segment(b)[1] / memory.best_segment(a)[1]
    assert 5 < ratio < 20
    assert mlp.bytes_per_replicate(b) / mlp.bytes_per_replicate(a) > 90


def test_no_low_memory_path_says_why():
    with pytest.raises(ConfigError, match="no low-memory path: jacobian"):
        memory.preflight(small_spec("depth=400", "width=128", "batch=8", "jacobian=2",
                                    "memory_budget_mb=1"))


def test_measure_refuses_a_run_that_does_not_fit_before_any_work():
    """The Python API's path (harness.run's CLI checks in its validation, before Hydra writes)."""
    spec = small_spec(*HUGE)  # a valid config: the memory check is the run's, not the Spec's
    with pytest.raises(ConfigError, match="one replicate of this run needs"):
        measure(spec)


def test_progress_bar_shows_layers_per_second_and_eta():
    line = tqdm.format_meter(30, 100, 1.5, prefix="layers", unit="layer", bar_format=BAR_FORMAT)
    assert "30/100 layer passes" in line and "ETA 00:03" in line and "20.00layer/s" in line


def test_ctrl_c_during_a_run_leaves_no_result(tmp_path, monkeypatch):
    """A KeyboardInterrupt in the middle of the measurement: nothing of the run is written (the
    files are written after it, each atomically, metrics.parquet last)."""
    calls = []

    def interrupted(*args, **kwargs):
        calls.append(1)
        raise KeyboardInterrupt

    monkeypatch.setattr(mlp.ARCH, "propagate", interrupted)
    with pytest.raises(KeyboardInterrupt):
        execute(compose_config(["depth=3", "width=8", "batch=4", "replicates=2", "plot=false",
                                "progress=false"]), tmp_path / "run", echo=False)
    assert calls and not (tmp_path / "run").exists()


def test_memory_benchmark_quick_row(capsys):
    bench_memory.main(["--quick", "--repeat", "1"])
    out = capsys.readouterr().out
    assert "low-memory" in out and "bitwise equal: True" in out


CONV_CASES = [
    ("arch=conv", "depth=7", "width=3", "image=6", "batch=2", "act=tanh", "bias_std=0.2"),
    ("arch=conv", "depth=6", "width=4", "image=5", "batch=3", "act=relu", "conv_dim=1",
     "padding_mode=circular"),
    ("arch=conv", "depth=5", "width=4", "image=5", "batch=2", "act=gelu",
     "scheme=delta_orthogonal"),
]


@pytest.mark.parametrize("case", CONV_CASES)
@pytest.mark.parametrize("segment", [1, 2, 3, 100])
def test_conv_checkpointed_regenerated_path_equals_stored_path_bitwise(case, segment):
    spec = small_spec(*case, "replicates=2")
    stored = measure(spec, progress=False)
    lazy = RegeneratedWeights(spec, 2, replicate_generators(spec, 0, 2), segment)
    got = spec.architecture.propagate_recompute(spec, lazy, lazy.biases, lazy.x0, lazy.cotangent,
                                                segment)
    for q, v in stored.values.items():
        np.testing.assert_array_equal(got[q].double().numpy(), v, err_msg=q)
    for q, v in stored.positions.items():
        np.testing.assert_array_equal(got["position:" + q].double().numpy().reshape(v.shape), v,
                                      err_msg=q)


def test_a_results_frame_too_large_for_the_machine_is_refused_before_measuring():
    """The frame is ~512 bytes a row (results.frame_bytes): depth 10,000 × 16 replicates × 5
    quantities is ~0.4 GiB, refused only on a machine with less available; Spec.from_config and
    the memory preflight (one replicate) do not refuse it: the frame is the outputs'
    (harness.outputs.results.check_frame, called by the CLI precheck and api.compute)."""
    spec = small_spec("depth=10000", "width=256", "batch=64", "replicates=16")
    need = results.frame_bytes(spec)
    results.check_frame(spec, available=need + 1)
    with pytest.raises(ConfigError, match=r"results frame of this run needs about .* MiB"):
        results.check_frame(spec, available=need - 1)


def test_the_widths_column_is_one_category_in_memory_and_one_dictionary_value_on_disk(tmp_path):
    """At depth 10,000 the widths string is ~50 KB: held per row it made the frame grow like
    depth² (~60 GiB). It is a category in the frame, dictionary-encoded in parquet, and load
    gives it back equal to the spec's string on every row."""
    spec = small_spec("depth=3000", "width=256", "replicates=2")
    measured = {q: np.ones((2, 3000)) for q in spec.quantities}
    df = results.to_frame(spec, measured, {q: np.ones(3000) for q in spec.quantities})
    text = spec.columns()["widths"]
    assert isinstance(df["widths"].dtype, pd.CategoricalDtype)
    assert list(df["widths"].cat.categories) == [text]
    # per row, the string held on every row would be 12 KB (0.36 GB in all); the other ~32
    # columns take ~300 bytes a row
    assert df.memory_usage(deep=True).sum() < 1000 * len(df) + 10 * len(text)
    results.write_parquet(df, tmp_path / "metrics.parquet")
    assert (tmp_path / "metrics.parquet").stat().st_size < 10 * len(text) + 100 * len(df)
    back = results.load(tmp_path)
    assert (back["widths"].astype(object) == text).all()
    pd.testing.assert_frame_equal(back.drop(columns="run_dir"), df, check_categorical=False)
