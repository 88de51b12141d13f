"""The batched ensemble: forward and backward through R networks at once, with statistics.

All R members of a chunk go through each layer as one batched matmul over a leading replicate
dimension (shapes in comments: R replicates, B inputs, n units). The backward pass is written
out (δ^l = φ'(h^l) ⊙ δ^{l+1} W^{l+1}), so no weight gradient is ever formed; the per-example
weight-gradient moment uses

    mean_{b,i,j} (δ_bi x_bj)² = mean_b[ mean_i δ_bi² · mean_j x_bj² ]

(THEORY.md), so per-example gradients are never materialized either. Statistics stay on the
device as (R, L) tensors and reach the host once per run. Conv stacks (arch=conv) go through
`harness.conv.propagate` instead: one grouped conv per layer, with per-position statistics.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from . import conv
from .activations import Activation
from .init import init_
from .spec import Spec

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


def propagate(
    weights: Sequence[torch.Tensor],
    biases: Sequence[torch.Tensor] | None,
    x0: torch.Tensor,
    cotangent: torch.Tensor,
    act: Activation,
    tick: Tick | None = None,
) -> dict[str, torch.Tensor]:
    """Forward and backward through a stacked MLP ensemble; per-replicate pooled moments.

    Args:
        weights: L tensors (R, n_l, n_{l-1}).  biases: L tensors (R, n_l), or None.
        x0: inputs (R, B, n_0).  cotangent: r = ∂loss/∂y, (R, B, n_L).

    Returns (R, L) tensors (activation: (R, L-1)), for l = 1..L:
        forward = mean (h^l)²,  activation = mean φ(h^l)² (l < L),  backward = mean (δ^l)²,
        weight_grad = mean_b[mean_i (δ^l_bi)² · mean_j (x^{l-1}_bj)²].
    """
    L = len(weights)
    R = x0.shape[0]
    stat = dict(
        forward=x0.new_empty(R, L),
        activation=x0.new_empty(R, L - 1),
        backward=x0.new_empty(R, L),
        weight_grad=x0.new_empty(R, L),
    )
    x_sq: list[torch.Tensor] = []  # mean_j (x^{l-1}_bj)², (R, B)
    dphi: list[torch.Tensor] = []  # φ'(h^l), (R, B, n_l), l < L
    x = x0
    for l, W in enumerate(weights):
        x_sq.append(x.square().mean(-1))
        if biases is not None:
            h = torch.baddbmm(biases[l].unsqueeze(1), x, W.transpose(1, 2))  # (R, B, n_l)
        else:
            h = torch.bmm(x, W.transpose(1, 2))  # (R, B, n_l)
        stat["forward"][:, l] = h.square().mean((1, 2))
        if l < L - 1:
            dphi.append(act.dphi(h))
            x = act.phi(h)
            stat["activation"][:, l] = x.square().mean((1, 2))
        if tick is not None:
            tick()
    delta = cotangent  # δ^L = r: the readout is linear
    for l in range(L - 1, -1, -1):
        if l < L - 1:
            delta = torch.bmm(delta, weights[l + 1]) * dphi[l]  # (R, B, n_l)
            dphi[l] = delta  # drop φ'(h^l): its memory now holds δ^l
        d_sq = delta.square()
        stat["backward"][:, l] = d_sq.mean((1, 2))
        stat["weight_grad"][:, l] = (d_sq.mean(-1) * x_sq[l]).mean(-1)
        if tick is not None:
            tick()
    return stat


def bytes_per_replicate(spec: Spec) -> int:
    """Peak bytes one replicate needs: its weights, the saved φ'(h), and a few activations."""
    if spec.is_conv:
        return conv.bytes_per_replicate(spec)
    item = torch.empty((), dtype=spec.torch_dtype).element_size()
    weights = sum(math.prod(s) for s in spec.weight_shapes)
    saved = spec.batch * sum(spec.widths[1:-1])
    working = 4 * spec.batch * max(spec.widths)
    return item * (weights + saved + working + (spec.depth + 1) * spec.batch)


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


def sample_chunk(
    spec: Spec, r: int, generator: torch.Generator
) -> tuple[list[torch.Tensor], list[torch.Tensor] | None, torch.Tensor, torch.Tensor]:
    """Draw r members' weights (and biases), their inputs x^0 and cotangents r."""
    kw = dict(dtype=spec.torch_dtype, device=spec.device)
    weights = [
        init_(
            torch.empty((r, *shape), **kw),
            spec.scheme,
            mode=spec.mode,
            nonlinearity=spec.nonlinearity or "leaky_relu",
            a=spec.a or 0.0,
            gain=spec.gain,
            generator=generator,
        )
        for shape in spec.weight_shapes
    ]
    biases = None
    if spec.bias_std > 0:
        biases = [
            torch.empty((r, n), **kw).normal_(0.0, spec.bias_std, generator=generator)
            for n in spec.widths[1:]
        ]
    x0 = torch.empty((r, spec.batch, spec.widths[0], *spec.spatial), **kw)
    x0.normal_(0.0, math.sqrt(spec.input_var), generator=generator)
    cot = torch.empty((r, spec.batch, spec.widths[-1], *spec.spatial), **kw)
    cot.normal_(generator=generator)
    return weights, biases, x0, cot


@torch.no_grad()
def measure(spec: Spec, progress: bool = True) -> Measurement:
    """Run the whole ensemble of spec.replicates networks in chunks; statistics per replicate."""
    start = time.perf_counter()
    generator = torch.Generator(device=spec.device).manual_seed(spec.seed)
    size = chunk_size(spec)
    n_chunks = math.ceil(spec.replicates / size)
    parts: list[dict[str, torch.Tensor]] = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=2 * spec.depth * n_chunks, desc="layers", unit="layer", leave=False)
    act = spec.activation
    run = functools.partial(conv.propagate, padding_mode=spec.padding_mode) if spec.is_conv else propagate
    for c in range(n_chunks):
        r = min(size, spec.replicates - c * size)
        weights, biases, x0, cot = sample_chunk(spec, r, generator)
        parts.append(run(weights, biases, x0, cot, act, tick=bar.update if bar else None))
        del weights, biases, x0, cot
    if bar is not None:
        bar.close()
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
                       positions)
