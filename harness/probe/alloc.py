"""Keep freed memory in the process while a probe measures (glibc's malloc only).

The batched path allocates tensors R times larger than the loop's (R replicates at once: a
resnet18 layer4 weight gradient of 8 replicates is 75 MB). glibc's malloc serves every block over
its mmap threshold (dynamic, at most 32 MB) by a fresh `mmap` and unmaps it on free, and gives a
freed heap top back to the OS above its trim threshold; each such tensor is then page-faulted in
and zeroed afresh on every use. On resnet18 (8 replicates × 8 inputs at 64×64) one vmapped call
took 280–410 thousand minor page faults and 1.5× the loop's CPU time, the loop none.
`retained()` sets M_MMAP_MAX = 0 (every block from the heap, reused after free) and
M_TRIM_THRESHOLD = 2³¹ − 1 (no trimming) for the measurement, then puts glibc's defaults back
(M_MMAP_MAX = 65536, M_TRIM_THRESHOLD = 128 KiB) and returns the free memory with
`malloc_trim(0)`. Elsewhere (no glibc: macOS, Windows, musl) it does nothing.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import platform
from collections.abc import Iterator

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
#: glibc's defaults (malloc/malloc.c: DEFAULT_MMAP_MAX, DEFAULT_TRIM_THRESHOLD)
DEFAULT_MMAP_MAX, DEFAULT_TRIM_THRESHOLD = 65536, 128 * 1024
#: the largest trim threshold mallopt takes (its value is a C int)
NO_TRIM = 2**31 - 1


def _glibc() -> ctypes.CDLL | None:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
        return libc
    except (OSError, AttributeError):
        return None


@contextlib.contextmanager
def retained() -> Iterator[str]:
    """While inside: freed blocks stay in the process for reuse (M_MMAP_MAX = 0, M_TRIM_THRESHOLD
    = 2³¹ − 1); afterwards glibc's defaults and malloc_trim(0). Yields what it did ("glibc heap
    retained" or "unchanged (no glibc)"), which the probe's metadata records."""
    libc = _glibc()
    if libc is None or not (libc.mallopt(M_MMAP_MAX, 0) and libc.mallopt(M_TRIM_THRESHOLD, NO_TRIM)):
        yield "unchanged (no glibc)"
        return
    try:
        yield "glibc heap retained"
    finally:
        libc.mallopt(M_MMAP_MAX, DEFAULT_MMAP_MAX)
        libc.mallopt(M_TRIM_THRESHOLD, DEFAULT_TRIM_THRESHOLD)
        libc.malloc_trim(0)
