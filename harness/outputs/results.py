"""Tidy results: build the long DataFrame, write it atomically with how it was made, load it.

One row per (replicate, layer, quantity): the run's config columns, `layer` (1..L), `replicate`,
`quantity`, `value` (measured) and `theory` (predicted, mean-field), `theory_nlo` (the ensemble
mean to O(1/n), `harness.theory.nlo`; null where not defined) and `theory_log_var` (the predicted
variance across networks of ln value: the finite-width band's s²; null where not defined).
Conv runs also get `positions.parquet`: one row per (layer, position, quantity) with the
replicate mean, its standard error and the position-resolved theory. Runs with jacobian=k get
`jacobian.parquet`: the squared singular values of the last layer's input-output Jacobian, per
(replicate, input).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import warnings
from collections.abc import Mapping
from functools import cache
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from harness import archs
from harness.core import norms, resources
from harness.core.files import FAULT_ENV as FAULT_ENV  # re-exported: tests kill a write with it
from harness.core.files import atomic_write_bytes, parquet_bytes
from harness.core.spec import ConfigError, Spec

METRICS = "metrics.parquet"
METADATA = "metadata.json"
POSITIONS = "positions.parquet"
JACOBIAN = "jacobian.parquet"
#: config columns that are null for some runs (width with `widths`; every architecture's own keys
#: for the others, e.g. conv's for an MLP), with nullable dtypes so that frames of every kind of
#: run concatenate
NULLABLE = {"width": "Int64", **archs.column_dtypes(), **norms.COLUMNS}
#: string columns held as pandas categoricals and stored dictionary-encoded in parquet (one copy
#: of each distinct value): `widths` holds depth + 1 numbers on every row, so as plain strings
#: the frame grows like depth² (about 60 GiB at depth 10,000 with 16 replicates)
DICTIONARY_COLUMNS = ("widths",)


#: the columns `to_frame` writes after `theory`: the NLO mean and the predicted Var ln value
THEORY_EXTRA = ("theory_nlo", "theory_log_var")


def to_frame(
    spec: Spec, measured: Mapping[str, np.ndarray], predicted: Mapping[str, np.ndarray],
    nlo: Mapping[str, np.ndarray] | None = None, log_var: Mapping[str, np.ndarray] | None = None,
) -> pd.DataFrame:
    """Long format: measured (R, layers) and predicted (layers,) side by side per row; `nlo`
    and `log_var` (quantity -> (layers,), where defined) fill `theory_nlo` and `theory_log_var`
    (NaN, stored as null, elsewhere)."""
    parts = []
    extra_theory = {"theory_nlo": nlo or {}, "theory_log_var": log_var or {}}
    for quantity in spec.quantities:
        m = np.asarray(measured[quantity], dtype=np.float64)
        R, n = m.shape
        extra = spec.architecture.row_columns(spec, quantity, n)  # e.g. resmlp's branch_layer
        parts.append(
            pd.DataFrame(
                {
                    "layer": np.tile(np.arange(1, n + 1), R),
                    **{k: np.tile(v, R) for k, v in extra.items()},
                    "replicate": np.repeat(np.arange(R), n),
                    "quantity": quantity,
                    "value": m.ravel(),
                    "theory": np.tile(np.asarray(predicted[quantity], dtype=np.float64), R),
                    **{name: np.tile(np.asarray(src[quantity], dtype=np.float64), R)
                       if quantity in src else np.full(R * n, np.nan)
                       for name, src in extra_theory.items()},
                }
            )
        )
    df, cols = _with_config(pd.concat(parts, ignore_index=True), spec)
    df["quantity"] = df["quantity"].astype("string")
    extra_cols = [c for c in df.columns if c not in (*cols, "layer", "replicate", "quantity", "value",
                                                     "theory", *THEORY_EXTRA)]
    for c in extra_cols:  # rows of the other quantities: <NA>
        df[c] = df[c].astype("Int64")
    return df[[*cols, "layer", *extra_cols, "replicate", "quantity", "value", "theory",
               *THEORY_EXTRA]]


def layer_matrix(run: pd.DataFrame, quantity: str, column: str = "value") -> np.ndarray:
    """One run's `quantity` as a (replicates, layers) float64 array of `column` (value or
    theory), rows by replicate and columns by layer."""
    d = run[run["quantity"] == quantity]
    return d.pivot(index="replicate", columns="layer", values=column).to_numpy(dtype=np.float64)


def layer_summary(df: pd.DataFrame) -> pd.DataFrame:
    """Per (quantity, layer): replicate mean, min, max, standard error, and theory.

    Non-finite values (overflow) are kept out of mean/min/max; `n` counts the finite ones.
    """
    finite = df[np.isfinite(df["value"])]
    g = finite.groupby(["quantity", "layer"], sort=True)["value"]
    out = pd.DataFrame(
        {
            "mean": g.mean(),
            "min": g.min(),
            "max": g.max(),
            "sem": g.std(ddof=1) / np.sqrt(g.count()),
            "n": g.count(),
        }
    )
    theory = df.groupby(["quantity", "layer"], sort=True)["theory"].first()
    return out.reindex(theory.index).assign(theory=theory).reset_index()


def landmarks(d: pd.DataFrame) -> dict[str, pd.Series | None]:
    """Boolean masks selecting the centre, the middle of the first edge and the corner
    (position 0) of a positions frame; a 1d frame has no corner (None)."""
    if "row" in d:
        n = int(d["row"].max()) + 1
        c = n // 2
        return {
            "centre": (d["row"] == c) & (d["col"] == c),
            "edge": (d["row"] == 0) & (d["col"] == c),
            "corner": (d["row"] == 0) & (d["col"] == 0),
        }
    n = int(d["pos"].max()) + 1
    return {"centre": d["pos"] == n // 2, "edge": d["pos"] == 0, "corner": None}


def frame_bytes(spec: Spec) -> int:
    """About the bytes of the run's tidy frame (`to_frame`) while it is built and written:
    replicates × layers × quantities rows of ~33 columns, measured at ~360 bytes a row at depth
    10,000 (the `widths` string is held once, as a category), counted as 512 bytes a row."""
    return 512 * spec.replicates * spec.depth * len(spec.quantities)


def check_frame(spec: Spec, available: int | None = None) -> None:
    """ConfigError (one line) if the run's tidy frame would not fit the machine's available
    memory (`available`, default /proc/meminfo's MemAvailable): checked before measuring."""
    free = resources.available_bytes("cpu") if available is None else available
    need = frame_bytes(spec)
    if free is not None and need > free:
        rows = spec.replicates * spec.depth * len(spec.quantities)
        raise ConfigError(
            f"the results frame of this run needs about {resources.size(need)} ({rows:,} rows), "
            f"but the machine has {resources.size(free)} available; reduce depth or replicates"
        )


def _with_config(df: pd.DataFrame, spec: Spec) -> tuple[pd.DataFrame, list[str]]:
    """df with the run's config columns in front (nullable dtypes), and their names.

    Each column is built for one row and then repeated to df's length (`take` of row 0): the
    values and dtypes of building it for every row (a string column would otherwise hold a
    Python object per row on its way to Arrow; measured ~5x faster at 9,600 rows)."""
    cols = spec.columns()
    one: dict[str, pd.Series | pd.Categorical] = {}
    for k, v in cols.items():
        if k in DICTIONARY_COLUMNS:  # one category, every row's code 0: no per-row string copies
            one[k] = pd.Categorical.from_codes(np.zeros(1, np.int32), categories=pd.Index([v]))
            continue
        # a scalar broadcasts (the dtype of a one-element list); None without a nullable dtype
        # (object, not float) and a tuple go through a list
        data = [v] if v is None or not pd.api.types.is_scalar(v) else v
        one[k] = pd.Series(data, index=pd.RangeIndex(1), dtype=NULLABLE.get(k))
    config = pd.DataFrame(one, index=pd.RangeIndex(1)).take(np.zeros(len(df), np.intp))
    config.index = df.index
    return pd.concat([config, df], axis=1), list(cols)


def positions_frame(
    spec: Spec, measured: Mapping[str, np.ndarray], predicted: Mapping[str, np.ndarray]
) -> pd.DataFrame:
    """One row per (layer, position, quantity) of a run with positions (arch=conv): `value` =
    the replicate mean, `sem` = its standard error, `theory` = the position-resolved prediction.

    measured: quantity -> (R, L, *S); predicted: quantity -> (L, *S). Positions are `row`, `col`
    (Conv2d) or `pos` (Conv1d), 0-based.
    """
    names = ["row", "col"] if len(spec.spatial) == 2 else ["pos"]
    parts = []
    for quantity in ("forward", "backward"):
        m = np.asarray(measured[quantity], dtype=np.float64)
        R, L = m.shape[:2]
        with np.errstate(invalid="ignore", over="ignore"):
            mean = m.mean(0)
            sem = m.std(0, ddof=1) / np.sqrt(R) if R > 1 else np.full_like(mean, np.nan)
        grid = np.indices(m.shape[1:]).reshape(1 + len(spec.spatial), -1)
        parts.append(
            pd.DataFrame(
                {
                    "layer": grid[0] + 1,
                    **{n: grid[1 + i] for i, n in enumerate(names)},
                    "quantity": quantity,
                    "value": mean.ravel(),
                    "sem": sem.ravel(),
                    "theory": np.asarray(predicted[quantity], dtype=np.float64).ravel(),
                }
            )
        )
    df, cols = _with_config(pd.concat(parts, ignore_index=True), spec)
    df["quantity"] = df["quantity"].astype("string")
    return df[[*cols, "layer", *names, "quantity", "value", "sem", "theory"]]


def spectrum_frame(spec: Spec, eigenvalues: np.ndarray) -> pd.DataFrame:
    """One row per (replicate, input, index): `value` = a squared singular value of the
    last layer's Jacobian J^L = ∂h^L/∂x^0 at that input (eigenvalues (R, k, n_0), ascending),
    with the run's config columns."""
    R, k, n = eigenvalues.shape
    df = pd.DataFrame({
        "replicate": np.repeat(np.arange(R), k * n),
        "input": np.tile(np.repeat(np.arange(k), n), R),
        "index": np.tile(np.arange(n), R * k),
        "value": np.asarray(eigenvalues, dtype=np.float64).ravel(),
    })
    df, cols = _with_config(df, spec)
    return df[[*cols, "replicate", "input", "index", "value"]]


def dictionary_array(values: pd.Series) -> pa.DictionaryArray:
    """`values` (strings or a categorical, maybe null) as an Arrow dictionary array: int32 codes
    into the distinct values. A column of one string object on every row is found by identity
    (str equality tests identity first) in O(rows), without hashing each row's long string."""
    if isinstance(values.dtype, pd.CategoricalDtype):
        codes, uniques = values.cat.codes.to_numpy(), values.cat.categories
    else:
        vals = values.to_numpy(dtype=object)
        if len(vals) and isinstance(vals[0], str) and bool((vals == vals[0]).all()):
            return pa.DictionaryArray.from_arrays(pa.array(np.zeros(len(vals), np.int32)),
                                                  pa.array([vals[0]], pa.string()))
        codes, uniques = pd.factorize(values)  # codes -1 = null
    return pa.DictionaryArray.from_arrays(
        pa.array(codes.astype(np.int32), mask=codes < 0), pa.array(list(uniques), pa.string()))


def write_parquet(df: pd.DataFrame, path: Path, meta: Mapping[str, Any] | None = None) -> None:
    """Write `df` atomically; `meta` is stored as JSON in the file's key-value metadata.
    The `DICTIONARY_COLUMNS` are stored dictionary-encoded."""
    dictionary = [c for c in df.columns if c in DICTIONARY_COLUMNS]
    table = pa.Table.from_pandas(df.drop(columns=dictionary), preserve_index=False)
    for c in dictionary:
        table = table.add_column(list(df.columns).index(c), c, dictionary_array(df[c]))
    if meta is not None:
        table = table.replace_schema_metadata(
            {**(table.schema.metadata or {}), b"harness": json.dumps(meta, default=str).encode()}
        )
    atomic_write_bytes(path, parquet_bytes(table))


def write_json(obj: Mapping[str, Any], path: Path) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, default=str) + "\n").encode())


