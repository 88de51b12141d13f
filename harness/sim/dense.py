"""The dense layer map of a stacked MLP ensemble and the one forward loop over its layers.

Shapes: R replicates, B inputs, n units. Layer l of every member at once:

    h^l = x^{l-1} (W^l)ᵀ + b^l   (R, B, n_l),    x^l = φ(h^l)  for l < L,   x^0 the inputs.

Three passes walk this loop: the MLP's statistics (`harness.archs.mlp.propagate`), the exact
Jacobian (`harness.sim.jacobian`) and LSUV's calibration (`harness.sim.lsuv`). `forward` yields
each layer to its caller, which reads h^l (and may replace it) before φ is applied.

With a bias the runner adds it inside the matmul (torch.baddbmm, `fused=True`), the Jacobian and
LSUV passes after it (bmm, then +). The two round differently in the last bit (the BLAS kernel
accumulates the bias with the first block of the sum), so each pass keeps its own form: the
harness's numbers stay the same as they were.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch

from harness.core.activations import Activation


def affine(
    x: torch.Tensor,
    W: torch.Tensor,
    b: torch.Tensor | None = None,
    *,
    fused: bool = True,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """h = x Wᵀ + b per member: x (R, B, n_in), W (R, n_out, n_in), b (R, n_out) or None;
    returns (R, B, n_out), into `out` if given. `fused`: the bias inside the matmul (baddbmm),
    else added after it (module doc)."""
    if b is None:
        return torch.bmm(x, W.transpose(1, 2), out=out)
    if fused:
        return torch.baddbmm(b.unsqueeze(1), x, W.transpose(1, 2), out=out)
    h = torch.bmm(x, W.transpose(1, 2), out=out)
    h += b.unsqueeze(1)
    return h


@dataclass
class Layer:
    """Layer l (0-based) of `forward`: its input x = x^{l-1}, pre-activation h = h^l. A caller
    may replace h (LSUV after rescaling W^l); φ then applies to the new one."""

    index: int
    x: torch.Tensor
    h: torch.Tensor


def forward(
    weights: Sequence[torch.Tensor],
    biases: Sequence[torch.Tensor] | None,
    x0: torch.Tensor,
    act: Activation,
    *,
    fused: bool = True,
    out: Callable[[int, int], torch.Tensor] | None = None,
    in_place: bool = False,
) -> Iterator[Layer]:
    """Yield every layer l = 0..L-1 of h^l = x^{l-1} (W^l)ᵀ + b^l, x^l = φ(h^l) (module doc).

    Args:
        weights: L tensors (R, n_l, n_{l-1}).  biases: L tensors (R, n_l), or None.
        x0: inputs (R, B, n_0).  fused: how the bias is added (`affine`).
        out: out(l, n_l) -> the buffer h^l is written into (default: fresh memory).
        in_place: apply φ in place (h's buffer then holds x^l) where the activation's backward
            reads its output (Activation.saves_output); else x^l is a new tensor.
    """
    L = len(weights)
    x = x0
    for l, W in enumerate(weights):
        b = None if biases is None else biases[l]
        layer = Layer(l, x, affine(x, W, b, fused=fused, out=None if out is None else out(l, W.shape[1])))
        yield layer
        if l < L - 1:
            x = act.phi_(layer.h) if in_place and act.saves_output else act.phi(layer.h)
