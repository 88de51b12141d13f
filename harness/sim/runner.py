"""The batched ensemble: forward and backward through R networks at once, with statistics.

All R members of a chunk go through each layer as one batched matmul over a leading replicate
dimension (shapes in comments: R replicates, B inputs, n units). The backward pass is written
out (δ^l = φ'(h^l) ⊙ δ^{l+1} W^{l+1}), so no weight gradient is ever formed; the per-example
weight-gradient moment uses

    mean_{b,i,j} (δ_bi x_bj)² = mean_b[ mean_i δ_bi² · mean_j x_bj² ]

(docs/theory.md, "The network and the measured quantities"), so per-example gradients are never
materialized either. Statistics stay on the device as (R, L) tensors and reach the host once per
run. Conv stacks (arch=conv) go through `harness.archs.conv.propagate` instead: one grouped conv
per layer, with per-position statistics.

`correlation` is the mean cosine similarity of the pre-activations h^l_a, h^l_b of distinct
inputs a ≠ b of one network, from one sum: with u_b = h_b/‖h_b‖,
Σ_{a≠b} cos(h_a, h_b) = ‖Σ_b u_b‖² − Σ_b ‖u_b‖² (measured when batch ≥ 2). Schemes that
calibrate on data (lsuv) adjust the sampled weights in `harness.sim.lsuv` before the measurement.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from harness.archs import conv
from harness.core.activations import Activation
from harness.core.init import draw_, iid_form, init_
from harness.core.spec import Spec
from harness.sim import jacobian, workspace
from harness.sim.workspace import Workspace

Tick = Callable[[], object]


@dataclass(frozen=True)
class Measurement:
    """Per-replicate statistics: quantity -> array (R, layers); activation has L-1 layers.

    positions (arch=conv): forward, backward -> array (R, L, *S), pooled over channels × inputs
    at each position; empty for an MLP.
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