def git_commit() -> str | None:
    """The harness checkout's commit (with '-dirty' if it has changes), or None outside git."""
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"],
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return sha + ("-dirty" if dirty else "")


def versions() -> dict[str, str]:
    """Python's and the harness's dependencies' versions (a fresh dict)."""
    return dict(_versions())


@cache  # the versions of the packages this process has loaded do not change while it runs
def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("harness", "torch", "numpy", "pandas", "pyarrow", "hydra-core", "matplotlib"):
        try:
            out[pkg] = importlib_metadata.version(pkg)
        except importlib_metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def run_metadata(spec: Spec, *, wall_s: float, device_name: str, **extra: Any) -> dict[str, Any]:
    """How a result was made: spec, versions, git commit, device, wall time, command."""
    return {
        "spec": spec.to_dict(),
        "versions": versions(),
        "git_commit": git_commit(),
        "device_name": device_name,
        "wall_s": wall_s,
        "command": [Path(sys.executable).name, *sys.argv],
        **extra,
    }


def metrics_files(path: str | os.PathLike[str]) -> list[str]:
    """Every complete result under `path`: the metrics.parquet files pyarrow's file system finds,
    outside hidden folders (`.hydra/`, `.submitit/`); a killed write's hidden `.metrics.parquet.*.tmp`
    never matches. `path` may also be one metrics.parquet file."""
    from pyarrow import fs

    root = Path(path)
    if not root.exists():
        raise FileNotFoundError(f"no such file or directory: {root}")
    if root.is_file():
        return [str(root.resolve())]
    base = root.resolve()
    selector = fs.FileSelector(str(base), recursive=True)
    return sorted(
        info.path
        for info in fs.LocalFileSystem().get_file_info(selector)
        if info.is_file and info.base_name == METRICS
        and not any(part.startswith(".") for part in Path(info.path).relative_to(base).parts)
    )


