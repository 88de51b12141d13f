"""A long run's results streamed per chunk of replicates, so that a killed run keeps the chunks
it finished and a rerun into the same folder completes the rest.

`harness.sim.runner.measure(spec, chunks_dir=DIR)` writes each chunk's per-replicate statistics
to `DIR/replicates-A-B.parquet` (replicates A..B) as soon as the chunk is done, and looks for
that file before computing a chunk. The rules are the sweep's resume rules
(`harness.cli.sweep`), per chunk:

- a file under its real name is complete: it is written to a temporary name and renamed whole
  (`harness.core.files.atomic_write_bytes`), so a kill leaves either the whole chunk or nothing;
- it is reused only if the spec stored in it equals the run's (another config recomputes it);
- an unreadable file is recomputed.

Each replicate draws from its own random stream (`harness.sim.runner.replicate_seed`), so a
chunk's numbers do not depend on which process computed it: a resumed run's results are those of
an uninterrupted one, bit for bit. The statistics are stored in the run's dtype (float32 stays
float32). The run deletes the folder once metrics.parquet is written (`harness.api.write`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from harness.core.files import atomic_write_bytes, parquet_bytes
from harness.core.spec import Spec

#: the folder of a run's chunk files, inside the run's output folder
CHUNKS = "chunks"
#: the column holding a chunk's Jacobian spectrum (jacobian=k): (r, k, n_0) eigenvalues
SPECTRUM = "__jacobian_spectrum"


@dataclass(frozen=True)
class Chunk:
    """One chunk's per-replicate statistics, quantity -> tensor (r, ...) on the CPU in the run's
    dtype, and with jacobian=k the last layer's spectrum (r, k, n_0)."""

    stats: dict[str, torch.Tensor]
    spectrum: np.ndarray | None


def chunk_path(directory: Path, start: int, r: int) -> Path:
    """`directory/replicates-{start}-{start + r − 1}.parquet` (six digits each)."""
    return directory / f"replicates-{start:06d}-{start + r - 1:06d}.parquet"


def _spec_json(spec: Spec) -> Any:
    """The spec as stored in a chunk's metadata (JSON round trip: lists, not tuples)."""
    return json.loads(json.dumps(spec.to_dict(), default=str))


def _column(a: np.ndarray) -> pa.Array:
    """(r, *shape) -> r rows of fixed-size lists of prod(shape) ≥ 1 values (an empty statistic,
    e.g. `activation` at depth 1, has no column: its shape in the metadata restores it)."""
    return pa.FixedSizeListArray.from_arrays(pa.array(a.reshape(-1)), math.prod(a.shape[1:]))


def save(directory: Path, spec: Spec, start: int, chunk: Chunk) -> None:
    """Write `chunk` (replicates start.. of `spec`'s run) atomically under `directory`."""
    arrays = {k: t.detach().to("cpu").numpy() for k, t in chunk.stats.items()}
    if chunk.spectrum is not None:
        arrays[SPECTRUM] = np.asarray(chunk.spectrum)
    r = len(next(iter(arrays.values())))
    meta = {"spec": _spec_json(spec), "start": start, "replicates": r,
            "shapes": {k: list(a.shape[1:]) for k, a in arrays.items()}}
    table = pa.table({k: _column(a) for k, a in arrays.items() if a.size})
    table = table.replace_schema_metadata({b"harness": json.dumps(meta).encode()})
    directory.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(chunk_path(directory, start, r), parquet_bytes(table))


def load(directory: Path, spec: Spec, start: int, r: int) -> Chunk | None:
    """The stored chunk of replicates start..start+r−1 of `spec`'s run, or None if there is none,
    it cannot be read, or it was made by another config."""
    path = chunk_path(directory, start, r)
    if not path.is_file():
        return None
    try:
        table = pq.read_table(path)
        meta = json.loads((table.schema.metadata or {})[b"harness"])
        if meta["spec"] != _spec_json(spec) or (meta["start"], meta["replicates"]) != (start, r):
            return None
        dtypes = {k: table.schema.field(k).type.value_type.to_pandas_dtype() for k in table.column_names}
        arrays = {k: np.asarray(table.column(k).combine_chunks().flatten()).reshape(r, *shape)
                  if math.prod(shape) else np.zeros((r, *shape), dtypes.get(k, np.float64))
                  for k, shape in meta["shapes"].items()}
    except (pa.ArrowException, OSError, ValueError, KeyError, TypeError):
        return None
    spectrum = arrays.pop(SPECTRUM, None)
    return Chunk({k: torch.from_numpy(a.copy()) for k, a in arrays.items()}, spectrum)


def stored(directory: Path) -> list[Path]:
    """The chunk files under `directory` (none if it does not exist), in replicate order."""
    return sorted(directory.glob("replicates-*.parquet")) if directory.is_dir() else []


def as_stats(parts: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A chunk's statistics moved to the CPU (as they are stored), keeping their dtype."""
    return {k: v.to("cpu") for k, v in parts.items()}
