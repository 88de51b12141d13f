"""Files written whole or not at all: atomic writes (a temporary file renamed over the target),
and a table's parquet bytes. Everything the harness writes goes through `atomic_write_bytes`, so
a killed process never leaves a half-written file under a real name.
"""

from __future__ import annotations

import os
import signal
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

#: tests only: "NAME:N" kills this process (SIGKILL) at its N-th atomic write of NAME, after the
#: temporary file is written and before the rename, as an out-of-memory kill or a power cut would
FAULT_ENV = "HARNESS_FAULT_KILL_BEFORE_RENAME"
_writes: dict[str, int] = {}


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


def parquet_bytes(table: pa.Table) -> bytes:
    """`table` as the bytes of one parquet file (its schema metadata included)."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()
