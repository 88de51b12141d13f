"""Random streams and the inputs of an ensemble: one generator per replicate (or one for a chunk).

Every member's inputs are x_b = √q_0 (√c z + √(1−c) z_b), z and z_b iid N(0, I): E[x²] = q_0 =
input_var and every pair of inputs has correlation c = input_corr. Used by the runner's sampler
(`harness.sim.runner.sample_chunk`) and by LSUV's calibration batch (`harness.sim.lsuv`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:  # type hints only: Spec asks the architecture registry, which uses this module
    from harness.core.spec import Spec

#: a single generator (one stream for the whole chunk) or one generator per replicate
Generators = torch.Generator | Sequence[torch.Generator]


def streams(r: int, generator: Generators) -> list[tuple[slice, torch.Generator]]:
    """(replicates, generator) pairs of a chunk of r: all r on the one generator, or replicate i
    on generator i."""
    if isinstance(generator, torch.Generator):
        return [(slice(0, r), generator)]
    if len(generator) != r:
        raise ValueError(f"need one generator per replicate: {r}, got {len(generator)}")
    return [(slice(i, i + 1), g) for i, g in enumerate(generator)]


def fill(
    parts: list[tuple[slice, torch.Generator]], fn: Callable[[slice, torch.Generator], object]
) -> None:
    """Call fn(slice, generator) for every stream of `parts`, on up to
    torch.get_num_threads() threads (torch's random-number kernels are single-threaded and
    release the GIL, so independent streams fill in parallel; each stream's draws stay in
    order, so the numbers do not depend on the thread count)."""
    workers = min(len(parts), torch.get_num_threads())
    if workers <= 1:
        for sl, g in parts:
            fn(sl, g)
        return
    with ThreadPoolExecutor(workers) as pool:
        for f in [pool.submit(fn, sl, g) for sl, g in parts]:
            f.result()


def inputs_(x0: torch.Tensor, spec: Spec, generator: torch.Generator) -> None:
    """Fill x0 (r, batch, n_0, *spatial) in place: x_b = √q_0 (√c z + √(1−c) z_b)."""
    x0.normal_(0.0, math.sqrt(spec.input_var), generator=generator)
    if spec.input_corr > 0:
        shared = torch.empty((x0.shape[0], 1, *x0.shape[2:]), dtype=x0.dtype, device=x0.device)
        shared.normal_(0.0, math.sqrt(spec.input_var), generator=generator)
        x0.mul_(math.sqrt(1.0 - spec.input_corr)).add_(shared, alpha=math.sqrt(spec.input_corr))


def draw_inputs(spec: Spec, r: int, generator: Generators) -> torch.Tensor:
    """Inputs (r, batch, n_0, *spatial): x_b = √q_0 (√c z + √(1−c) z_b), z and z_b iid
    N(0, I), so E[x²] = q_0 = input_var and every pair of inputs has correlation c = input_corr."""
    x0 = torch.empty((r, spec.batch, spec.widths[0], *spec.spatial), dtype=spec.torch_dtype,
                     device=spec.device)
    fill(streams(r, generator), lambda sl, g: inputs_(x0[sl], spec, g))
    return x0
