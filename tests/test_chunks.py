"""harness.sim.chunks: a long run streams its results per chunk of replicates; a killed run
rerun into the same folder completes the rest, bit for bit, without duplicates."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from harness.archs import mlp
from harness.cli import compose_config
from harness.outputs.results import FAULT_ENV, METRICS
from harness.run import execute
from harness.sim import chunks, memory
from harness.sim.runner import measure
from tests.conftest import small_spec

# 4 replicates, one per chunk (the budget fits one replicate of this size, not two; with
# jacobian=2 one replicate needs 3.3 KiB)
ONE_PER_CHUNK = ["depth=3", "width=8", "batch=4", "replicates=4", "plot=false", "progress=false"]
PLAIN = ("memory_budget_mb=0.002",)


def run_killed_at_chunk(n: int, out: Path, *extra: str) -> subprocess.CompletedProcess:
    """`python -m harness.run` into `out`, SIGKILLed just before chunk n (replicate n) is renamed
    into place: chunks 0..n−1 are complete on disk, chunk n's bytes lie under a temporary name."""
    name = chunks.chunk_path(Path(), n, 1).name
    env = {**os.environ, "MPLBACKEND": "Agg", FAULT_ENV: f"{name}:1"}
    return subprocess.run([sys.executable, "-m", "harness.run", *ONE_PER_CHUNK, *extra,
                           f"hydra.run.dir={out}"], env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.parametrize("extra", [PLAIN, ("jacobian=2", "memory_budget_mb=0.004")],
                         ids=["plain", "jacobian"])
def test_a_killed_run_resumes_the_chunks_it_did_not_finish(tmp_path, monkeypatch, extra):
    res = run_killed_at_chunk(2, tmp_path / "run", *extra)
    assert res.returncode == -9, res.stderr
    kept = chunks.stored(tmp_path / "run" / chunks.CHUNKS)
    assert [p.name for p in kept] == [chunks.chunk_path(Path(), i, 1).name for i in (0, 1)]
    assert not (tmp_path / "run" / METRICS).exists()

    calls = []
    real = mlp.ARCH.propagate

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(mlp.ARCH, "propagate", counted)
    cfg = compose_config([*ONE_PER_CHUNK, *extra])
    resumed = execute(cfg, tmp_path / "run", echo=False).frame
    assert len(calls) == 2  # replicates 2 and 3 only: 0 and 1 were read back
    assert not (tmp_path / "run" / chunks.CHUNKS).exists()  # deleted once metrics.parquet is there

    calls.clear()
    whole = execute(cfg, tmp_path / "whole", echo=False).frame
    assert len(calls) == 4
    # each (replicate, layer, quantity) once, and the numbers of an uninterrupted run: every
    # replicate draws from its own stream, so the process that computed it does not matter
    key = ["replicate", "layer", "quantity"]
    assert not resumed.duplicated(key).any() and len(resumed) == len(whole)
    pd.testing.assert_frame_equal(resumed, whole, check_exact=True)
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "run" / METRICS),
                                  pd.read_parquet(tmp_path / "whole" / METRICS), check_exact=True)


def test_a_chunk_of_another_config_or_unreadable_is_recomputed(tmp_path):
    spec = small_spec(*ONE_PER_CHUNK[:4], *PLAIN)
    other = small_spec(*ONE_PER_CHUNK[:4], *PLAIN, "seed=1")
    first = measure(spec, progress=False, chunks_dir=tmp_path)
    assert len(chunks.stored(tmp_path)) == 4
    assert chunks.load(tmp_path, other, 0, 1) is None  # another seed: not this run's chunk
    assert chunks.load(tmp_path, spec, 0, 2) is None  # another chunking: not reused
    again = chunks.load(tmp_path, spec, 0, 1)
    assert again is not None
    np.testing.assert_array_equal(again.stats["forward"].double().numpy(),
                                  first.values["forward"][:1])
    path = chunks.chunk_path(tmp_path, 1, 1)
    path.write_bytes(path.read_bytes()[:50])  # truncated
    assert chunks.load(tmp_path, spec, 1, 1) is None
    redone = measure(spec, progress=False, chunks_dir=tmp_path)
    for q, v in first.values.items():
        np.testing.assert_array_equal(redone.values[q], v, err_msg=q)
    assert chunks.load(tmp_path, spec, 1, 1) is not None  # rewritten whole


def test_chunks_keep_the_run_dtype_and_the_low_memory_path_streams_too(tmp_path):
    """float32 statistics stored as float32 (a float64 copy would still be exact, but twice the
    bytes); the low-memory path (budget below one stored replicate) streams its chunks as well."""
    spec = small_spec("depth=40", "width=16", "batch=4", "replicates=2", "memory_budget_mb=0.05")
    assert memory.plan(spec).recompute
    m = measure(spec, progress=False, chunks_dir=tmp_path)
    assert len(chunks.stored(tmp_path)) == math.ceil(2 / m.chunk_size)
    c = chunks.load(tmp_path, spec, 0, m.chunk_size)
    assert c is not None and c.stats["forward"].dtype.is_floating_point
    assert str(c.stats["forward"].dtype) == "torch.float32"
    np.testing.assert_array_equal(c.stats["forward"].double().numpy(),
                                  m.values["forward"][: m.chunk_size])


@pytest.mark.parametrize("depth", [1, 2])
def test_a_chunk_with_an_empty_statistic_round_trips(tmp_path, monkeypatch, depth):
    """depth=1 has no hidden layer, so `activation` is (r, 0): its chunk stores the shape only
    (a CLI run at depth 1 raised ArrowInvalid before), and the rerun reads back the same arrays."""
    spec = small_spec(f"depth={depth}", "width=8", "batch=3", "replicates=2")
    first = measure(spec, progress=False, chunks_dir=tmp_path)
    assert chunks.stored(tmp_path)
    monkeypatch.setattr(mlp.ARCH, "propagate", None)  # the rerun must not compute
    again = measure(spec, progress=False, chunks_dir=tmp_path)
    assert set(again.values) == set(first.values)
    for k, v in first.values.items():
        np.testing.assert_array_equal(np.asarray(again.values[k]), np.asarray(v), err_msg=k)