class UnreadableResultsWarning(UserWarning):
    """`load` skipped metrics.parquet files it could not read (truncated, or not parquet)."""


def _dictionary_columns(t: pa.Table) -> pa.Table:
    """`t` with its DICTIONARY_COLUMNS dictionary<int32, string>, as written since they were
    introduced (files written before hold them plain: encoded here so that tables concatenate)."""
    for c in DICTIONARY_COLUMNS:
        i = t.schema.get_field_index(c)
        if i >= 0 and not pa.types.is_dictionary(t.schema.field(i).type):
            col = t.column(i).cast(pa.string()).dictionary_encode()
            t = t.set_column(i, c, col.cast(pa.dictionary(pa.int32(), pa.string())))
    return t


def load(path: str | os.PathLike[str]) -> pd.DataFrame:
    """All metrics under `path` as one DataFrame, with a `run_dir` column naming each run's folder.

    `path` is a run directory, a sweep directory, any folder holding runs or sweeps, or one
    metrics.parquet file. Only complete results are read (jobs still running, failed or killed
    have no metrics.parquet). Runs whose columns differ (e.g. conv runs with extra columns) are
    concatenated with permissive type promotion; a column a run lacks is null there.

    A metrics.parquet that cannot be read (truncated, overwritten, not parquet) is skipped with
    one `UnreadableResultsWarning` naming every such file; `frame.attrs["unreadable"]` lists
    their paths (empty if none), so `len(frame.attrs["unreadable"])` is how many were skipped.
    Resuming the sweep recomputes those jobs. Raises FileNotFoundError if `path` is missing or
    holds no readable results.
    """
    files = metrics_files(path)
    if not files:
        raise FileNotFoundError(f"no {METRICS} under {path}")
    import pyarrow.dataset as ds  # here, not at import: a run that writes never loads

    tables, unreadable = [], []
    for f in files:
        try:
            fragment = next(iter(ds.dataset(f, format="parquet", partitioning=None).get_fragments()))
            t = fragment.to_table(schema=fragment.physical_schema)
        except (pa.ArrowException, OSError, ValueError, StopIteration):
            unreadable.append(f)
            continue
        run_dir = str(Path(fragment.path).parent)
        t = _dictionary_columns(t)
        tables.append(t.append_column("run_dir", pa.array([run_dir] * t.num_rows, pa.string())))
    if not tables:
        raise FileNotFoundError(f"no readable {METRICS} under {path}: {len(unreadable)} unreadable "
                                f"({', '.join(unreadable)}; will be recomputed on resume)")
    if unreadable:
        warnings.warn(f"skipped {len(unreadable)} unreadable {METRICS} (will be recomputed on "
                      f"resume): {', '.join(unreadable)}", UnreadableResultsWarning, stacklevel=2)
    table = pa.concat_tables(tables, promote_options="permissive")
    frame = table.to_pandas()  # DICTIONARY_COLUMNS come back categorical
    frame.attrs["unreadable"] = unreadable
    return frame
