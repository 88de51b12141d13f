"""The generic driver of an ensemble: seeds, draws, chunks, statistics to the host.

`measure` runs spec.replicates networks in chunks that fit spec.memory_budget_mb (the
architecture says how many bytes a replicate needs). Every replicate draws its weights, biases,
inputs and cotangents from its own random stream (`replicate_seed`), so its numbers do not
depend on the chunking, the thread count or the replicate count. The chunk's R members then go
through the architecture's batched propagation (`harness.archs`: one batched matmul or grouped
conv per layer, the backward pass written out); schemes that calibrate on data (lsuv) adjust the
sampled weights first (`harness.sim.lsuv`), and with jacobian=k the architecture's Jacobian pass
follows. Statistics stay on the device as (R, L) tensors and reach the host once per run.
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from harness.archs.base import POSITION
from harness.core.init import draw_, iid_form, init_
from harness.core.init import scheme as scheme_entry
from harness.core.spec import Spec
from harness.sim import chunks, lsuv, memory, workspace
from harness.sim.inputs import Generators, inputs_, streams
from harness.sim.inputs import fill as fill_streams
from harness.sim.regen import RegeneratedWeights
from harness.sim.workspace import Workspace

#: the progress bar: layer passes done of all, elapsed, ETA, layers per second
BAR_FORMAT = ("{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} layer passes "
              "[{elapsed} elapsed, ETA {remaining}, {rate_fmt}]")


@dataclass(frozen=True)
class Measurement:
    """Per-replicate statistics: quantity -> array (R, layers); activation has L-1 layers.

    positions (architectures with positions, e.g. arch=conv): forward, backward -> array
    (R, L, *S), pooled over channels × inputs at each position; empty otherwise.
    """

    values: dict[str, np.ndarray]
    wall_s: float
    chunk_size: int
    device_name: str
    positions: dict[str, np.ndarray] = field(default_factory=dict)
    #: data-dependent facts of the draw: for lsuv, "lsuv" (iterations, realized gains) and
    #: "weight_variances" (Var(W^l) at LSUV's mean-field gains, which the theory then uses);
    #: with jacobian=k, "jacobian_spectrum": the eigenvalues of J^Lᵀ J^L, (R, k, n_0)
    info: dict[str, Any] = field(default_factory=dict)


def bytes_per_replicate(spec: Spec) -> int:
    """Peak bytes one replicate needs, as its architecture counts them (its weights, saved
    activations, working buffers; `harness.archs.base.Architecture.bytes_per_replicate`)."""
    return spec.architecture.bytes_per_replicate(spec)


def chunk_size(spec: Spec) -> int:
    """Replicates per chunk so that one chunk stays under spec.memory_budget_mb (at least 1),
    on the path `harness.sim.memory.plan` chooses."""
    return memory.plan(spec).chunk


@functools.cache
def device_name(device: str) -> str:
    """A readable name of the device (the GPU's name, or the CPU and its thread count)."""
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    import platform

    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def replicate_seed(seed: int, replicate: int) -> int:
    """The seed of replicate r's own random stream: a SeedSequence hash of (seed, r), so that
    replicate r draws the same network whatever the chunking, thread count or replicate count."""
    state = np.random.SeedSequence([seed, replicate]).generate_state(2, dtype=np.uint32)
    return int(state[0]) << 31 | int(state[1]) >> 1


def replicate_generators(spec: Spec, start: int, r: int) -> list[torch.Generator]:
    """One generator per replicate start..start+r-1, on the run's device."""
    return [torch.Generator(device=spec.device).manual_seed(replicate_seed(spec.seed, start + i))
            for i in range(r)]


def sample_chunk(
    spec: Spec, r: int, generator: Generators, workspace: Workspace | None = None
) -> tuple[list[torch.Tensor], list[torch.Tensor] | None, torch.Tensor, torch.Tensor]:
    """Draw r members' weights (and biases), their inputs x^0 and cotangents r.

    Each stream (the one generator, or each replicate's own) draws, in order: every layer's
    weights, every layer's biases (if bias_std > 0), the inputs, the cotangents. With a
    `workspace` the tensors are views of its reused buffers (valid until its next use)."""
    ws = workspace if workspace is not None else Workspace()

    def empty(name: str, shape: tuple[int, ...]) -> torch.Tensor:
        return ws.take(name, shape, spec.torch_dtype, spec.device)

    init_kwargs = spec.init_kwargs()
    forms = [iid_form(spec.scheme, shape, **init_kwargs) for shape in spec.weight_shapes]
    flat = None
    if all(f is not None for f in forms) and len({f[0] for f in forms}) == 1:
        # iid entries: every layer of a member from ONE draw of standard variates (one call per
        # stream instead of one per layer), each layer's view then scaled by its own scale
        sizes = [math.prod(shape) for shape in spec.weight_shapes]
        flat = empty("weights", (r, sum(sizes)))
        offsets = np.cumsum([0, *sizes[:-1]]).tolist()
        weights = [flat[:, o : o + n].view(r, *shape)
                   for o, n, shape in zip(offsets, sizes, spec.weight_shapes, strict=True)]
    else:
        weights = [empty(f"weight{l}", (r, *shape)) for l, shape in enumerate(spec.weight_shapes)]
    biases = ([empty(f"bias{l}", (r, shape[0])) for l, shape in enumerate(spec.weight_shapes)]
              if spec.bias_std > 0 else None)
    x0 = empty("x0", (r, spec.batch, spec.widths[0], *spec.spatial))
    cot = empty("cotangent", (r, spec.batch, spec.widths[-1], *spec.spatial))

    # one scale for every layer (square stacks): drawn at that scale, no separate scaling pass
    common = forms[0][1] if flat is not None and len({f[1] for f in forms}) == 1 else None

    def fill(sl: slice, g: torch.Generator) -> None:
        if flat is not None:
            draw_(flat[sl], forms[0][0], 1.0 if common is None else common, generator=g)
        else:
            for W in weights:
                init_(W[sl], spec.scheme, generator=g, **init_kwargs)
        for b in biases or ():
            b[sl].normal_(0.0, spec.bias_std, generator=g)
        inputs_(x0[sl], spec, g)
        cot[sl].normal_(generator=g)

    fill_streams(streams(r, generator), fill)
    if flat is not None and common is None:
        for W, (_, scale) in zip(weights, forms, strict=True):
            W.mul_(scale)
    if spec.ws:
        for W in weights:
            standardize_(W, 1.0 if spec.gain is None else spec.gain)
    layer_scales = spec.layer_scales()  # e.g. scheme=fixup's branch factors (None: all 1)
    for W, s in zip(weights, layer_scales or (), strict=False):
        if s != 1.0:
            W.mul_(s)
    return weights, biases, x0, cot


def standardize_(W: torch.Tensor, gain: float) -> torch.Tensor:
    """Scaled weight standardization in place (Qiao et al. 2019; Brock et al. 2021), per member
    and output unit i of W (R, out, *rest): W_i ← gain · (W_i − mean W_i) / (std W_i · √fan_in),
    fan_in = ∏rest, std the population one; a row of zeros stays zero. Then Σ_j W_ij² = gain²."""
    flat = W.view(W.shape[0], W.shape[1], -1)
    mean = flat.mean(-1, keepdim=True)
    std = flat.var(-1, unbiased=False, keepdim=True).sqrt_()
    scale = torch.where(std > 0, gain / (std * math.sqrt(flat.shape[-1])), 0.0)
    flat.sub_(mean).mul_(scale)
    return W


@torch.no_grad()
def measure(spec: Spec, progress: bool = True, chunks_dir: Path | None = None) -> Measurement:
    """Run the whole ensemble of spec.replicates networks in chunks; statistics per replicate.

    The chunks' tensors come from this thread's `harness.sim.workspace` (kept for the next run;
    `harness.sim.workspace.release()` frees it). With `chunks_dir`, each finished chunk's
    statistics are written there and a chunk already stored there by the same spec is read
    instead of computed (`harness.sim.chunks`: a killed run resumes); schemes that calibrate on
    data (lsuv) keep their calibration in memory only, so they do not stream."""
    start = time.perf_counter()
    plan = memory.preflight(spec)  # one replicate must fit the budget and the device: else one line
    size = plan.chunk
    n_chunks = math.ceil(spec.replicates / size)
    parts: list[dict[str, torch.Tensor]] = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        # one step per layer and pass (forward, backward) of each chunk: layers/s and the ETA
        bar = tqdm(total=2 * spec.depth * n_chunks, desc="layers", unit="layer", leave=False,
                   bar_format=BAR_FORMAT)
    arch = spec.architecture
    ws = workspace.current()  # this thread's buffers, reused from run to run
    calibrations, spectra = [], []
    calibrates = scheme_entry(spec.scheme).calibrates_on_data  # lsuv: rescale on a fresh batch
    stream = chunks_dir if not calibrates else None
    for c in range(n_chunks):
        r = min(size, spec.replicates - c * size)
        stored = chunks.load(stream, spec, c * size, r) if stream is not None else None
        if stored is not None:  # finished by an earlier, killed process: the same numbers
            parts.append(stored.stats)
            if stored.spectrum is not None:
                spectra.append(stored.spectrum)
            if bar is not None:
                bar.update(2 * spec.depth)
            continue
        generator = replicate_generators(spec, c * size, r)
        spectrum = None
        if plan.recompute:  # low-memory path (harness.sim.memory): the same numbers
            assert plan.segment is not None
            lazy = RegeneratedWeights(spec, r, generator, plan.segment, ws)
            parts.append(arch.propagate_recompute(spec, lazy, lazy.biases, lazy.x0, lazy.cotangent,
                                                  plan.segment, tick=bar.update if bar else None,
                                                  workspace=ws))
            del lazy
        else:
            weights, biases, x0, cot = sample_chunk(spec, r, generator, ws)
            if calibrates:
                calibrations.append(arch.calibrate(spec, weights, biases, generator))
            parts.append(arch.propagate(spec, weights, biases, x0, cot,
                                        tick=bar.update if bar else None, workspace=ws))
            if spec.jacobian:
                jac, eig = arch.jacobian(spec, weights, biases, x0[:, : spec.jacobian])
                parts[-1].update(jac)
                spectrum = eig.to("cpu", torch.float64).numpy()
                spectra.append(spectrum)
            del weights, biases, x0, cot
        if stream is not None:
            parts[-1] = chunks.as_stats(parts[-1])
            chunks.save(stream, spec, c * size, chunks.Chunk(parts[-1], spectrum))
    if bar is not None:
        bar.close()
    info: dict[str, Any] = {}
    if calibrations:
        info = lsuv.collect(spec, calibrations)
    if spectra:  # the last layer's squared singular values, (R, k, n_0)
        info["jacobian_spectrum"] = np.concatenate(spectra, 0)
    # one device-to-host copy for all statistics
    keys = list(parts[0])
    flat = torch.cat([torch.cat([p[k] for p in parts], 0).flatten(1) for k in keys], 1)
    host = flat.to("cpu", torch.float64).numpy()
    values, positions, col = {}, {}, 0
    for k in keys:
        shape = parts[0][k].shape[1:]
        n = math.prod(shape)
        v = host[:, col : col + n]
        col += n
        if k.startswith(POSITION):  # (R, L, P) -> (R, L, *S)
            positions[k.removeprefix(POSITION)] = v.reshape(-1, spec.depth, *spec.spatial)
        else:
            values[k] = v
    return Measurement(values, time.perf_counter() - start, size, device_name(spec.device),
                       positions, info)