def mean_cosine(h: torch.Tensor, sq_norm: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over pairs a ≠ b of cos(h_a, h_b) for h (R, B, n): (R,). `sq_norm` (R, B) may pass
    the precomputed ‖h_b‖².

    Inputs whose h is exactly 0 (a dead relu layer at tiny width) have no direction and are
    left out; nan when fewer than two remain.
    """
    if sq_norm is None:
        sq_norm = h.square().sum(-1)
    alive = sq_norm > 0  # (R, B)
    inv = torch.where(alive, sq_norm.clamp(min=torch.finfo(h.dtype).tiny).rsqrt(), 0.0)
    s = torch.bmm(inv.unsqueeze(1), h).squeeze(1)  # Σ_b h_b/‖h_b‖, (R, n)
    k = alive.sum(1).to(h.dtype)  # inputs with a direction, (R,)
    total = s.square().sum(-1) - k  # Σ_{a≠b} u_a·u_b, (R,)
    return torch.where(k >= 2, total / (k * (k - 1)).clamp(min=1), torch.nan)


def propagate(
    weights: Sequence[torch.Tensor],
    biases: Sequence[torch.Tensor] | None,
    x0: torch.Tensor,
    cotangent: torch.Tensor,
    act: Activation,
    tick: Tick | None = None,
    workspace: Workspace | None = None,
) -> dict[str, torch.Tensor]:
    """Forward and backward through a stacked MLP ensemble; per-replicate pooled moments.

    Args:
        weights: L tensors (R, n_l, n_{l-1}).  biases: L tensors (R, n_l), or None.
        x0: inputs (R, B, n_0).  cotangent: r = ∂loss/∂y, (R, B, n_L).

    Returns (R, L) tensors (activation: (R, L-1)), for l = 1..L:
        forward = mean (h^l)²,  activation = mean φ(h^l)² (l < L),  backward = mean (δ^l)²,
        weight_grad = mean_b[mean_i (δ^l_bi)² · mean_j (x^{l-1}_bj)²],
        correlation = mean_{a≠b} cos(h^l_a, h^l_b) (only when B ≥ 2).

    With a `workspace` the saved activations and the δ buffers come from it (reused memory;
    `harness.sim.workspace`), else they are allocated here.
    """
    L = len(weights)
    R = x0.shape[0]
    stat = dict(
        forward=x0.new_empty(R, L),
        activation=x0.new_empty(R, L - 1),
        backward=x0.new_empty(R, L),
        weight_grad=x0.new_empty(R, L),
    )
    if x0.shape[1] >= 2:
        stat["correlation"] = x0.new_empty(R, L)
    x_sq: list[torch.Tensor] = []  # mean_j (x^{l-1}_bj)², (R, B)
    # what the backward pass needs of layer l < L: x^l = φ(h^l) where φ's backward kernel reads
    # its output (relu, tanh, sigmoid, elu, selu: φ is then applied in place, and the saved
    # buffer is also the next layer's input), else h^l; δ^l = φ'(h^l) ⊙ (…) is then one fused
    # kernel (Activation.backward_), with no φ' tensor formed
    saved: list[torch.Tensor | None] = []
    B, n_max = x0.shape[1], max(W.shape[1] for W in weights)
    ws = workspace if workspace is not None else Workspace()  # a throwaway one: fresh memory
    # two ping-pong buffers hold the readout h^L and then δ^l: no allocation (and no first-touch
    # page faults) per layer
    buf = [ws.take(f"h{i}", (R * B * n_max,), x0.dtype, x0.device) for i in (0, 1)]

    def slot(i: int, n: int) -> torch.Tensor:
        return buf[i % 2][: R * B * n].view(R, B, n)

    x = x0
    xs = _mean_sq_rows(x0)
    for l, W in enumerate(weights):
        x_sq.append(xs)
        n = W.shape[1]
        h = ws.take(f"saved{l}", (R, B, n), x0.dtype, x0.device) if l < L - 1 else slot(l, n)
        if biases is not None:
            torch.baddbmm(biases[l].unsqueeze(1), x, W.transpose(1, 2), out=h)
        else:
            torch.bmm(x, W.transpose(1, 2), out=h)
        sq_norm = torch.linalg.vector_norm(h, dim=-1).square()  # ‖h_b‖², (R, B)
        stat["forward"][:, l] = sq_norm.mean(-1) / h.shape[-1]
        if "correlation" in stat:
            stat["correlation"][:, l] = mean_cosine(h, sq_norm)
        if l < L - 1:
            if act.saves_output:
                x = act.phi_(h)  # in place: h's buffer now holds x^l, kept for the backward
                saved.append(x)
            else:
                saved.append(h)
                x = act.phi(h)
            xs = _mean_sq_rows(x)  # the next layer's input moment is this layer's activation's
            stat["activation"][:, l] = xs.mean(-1)
        if tick is not None:
            tick()
    delta = cotangent  # δ^L = r: the readout is linear
    for l in range(L - 1, -1, -1):
        if l < L - 1:
            out = slot(l, weights[l + 1].shape[2])
            delta = torch.bmm(delta, weights[l + 1], out=out)  # (R, B, n_l)
            act.backward_(delta, saved[l])  # δ^l ⊙= φ'(h^l)
            saved[l] = None
        d_sq = _mean_sq_rows(delta)  # mean_i δ_bi², (R, B)
        stat["backward"][:, l] = d_sq.mean(-1)
        stat["weight_grad"][:, l] = (d_sq * x_sq[l]).mean(-1)
        if tick is not None:
            tick()
    return stat


def _mean_sq_rows(t: torch.Tensor) -> torch.Tensor:
    """mean over the last dim of t², in one pass without a t-sized temporary: (R, B)."""
    return torch.linalg.vector_norm(t, dim=-1).square_().div_(t.shape[-1])


def bytes_per_replicate(spec: Spec) -> int:
    """Peak bytes one replicate needs: its weights, the saved φ'(h), and a few activations."""
    if spec.is_conv:
        return conv.bytes_per_replicate(spec)
    item = torch.empty((), dtype=spec.torch_dtype).element_size()
    weights = sum(math.prod(s) for s in spec.weight_shapes)
    saved = spec.batch * sum(spec.widths[1:-1])
    working = 4 * spec.batch * max(spec.widths)
    jac = jacobian.bytes_per_replicate(spec.jacobian, spec.widths, item) if spec.jacobian else 0
    return item * (weights + saved + working + (spec.depth + 1) * spec.batch) + jac


def chunk_size(spec: Spec) -> int:
    """Replicates per chunk so that one chunk stays under spec.memory_budget_mb (at least 1)."""
    budget = spec.memory_budget_mb * 2**20
    return max(1, min(spec.replicates, int(budget // bytes_per_replicate(spec))))


@functools.cache
def device_name(device: str) -> str:
    """A readable name of the device (the GPU's name, or the CPU and its thread count)."""
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    import platform

    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


#: a single generator (one stream for the whole chunk) or one generator per replicate
Generators = torch.Generator | Sequence[torch.Generator]


def replicate_seed(seed: int, replicate: int) -> int:
    """The seed of replicate r's own random stream: a SeedSequence hash of (seed, r), so that
    replicate r draws the same network whatever the chunking, thread count or replicate count."""
    state = np.random.SeedSequence([seed, replicate]).generate_state(2, dtype=np.uint32)
    return int(state[0]) << 31 | int(state[1]) >> 1


def replicate_generators(spec: Spec, start: int, r: int) -> list[torch.Generator]:
    """One generator per replicate start..start+r-1, on the run's device."""
    return [torch.Generator(device=spec.device).manual_seed(replicate_seed(spec.seed, start + i))
            for i in range(r)]


def _streams(r: int, generator: Generators) -> list[tuple[slice, torch.Generator]]:
    if isinstance(generator, torch.Generator):
        return [(slice(0, r), generator)]
    if len(generator) != r:
        raise ValueError(f"need one generator per replicate: {r}, got {len(generator)}")
    return [(slice(i, i + 1), g) for i, g in enumerate(generator)]


def _fill(
    streams: list[tuple[slice, torch.Generator]], fill: Callable[[slice, torch.Generator], object]
) -> None:
    """Call fill(slice, generator) for every stream, on up to torch.get_num_threads() threads
    (torch's random-number kernels are single-threaded and release the GIL, so independent
    streams fill in parallel; each stream's draws stay in order, so the numbers do not depend
    on the thread count)."""
    workers = min(len(streams), torch.get_num_threads())
    if workers <= 1:
        for sl, g in streams:
            fill(sl, g)
        return
    with ThreadPoolExecutor(workers) as pool:
        for f in [pool.submit(fill, sl, g) for sl, g in streams]:
            f.result()


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
    biases = ([empty(f"bias{l}", (r, n)) for l, n in enumerate(spec.widths[1:])]
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
        _inputs_(x0[sl], spec, g)
        cot[sl].normal_(generator=g)

    _fill(_streams(r, generator), fill)
    if flat is not None and common is None:
        for W, (_, scale) in zip(weights, forms, strict=True):
            W.mul_(scale)
    return weights, biases, x0, cot


def _inputs_(x0: torch.Tensor, spec: Spec, generator: torch.Generator) -> None:
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
    _fill(_streams(r, generator), lambda sl, g: _inputs_(x0[sl], spec, g))
    return x0


@torch.no_grad()
def measure(spec: Spec, progress: bool = True) -> Measurement:
    """Run the whole ensemble of spec.replicates networks in chunks; statistics per replicate.

    The chunks' tensors come from this thread's `harness.sim.workspace` (kept for the next run;
    `harness.sim.workspace.release()` frees it)."""
    start = time.perf_counter()
    size = chunk_size(spec)
    n_chunks = math.ceil(spec.replicates / size)
    parts: list[dict[str, torch.Tensor]] = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=2 * spec.depth * n_chunks, desc="layers", unit="layer", leave=False)
    act = spec.activation
    run = functools.partial(conv.propagate, padding_mode=spec.padding_mode) if spec.is_conv else propagate
    # the MLP path reuses this thread's buffers from run to run (harness.sim.workspace)
    ws = workspace.current()
    kw = {} if spec.is_conv else {"workspace": ws}
    calibrations, spectra = [], []
    for c in range(n_chunks):
        r = min(size, spec.replicates - c * size)
        generator = replicate_generators(spec, c * size, r)
        weights, biases, x0, cot = sample_chunk(spec, r, generator, ws)
        if spec.scheme == "lsuv":  # rescale the weights on a fresh calibration batch
            from harness.sim import lsuv

            calibrations.append(lsuv.calibrate_spec(spec, weights, biases, generator))
        parts.append(run(weights, biases, x0, cot, act, tick=bar.update if bar else None, **kw))
        if spec.jacobian:
            jac, eig = jacobian.propagate(weights, biases, x0[:, : spec.jacobian], act,
                                          spectrum=True)
            parts[-1].update(jac)
            spectra.append(eig.to("cpu", torch.float64).numpy())
        del weights, biases, x0, cot
    if bar is not None:
        bar.close()
    info: dict[str, Any] = {}
    if calibrations:
        from harness.sim import lsuv

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
        if k.startswith(conv.POSITION):  # (R, L, P) -> (R, L, *S)
            positions[k.removeprefix(conv.POSITION)] = v.reshape(-1, spec.depth, *spec.spatial)
        else:
            values[k] = v
    return Measurement(values, time.perf_counter() - start, size, device_name(spec.device),
                       positions, info)
