"""Memory the runner reuses from one run to the next in the same thread.

A freshly allocated CPU tensor costs its first touch: the kernel maps and zeroes every page
(measured on this project's 2-core VM: ~1.4 µs per 4 KiB page, so writing a relu mask into a
fresh 2 MiB tensor took 312 µs against 65 µs into one already touched). One run's weights, saved
φ' and activation buffers are hundreds of MiB at width 256 and are allocated anew for every
chunk, so a sweep of runs in one process (or a benchmark's repeats) pays that again and again.
`Workspace.take` hands out views of named flat buffers kept between runs (grown when too small,
never shrunk), per thread so that concurrent runs in threads never share one. The buffers hold
at most one chunk's memory (`memory_budget_mb`); `release()` frees them. Only memory placement
changes: results are bitwise the same with or without a workspace (tests compare them).
"""

from __future__ import annotations

import math
import threading

import torch


class Workspace:
    """Named flat buffers, one per (name, dtype, device), reused across runs."""

    def __init__(self) -> None:
        self._bufs: dict[tuple[str, torch.dtype, str], torch.Tensor] = {}

    def take(self, name: str, shape: tuple[int, ...], dtype: torch.dtype,
             device: str | torch.device) -> torch.Tensor:
        """An uninitialized tensor of `shape`: a view of buffer `name`, grown if too small.

        Two live views of one name alias each other; callers use distinct names for tensors
        that are alive together."""
        numel = math.prod(shape)
        key = (name, dtype, str(device))
        buf = self._bufs.get(key)
        if buf is None or buf.numel() < numel:
            self._bufs.pop(key, None)  # free the old one before the larger allocation
            buf = torch.empty(numel, dtype=dtype, device=device)
            self._bufs[key] = buf
        return buf[:numel].view(shape)

    def nbytes(self) -> int:
        """Bytes held."""
        return sum(b.numel() * b.element_size() for b in self._bufs.values())

    def clear(self) -> None:
        self._bufs.clear()


_local = threading.local()


def current() -> Workspace:
    """This thread's workspace."""
    ws = getattr(_local, "ws", None)
    if ws is None:
        ws = _local.ws = Workspace()
    return ws


def release() -> None:
    """Free this thread's workspace (the next run allocates afresh)."""
    current().clear()
