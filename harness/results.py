"""Tidy results: build the long DataFrame, write it atomically with how it was made, load it.

One row per (replicate, layer, quantity): the run's config columns, `layer` (1..L), `replicate`,
`quantity`, `value` (measured) and `theory` (predicted).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from .spec import QUANTITIES, Spec

METRICS = "metrics.parquet"
METADATA = "metadata.json"


def to_frame(
    spec: Spec, measured: Mapping[str, np.ndarray], predicted: Mapping[str, np.ndarray]
) -> pd.DataFrame:
    """Long format: measured (R, layers) and predicted (layers,) side by side per row."""
    parts = []
    for quantity in QUANTITIES:
        if quantity not in measured:  # correlation needs batch ≥ 2
            continue
        m = np.asarray(measured[quantity], dtype=np.float64)
        R, n = m.shape
        parts.append(
            pd.DataFrame(
                {
                    "layer": np.tile(np.arange(1, n + 1), R),
                    "replicate": np.repeat(np.arange(R), n),
                    "quantity": quantity,
                    "value": m.ravel(),
                    "theory": np.tile(np.asarray(predicted[quantity], dtype=np.float64), R),
                }
            )
        )
    df = pd.concat(parts, ignore_index=True)
    cols = spec.columns()
    for k, v in cols.items():
        df[k] = v
    df["width"] = df["width"].astype("Int64")
    df["quantity"] = df["quantity"].astype("string")
    return df[[*cols, "layer", "replicate", "quantity", "value", "theory"]]


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
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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


def load(path: str | os.PathLike[str]) -> pd.DataFrame:
    """All metrics under `path` (a run directory, a sweep directory, any folder of runs, or one
    metrics.parquet file) as one DataFrame, with a `run_dir` column naming each run's folder."""
    root = Path(path)
    if not root.exists():
        raise FileNotFoundError(f"no such file or directory: {root}")
    if root.is_file():
        files = [str(root)]
    else:
        from pyarrow import fs

        selector = fs.FileSelector(str(root.resolve()), recursive=True)
        files = sorted(
            info.path
            for info in fs.LocalFileSystem().get_file_info(selector)
            if info.is_file and info.base_name == METRICS
        )
    if not files:
        raise FileNotFoundError(f"no {METRICS} under {root}")
    dataset = ds.dataset(files, format="parquet")
    tables = []
    for fragment in dataset.get_fragments():
        t = fragment.to_table()
        run_dir = str(Path(fragment.path).parent)
        tables.append(t.append_column("run_dir", pa.array([run_dir] * t.num_rows, pa.string())))
    table = pa.concat_tables(tables, promote_options="permissive")
    return table.to_pandas()
