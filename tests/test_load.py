"""`harness.load` over a run directory, a sweep, a folder of sweeps and one file: complete
results only, a run_dir column, mixed schemas promoted, clear errors."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest

from harness import load
from harness.cli import compose_config
from harness.outputs.results import METRICS, write_parquet
from harness.run import execute

SMALL = ["width=8", "batch=4", "replicates=2", "plot=false", "progress=false"]
ROWS = {2: 2 * (2 + 1 + 2 + 2 + 2), 3: 2 * (3 + 2 + 3 + 3 + 3)}  # replicates × (layers per quantity)


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """results/{runs/one, sweeps/a/{depth=2,depth=3}, sweeps/b/depth=2} plus debris."""
    root = tmp_path_factory.mktemp("results")
    dirs = {"run": root / "runs" / "one", "a2": root / "sweeps" / "a" / "depth=2",
            "a3": root / "sweeps" / "a" / "depth=3", "b2": root / "sweeps" / "b" / "depth=2"}
    for key, d in dirs.items():
        execute(compose_config([f"depth={key[-1] if key != 'run' else 2}", *SMALL]), d, echo=False)
    a = root / "sweeps" / "a"
    # debris a killed or failed job leaves, and copies in hidden folders: never loaded
    (a / "depth=4").mkdir()
    (a / "depth=4" / "status.json").write_text('{"state": "running"}')
    shutil.copy(dirs["a2"] / METRICS, a / "depth=4" / f".{METRICS}.x1y2.tmp")
    (a / ".submitit" / "1").mkdir(parents=True)
    shutil.copy(dirs["a2"] / METRICS, a / ".submitit" / "1" / METRICS)
    (dirs["a2"] / ".hydra" ).mkdir()
    shutil.copy(dirs["a2"] / METRICS, dirs["a2"] / ".hydra" / METRICS)
    return root, dirs


def test_a_run_directory(tree):
    root, dirs = tree
    df = load(dirs["run"])
    assert len(df) == ROWS[2] and set(df["run_dir"]) == {str(dirs["run"].resolve())}
    assert pd.api.types.is_integer_dtype(df["depth"]) and str(df["width"].dtype) == "Int64"


def test_a_sweep_directory_ignores_incomplete_jobs_and_hidden_files(tree):
    root, dirs = tree
    df = load(root / "sweeps" / "a")
    assert set(df["run_dir"]) == {str(dirs["a2"].resolve()), str(dirs["a3"].resolve())}
    assert len(df) == ROWS[2] + ROWS[3]
    assert not df.duplicated(["run_dir", "replicate", "layer", "quantity"]).any()


def test_a_folder_of_runs_and_sweeps_and_a_single_file(tree):
    root, dirs = tree
    assert load(root)["run_dir"].nunique() == 4
    assert load(root / "sweeps")["run_dir"].nunique() == 3
    one = load(dirs["b2"] / METRICS)
    assert len(one) == ROWS[2] and one["run_dir"].unique().tolist() == [str(dirs["b2"].resolve())]


def test_mixed_schemas_concatenate_with_promotion(tree, tmp_path):
    root, dirs = tree
    base = pd.read_parquet(dirs["a2"] / METRICS)
    conv = base.assign(kernel=3, image=8, depth=base["depth"].astype(float),
                       width=pd.array([None] * len(base), dtype="Int64"))
    write_parquet(conv, tmp_path / "conv" / METRICS, {"spec": {}})
    write_parquet(base, tmp_path / "mlp" / METRICS, {"spec": {}})
    df = load(tmp_path)
    assert len(df) == 2 * len(base)
    by = df.groupby("run_dir")
    assert by["kernel"].first().isna().sum() == 1 and set(df["kernel"].dropna()) == {3}
    assert set(df["image"].dropna()) == {8} and df["depth"].dtype == "float64"
    assert df["width"].isna().sum() == len(base)


def test_missing_or_empty_paths_raise_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file or directory"):
        load(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match=f"no {METRICS} under"):
        load(tmp_path)
