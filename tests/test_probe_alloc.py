"""harness.probe.alloc: while a probe measures, a freed large block is reused without page faults;
afterwards glibc's defaults are back (a large block page-faults in afresh)."""

from __future__ import annotations

import platform
import resource
import subprocess
import sys
from pathlib import Path

import torch

from harness.probe import alloc

MB = 1 << 20
#: larger than glibc's largest dynamic mmap threshold (32 MB): served by mmap by default
SIZE = 64 * MB


def _faults_of_one_block() -> int:
    """Minor page faults taken by allocating, touching and freeing one SIZE-byte tensor."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    t = torch.empty(SIZE // 4, dtype=torch.float32)
    t.fill_(1.0)
    del t
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


def test_retained_reuses_freed_memory_then_restores_the_defaults():
    """In a fresh interpreter: the allocator's state is per process, and what earlier tests in a
    worker left in the heap (a dynamically raised mmap threshold, free space at the top) decides
    whether a 64 MB block faults afresh."""
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", "import tests.test_probe_alloc as t; t.check_retained()"],
                          cwd=root, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def check_retained() -> None:
    """Inside: once the heap has grown to hold it (one or two blocks), a block reuses freed
    pages (no faults; the fewest of three). After: the default mmap of a 64 MB block faults its
    pages in again every time (16,384 pages of 4 KiB, fewer with huge pages)."""
    with alloc.retained() as how:
        if platform.libc_ver()[0] != "glibc":
            assert how.startswith("unchanged")
            return
        assert how == "glibc heap retained"
        _faults_of_one_block()
        inside = min(_faults_of_one_block() for _ in range(3))
    after = min(_faults_of_one_block() for _ in range(2))
    assert after > 0 and inside * 10 <= after, (inside, after)
