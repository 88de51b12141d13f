"""How a run uses memory: the stored or the low-memory path, the chunk size, and the preflight.

One replicate of the stored path needs its architecture's `bytes_per_replicate` (every layer's
weights and saved activations: O(depth · width²) for an MLP). When that exceeds
`memory_budget_mb` and the architecture has a low-memory path (`Architecture.recompute_bytes`:
weights regenerated from the streams, `harness.sim.regen`, and activations checkpointed every k
layers and recomputed in between), the run takes it, with the k that minimizes its bytes per
replicate; the numbers are the same (bitwise on the CPU). Chunks then hold as many replicates as
the budget allows.

`preflight` (called by the CLI's validation before anything is written, and by
`harness.sim.runner.measure` before any work) stops a run whose ONE
replicate does not fit the budget or the device's available memory, with a one-line
`ConfigError`: how much it needs, how much is available, which keys reduce it. (The results
frame's size is the outputs' check: `harness.outputs.results.check_frame`.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from harness.core.resources import available_bytes, size
from harness.core.validate import ConfigError
from harness.sim import regen

if TYPE_CHECKING:  # type hints only
    from harness.core.spec import Spec

@dataclass(frozen=True)
class Plan:
    """recompute: the low-memory path; segment: its k (layers between checkpoints, None on the
    stored path); bytes: one replicate's peak bytes on that path; chunk: replicates per chunk."""

    recompute: bool
    segment: int | None
    bytes: int
    chunk: int


def _budget(spec: Spec) -> float:
    return spec.memory_budget_mb * 2**20


def best_segment(spec: Spec) -> tuple[int, int] | None:
    """(k, bytes) minimizing the low-memory path's bytes per replicate over k = 1..L (about
    √(L·B·n / (2n² + B·n)) for a square MLP), or None where it is not available."""
    arch = spec.architecture
    if regen.why_not(spec) or arch.recompute_bytes(spec, 1) is None:
        return None
    L = spec.depth
    ks = range(1, L + 1) if L <= 2000 else sorted({int(k) for k in torch.logspace(0, math.log10(L), 400)})
    costs = [(int(arch.recompute_bytes(spec, k) or 0), k) for k in ks]
    b, k = min(costs)
    return k, b


def plan(spec: Spec) -> Plan:
    """The stored path if one replicate fits `memory_budget_mb` (or no low-memory path exists),
    else the low-memory path at its best k; chunk = ⌊budget / bytes⌋ clamped to [1, R]."""
    stored = spec.architecture.bytes_per_replicate(spec)
    recompute, segment, need = False, None, stored
    if stored > _budget(spec):
        best = best_segment(spec)
        if best is not None and best[1] < stored:
            recompute, (segment, need) = True, best
    chunk = max(1, min(spec.replicates, int(_budget(spec) // max(need, 1))))
    return Plan(recompute, segment, need, chunk)


def preflight(spec: Spec, available: int | None = None) -> Plan:
    """The run's `plan`; ConfigError (one line) if one replicate needs more than the budget or
    than the device's available memory (`available`, default `available_bytes`)."""
    p = plan(spec)
    free = available_bytes(spec.device) if available is None else available
    over_budget = p.bytes > _budget(spec)
    over_free = free is not None and p.bytes > free
    if not (over_budget or over_free):
        return p
    arch = spec.architecture
    have = [f"memory_budget_mb={spec.memory_budget_mb:g} allows {size(_budget(spec))}"]
    if free is not None:
        have.append(f"{spec.device} has {size(free)} available")
    keys = ", ".join(arch.memory_keys)
    raise_hint = "" if over_free else " (or raise memory_budget_mb)"
    why = regen.why_not(spec)
    low = (f"; no low-memory path: {why}" if why and arch.recompute_bytes(spec, 1) is not None
           else " even with weights regenerated and activations recomputed" if p.recompute else "")
    raise ConfigError(
        f"one replicate of this run needs {size(p.bytes)}{low}, but {' and '.join(have)}; "
        f"reduce {keys}{raise_hint}"
    )
