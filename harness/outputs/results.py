"""Tidy results: build the long DataFrame, write it atomically with how it was made, load it.

One row per (replicate, layer, quantity): the run's config columns, `layer` (1..L), `replicate`,
`quantity`, `value` (measured) and `theory` (predicted). Conv runs also get `positions.parquet`:
one row per (layer, position, quantity) with the replicate mean, its standard error and the
position-resolved theory. Runs with jacobian=k get `jacobian.parquet`: the squared singular
values of the last layer's input-output Jacobian, per (replicate, input).
"""

from __future__ import annotations

import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Mapping
from functools import cache
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from harness import archs
from harness.core import norms, resources
from harness.core.spec import ConfigError, Spec

METRICS = "metrics.parquet"
METADATA = "metadata.json"
POSITIONS = "positions.parquet"
JACOBIAN = "jacobian.parquet"
#: config columns that are null for some runs (width with `widths`; every architecture's own keys
#: for the others, e.g. conv's for an MLP), with nullable dtypes so that frames of every kind of
#: run concatenate
NULLABLE = {"width": "Int64", **archs.column_dtypes(), **norms.COLUMNS}
#: tests only: "NAME:N" kills this process (SIGKILL) at its N-th atomic write of NAME, after the
#: temporary file is written and before the rename, as an out-of-memory kill or a power cut would
FAULT_ENV = "HARNESS_FAULT_KILL_BEFORE_RENAME"
_writes: dict[str, int] = {}


def to_frame(
    spec: Spec, measured: Mapping[str, np.ndarray], predicted: Mapping[str, np.ndarray]
) -> pd.DataFrame:
    """Long format: measured (R, layers) and predicted (layers,) side by side per row."""
    parts = []
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
                }
            )
        )
    df = pd.concat(parts, ignore_index=True)
    cols = _with_config(df, spec)
    df["quantity"] = df["quantity"].astype("string")
    extra_cols = [c for c in df.columns if c not in (*cols, "layer", "replicate", "quantity", "value",
                                                     "theory")]
    for c in extra_cols:  # rows of the other quantities: <NA>
        df[c] = df[c].astype("Int64")
    return df[[*cols, "layer", *extra_cols, "replicate", "quantity", "value", "theory"]]


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
    """About the bytes of the run's tidy frame (`to_frame`): replicates × layers × quantities
    rows, each holding the config columns, among them the widths string (depth+1 numbers, stored
    per row), and ~256 bytes of the others; counted twice (the parts and their concatenation)."""
    rows = spec.replicates * spec.depth * len(spec.quantities)
    return 2 * rows * (len(spec.columns()["widths"]) + 256)


def check_frame(spec: Spec, available: int | None = None) -> None:
    """ConfigError (one line) if the run's tidy frame would not fit the machine's available
    memory (`available`, default /proc/meminfo's MemAvailable): checked before measuring."""
    free = resources.available_bytes("cpu") if available is None else available
    need = frame_bytes(spec)
    if free is not None and need > free:
        rows = spec.replicates * spec.depth * len(spec.quantities)
        raise ConfigError(
            f"the results frame of this run needs about {resources.size(need)} ({rows:,} rows, "
            f"each repeating the {len(spec.columns()['widths']):,}-character widths column), but "
            f"the machine has {resources.size(free)} available; reduce depth or replicates"
        )


def _with_config(df: pd.DataFrame, spec: Spec) -> list[str]:
    """Add the run's config columns to df (in place, nullable dtypes); returns their names."""
    cols = spec.columns()
    for k, v in cols.items():
        # a scalar broadcasts (the same dtype as the list, ~10x faster); None without a nullable
        # dtype (object, not float) and a tuple go through a list
        data = [v] * len(df) if v is None or not pd.api.types.is_scalar(v) else v
        df[k] = pd.Series(data, index=df.index, dtype=NULLABLE.get(k))
    return list(cols)


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
    df = pd.concat(parts, ignore_index=True)
    cols = _with_config(df, spec)
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
    cols = _with_config(df, spec)
    return df[[*cols, "replicate", "input", "index", "value"]]


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to a hidden temporary file beside `path`, then rename it over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        _fault_point(path)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _fault_point(path: Path) -> None:
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    name, _, nth = spec.partition(":")
    if path.name == name:
        _writes[name] = _writes.get(name, 0) + 1
        if _writes[name] == int(nth or 1):
            os.kill(os.getpid(), signal.SIGKILL)


def write_parquet(df: pd.DataFrame, path: Path, meta: Mapping[str, Any] | None = None) -> None:
    """Write `df` atomically; `meta` is stored as JSON in the file's key-value metadata."""
    table = pa.Table.from_pandas(df, preserve_index=False)
    if meta is not None:
        table = table.replace_schema_metadata(
            {**(table.schema.metadata or {}), b"harness": json.dumps(meta, default=str).encode()}
        )
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    atomic_write_bytes(path, sink.getvalue().to_pybytes())


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
    tables, unreadable = [], []
    for f in files:
        try:
            fragment = next(iter(ds.dataset(f, format="parquet", partitioning=None).get_fragments()))
            t = fragment.to_table(schema=fragment.physical_schema)
        except (pa.ArrowException, OSError, ValueError, StopIteration):
            unreadable.append(f)
            continue
        run_dir = str(Path(fragment.path).parent)
        tables.append(t.append_column("run_dir", pa.array([run_dir] * t.num_rows, pa.string())))
    if not tables:
        raise FileNotFoundError(f"no readable {METRICS} under {path}: {len(unreadable)} unreadable "
                                f"({', '.join(unreadable)}; will be recomputed on resume)")
    if unreadable:
        warnings.warn(f"skipped {len(unreadable)} unreadable {METRICS} (will be recomputed on "
                      f"resume): {', '.join(unreadable)}", UnreadableResultsWarning, stacklevel=2)
    table = pa.concat_tables(tables, promote_options="permissive")
    frame = table.to_pandas()
    frame.attrs["unreadable"] = unreadable
    return frame
