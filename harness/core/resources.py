"""The machine's free memory, and byte counts for messages (the memory preflight's and the
results frame's, `harness.sim.memory`, `harness.outputs.results.check_frame`)."""

from __future__ import annotations

from pathlib import Path

import torch

MEMINFO = Path("/proc/meminfo")


def available_bytes(device: str) -> int | None:
    """Memory a run may still take: CUDA's free device memory (torch.cuda.mem_get_info), or
    on the CPU /proc/meminfo's MemAvailable; None where neither can be read."""
    if device.startswith("cuda"):
        try:
            return int(torch.cuda.mem_get_info(torch.device(device))[0])
        except (RuntimeError, AssertionError):
            return None
    try:
        for line in MEMINFO.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def size(n: float) -> str:
    """n bytes in words: "1.5 GiB"."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n:.0f} B"
