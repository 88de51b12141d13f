"""arch=mlp: stacks of dense layers, h^l = W^l x^{l-1} + b^l, x^l = φ(h^l), a linear readout.

All R members of a chunk go through each layer as one batched matmul over a leading replicate
dimension (shapes in comments: R replicates, B inputs, n units; the loop is
`harness.sim.dense.forward`). The backward pass is written out (δ^l = φ'(h^l) ⊙ δ^{l+1} W^{l+1}),
so no weight gradient is ever formed; the per-example weight-gradient moment uses

    mean_{b,i,j} (δ_bi x_bj)² = mean_b[ mean_i δ_bi² · mean_j x_bj² ],

so per-example gradients are never materialized either. Statistics stay on the device as (R, L)
tensors and reach the host once per run (`harness.sim.runner.measure`).

`correlation` is the mean cosine similarity of the pre-activations h^l_a, h^l_b of distinct
inputs a ≠ b of one network, from one sum: with u_b = h_b/‖h_b‖,
Σ_{a≠b} cos(h_a, h_b) = ‖Σ_b u_b‖² − Σ_b ‖u_b‖² (measured when batch ≥ 2).

Theory: the mean-field recursions of `harness.theory.meanfield.dense`, and with jacobian=k the
free-probability moments of `harness.sim.jacobian.predict`. Supports every capability but
positions (it has no space): jacobian, lsuv (`harness.sim.lsuv`), input_corr, criticality and
the finite-width band.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from harness.archs.base import Architecture, Tick
from harness.core import norms
from harness.core.activations import Activation
from harness.core.capabilities import CRITICALITY, FINITE_WIDTH_BAND, INPUT_CORR, JACOBIAN, LSUV, WS
from harness.sim import dense, jacobian, lsuv, regen
from harness.sim.workspace import Workspace
from harness.theory import meanfield

if TYPE_CHECKING:  # type hints only: Spec asks the registry, so the registry must not import it
    from harness.core.spec import Spec

#: what an MLP run measures (correlation needs batch ≥ 2)
QUANTITIES = ("forward", "activation", "backward", "weight_grad", "correlation")


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

    def out(l: int, n: int) -> torch.Tensor:  # h^l: kept for the backward (l < L) or the readout
        return ws.take(f"saved{l}", (R, B, n), x0.dtype, x0.device) if l < L - 1 else slot(l, n)

    h_prev = x0
    for layer in dense.forward(weights, biases, x0, act, out=out, in_place=True):
        l, h = layer.index, layer.h
        xs = _mean_sq_rows(layer.x)  # the layer's input moment: for l > 0, layer l-1's activation
        x_sq.append(xs)
        if l > 0:
            stat["activation"][:, l - 1] = xs.mean(-1)
            saved.append(layer.x if act.saves_output else h_prev)  # x^l = φ(h^l) in h^l's buffer
        sq_norm = torch.linalg.vector_norm(h, dim=-1).square()  # ‖h_b‖², (R, B)
        stat["forward"][:, l] = sq_norm.mean(-1) / h.shape[-1]
        if "correlation" in stat:
            stat["correlation"][:, l] = mean_cosine(h, sq_norm)
        h_prev = h
        if tick is not None:
            tick()
    delta = cotangent  # δ^L = r: the readout is linear
    for l in range(L - 1, -1, -1):
        if l < L - 1:
            o = slot(l, weights[l + 1].shape[2])
            delta = torch.bmm(delta, weights[l + 1], out=o)  # (R, B, n_l)
            act.backward_(delta, saved[l])  # δ^l ⊙= φ'(h^l)
            saved[l] = None
        d_sq = _mean_sq_rows(delta)  # mean_i δ_bi², (R, B)
        stat["backward"][:, l] = d_sq.mean(-1)
        stat["weight_grad"][:, l] = (d_sq * x_sq[l]).mean(-1)
        if tick is not None:
            tick()
    return stat


def propagate_recompute(
    weights: Sequence[torch.Tensor],
    biases: Sequence[torch.Tensor] | None,
    x0: torch.Tensor,
    cotangent: torch.Tensor,
    act: Activation,
    segment: int,
    tick: Tick | None = None,
    workspace: Workspace | None = None,
) -> dict[str, torch.Tensor]:
    """`propagate`'s statistics, bitwise, keeping only every `segment`-th saved activation.

    The forward pass is `propagate`'s, except that of the saved x^l (or h^l, what φ's backward
    reads) only the checkpoints l = c−1 before each segment start c = 0, k, 2k, … are kept. The
    backward pass walks the segments from the last: the segment's last layer's step first
    (its saved activation is the next segment's checkpoint), then it recomputes the rest of the
    segment's saved activations from its own checkpoint with the same operations (dense.forward,
    φ in place) and runs `propagate`'s backward steps δ^l = φ'(h^l) ⊙ δ^{l+1} W^{l+1} through
    them. Saved activations: ⌈L/k⌉ + k of (R, B, n) instead of L − 1. The weights are read one
    segment at a time (ascending forward; backward W^e, then segment [c, e)), so a
    `harness.sim.regen.RegeneratedWeights` draws each segment once per pass.
    """
    L, k = len(weights), max(1, segment)
    R, B = x0.shape[:2]
    shapes = regen.shapes(weights)
    stat = dict(
        forward=x0.new_empty(R, L),
        activation=x0.new_empty(R, L - 1),
        backward=x0.new_empty(R, L),
        weight_grad=x0.new_empty(R, L),
    )
    if B >= 2:
        stat["correlation"] = x0.new_empty(R, L)
    x_sq: list[torch.Tensor] = []
    n_max = max(s[0] for s in shapes)
    ws = workspace if workspace is not None else Workspace()
    buf = [ws.take(f"h{i}", (R * B * n_max,), x0.dtype, x0.device) for i in (0, 1)]

    def slot(i: int, n: int) -> torch.Tensor:
        return buf[i % 2][: R * B * n].view(R, B, n)

    def out(l: int, n: int) -> torch.Tensor:  # checkpoints before each segment start, else two
        if l == L - 1:                         # buffers in turn
            return slot(l, n)
        if (l + 1) % k == 0:
            return ws.take(f"saved{(l + 1) // k}", (R, B, n), x0.dtype, x0.device)
        return ws.take(f"fwd{l % 2}", (R, B, n), x0.dtype, x0.device)

    ckpt: dict[int, torch.Tensor] = {}  # segment start c > 0 -> saved form of layer c-1
    h_prev = x0
    for layer in dense.forward(weights, biases, x0, act, out=out, in_place=True):
        l, h = layer.index, layer.h
        xs = _mean_sq_rows(layer.x)
        x_sq.append(xs)
        if l > 0:
            stat["activation"][:, l - 1] = xs.mean(-1)
            if l % k == 0:
                ckpt[l] = layer.x if act.saves_output else h_prev
        sq_norm = torch.linalg.vector_norm(h, dim=-1).square()
        stat["forward"][:, l] = sq_norm.mean(-1) / h.shape[-1]
        if "correlation" in stat:
            stat["correlation"][:, l] = mean_cosine(h, sq_norm)
        h_prev = h
        if tick is not None:
            tick()
    delta = cotangent

    def step(l: int, saved: torch.Tensor | None) -> None:  # propagate's backward step at l
        nonlocal delta
        if l < L - 1:
            o = slot(l, shapes[l + 1][1])
            delta = torch.bmm(delta, weights[l + 1], out=o)
            act.backward_(delta, saved)
        d_sq = _mean_sq_rows(delta)
        stat["backward"][:, l] = d_sq.mean(-1)
        stat["weight_grad"][:, l] = (d_sq * x_sq[l]).mean(-1)
        if tick is not None:
            tick()

    for c in reversed(range(0, L, k)):
        e = min(c + k, L)
        # first the segment's last layer (W^e belongs to the next segment, its checkpoint is
        # kept), then the recomputed rest: the weights are read one segment at a time
        step(e - 1, ckpt.get(e))
        if e - 1 == c:
            continue
        x_in = x0 if c == 0 else (ckpt[c] if act.saves_output else act.phi(ckpt[c]))
        saved: list[torch.Tensor] = []
        for layer in dense.forward(weights[c : e - 1], None if biases is None else biases[c : e - 1],
                                   x_in, act, in_place=True,
                                   out=lambda i, n: ws.take(f"re{i}", (R, B, n), x0.dtype, x0.device)):
            saved.append(layer.h)
        if act.saves_output:
            act.phi_(saved[-1])  # dense.forward leaves the last layer's φ to its caller
        for l in range(e - 2, c - 1, -1):
            step(l, saved[l - c])
    return stat


def propagate_norm(
    weights: Sequence[torch.Tensor],
    biases: Sequence[torch.Tensor] | None,
    x0: torch.Tensor,
    cotangent: torch.Tensor,
    act: Activation,
    norm: norms.Norm,
    position: str,
    eps: float,
    tick: Tick | None = None,
) -> dict[str, torch.Tensor]:
    """`propagate` with a normalization layer N (`harness.core.norms`) in layers 1..L−1:

        pre:  x^l = φ(N(h^l)),    post: x^l = N(φ(h^l)),    h^{l+1} = x^l (W^{l+1})ᵀ + b^{l+1}

    (layer L the linear readout, no norm). N's statistics are over the dims of its entry
    (`Norm.dims("dense")`: batchnorm over a network's batch per feature, the per-sample norms
    over a sample's features), and the written-out backward passes through them
    (`Norm.backward`), with δ^l = ∂loss/∂h^l (the total loss Σ_b r_b·y_b):

        pre:  δ^l = N'ᵀ(φ'(N(h^l)) ⊙ δ^{l+1} W^{l+1}),   post: δ^l = φ'(h^l) ⊙ N'ᵀ(δ^{l+1} W^{l+1})

    Returns `propagate`'s quantities (forward = mean (h^l)², the pre-norm layer; activation =
    mean of φ's output², l < L; weight_grad = mean_b[mean_i (δ^l_bi)² · mean_j (x^{l-1}_bj)²], the
    per-example terms δ^l_b (x^{l-1}_b)ᵀ of the gradient Σ_b δ^l_b (x^{l-1}_b)ᵀ, each example's
    own gradient for a per-sample norm) and normed = mean N(·)², (R, L−1).
    """
    L = len(weights)
    R, B = x0.shape[:2]
    dims = norm.dims("dense")
    new = x0.new_empty
    stat = dict(forward=new(R, L), activation=new(R, L - 1), normed=new(R, L - 1),
                backward=new(R, L), weight_grad=new(R, L))
    if B >= 2:
        stat["correlation"] = new(R, L)
    x_sq: list[torch.Tensor] = []
    saved: list[tuple[torch.Tensor, ...]] = []  # pre: (y, s); post: (h, y, s)
    x = x0
    for l, W in enumerate(weights):
        x_sq.append(_mean_sq_rows(x))
        h = dense.affine(x, W, None if biases is None else biases[l])
        sq_norm = torch.linalg.vector_norm(h, dim=-1).square()
        stat["forward"][:, l] = sq_norm.mean(-1) / h.shape[-1]
        if "correlation" in stat:
            stat["correlation"][:, l] = mean_cosine(h, sq_norm)
        if l < L - 1:
            if position == "pre":
                y, s = norm.forward(h, dims, eps)
                a = x = act.phi(y)
                saved.append((y, s))
            else:
                a = act.phi(h)
                y, s = norm.forward(a, dims, eps)
                x = y
                saved.append((h, y, s))
            stat["activation"][:, l] = _mean_sq_rows(a).mean(-1)
            stat["normed"][:, l] = _mean_sq_rows(y).mean(-1)
        if tick is not None:
            tick()
    delta = cotangent
    for l in range(L - 1, -1, -1):
        if l < L - 1:
            g = torch.bmm(delta, weights[l + 1])  # ∂loss/∂x^l
            if position == "pre":
                y, s = saved[l]
                delta = norm.backward(g * act.dphi(y), y, s, dims)
            else:
                h, y, s = saved[l]
                delta = norm.backward(g, y, s, dims) * act.dphi(h)
            saved[l] = ()
        d_sq = _mean_sq_rows(delta)
        stat["backward"][:, l] = d_sq.mean(-1)
        stat["weight_grad"][:, l] = (d_sq * x_sq[l]).mean(-1)
        if tick is not None:
            tick()
    return stat


def norm_theory(spec: Spec, kind: str, weight_variances: Sequence[float] | None = None
                ) -> tuple[dict[str, np.ndarray], str]:
    """The norm entry's theory hook (`harness.core.norms.Norm.theory`) on the run's numbers:
    σ_w² = fan_in·Var(W), ρ² = fan_out·Var(W) per weight layer, n the normalized width of each
    layer's output (a conv's channels × positions)."""
    var_w = np.array(spec.weight_variances() if weight_variances is None else weight_variances,
                     dtype=np.float64)
    shapes = spec.weight_shapes
    fan_in = np.array([math.prod(s[1:]) for s in shapes], dtype=np.float64)
    fan_out = np.array([s[0] * math.prod(s[2:]) for s in shapes], dtype=np.float64)
    P = math.prod(spec.spatial)
    widths = np.array([s[0] * P for s in shapes], dtype=np.float64)
    m = spec.residual_branch_depth or 1
    alphas = np.empty(0)
    if spec.residual_alpha is not None:
        div = {"none": 1.0, "sqrt": math.sqrt(spec.depth), "linear": float(spec.depth)}
        alphas = np.full(spec.depth, spec.residual_alpha / div[spec.residual_depth_scaling])  # type: ignore[index]
    stack = norms.Stack(kind=kind, act=spec.activation, sigma_w2=fan_in * var_w, rho2=fan_out * var_w,
                        sigma_b2=spec.bias_std**2, q0=spec.input_var, c0=spec.input_corr,
                        batch=spec.batch, depth=spec.depth, position=spec.norm_position or "pre",
                        eps=float(spec.norm_eps or 0.0), widths=widths, alphas=alphas, m=m, ws=spec.ws,
                        positions=P)
    assert spec.normalization.theory is not None
    return spec.normalization.theory(stack)


def _mean_sq_rows(t: torch.Tensor) -> torch.Tensor:
    """mean over the last dim of t², in one pass without a t-sized temporary: (R, B)."""
    return torch.linalg.vector_norm(t, dim=-1).square_().div_(t.shape[-1])


def bytes_per_replicate(spec: Spec) -> int:
    """Peak bytes one replicate needs: its weights, the saved φ'(h), a few activations, and
    with jacobian=k its Jacobians (`harness.sim.jacobian.bytes_per_replicate`)."""
    item = torch.empty((), dtype=spec.torch_dtype).element_size()
    weights = sum(math.prod(s) for s in spec.weight_shapes)
    saved = spec.batch * sum(spec.widths[1:-1])
    working = 4 * spec.batch * max(spec.widths)
    jac = jacobian.bytes_per_replicate(spec.jacobian, spec.widths, item) if spec.jacobian else 0
    if not spec.normalization.identity:  # propagate_norm: h (post) and N's output saved per layer,
        saved *= 2                       # a few more working activations (φ(y), g, φ'(·))
        working += 4 * spec.batch * max(spec.widths)
    return item * (weights + saved + working + (spec.depth + 1) * spec.batch) + jac


def recompute_bytes(spec: Spec, segment: int) -> int:
    """Peak bytes one replicate needs on the low-memory path with checkpoints every k =
    `segment` layers: one segment of regenerated weights (k·max n_l·n_{l-1}, which the walk
    over the streams shares), ⌈L/k⌉ checkpoints and k recomputed activations of B·max n, the biases, the
    inputs and cotangents, and the generator states (5056 bytes each, one per segment)."""
    item = torch.empty((), dtype=spec.torch_dtype).element_size()
    k = max(1, segment)
    layer = max(math.prod(s) for s in spec.weight_shapes)
    act = spec.batch * max(spec.widths)
    segments = -(-spec.depth // k)
    elements = (k * layer + (segments + k + 6) * act + sum(spec.widths[1:])
                + (spec.depth + 1) * spec.batch)
    return item * elements + segments * 5056


class MLP(Architecture):
    """arch=mlp (module doc)."""

    name = "mlp"
    label = "MLPs"
    capabilities = frozenset({JACOBIAN, LSUV, INPUT_CORR, CRITICALITY, FINITE_WIDTH_BAND, WS})
    keys: Mapping[str, str] = {}
    all_quantities = (*QUANTITIES[:2], "normed", *QUANTITIES[2:], *jacobian.QUANTITIES)
    weight_grad_is_outer_product = True
    memory_keys = ("depth", "width (or widths)", "batch", "jacobian")

    def config(self, cfg: Mapping[str, Any]) -> dict[str, Any]:
        """No keys of its own (the conv keys in a config are ignored)."""
        return {}

    def quantities(self, spec: Spec) -> tuple[str, ...]:
        """forward, activation, (normed with a norm), backward, weight_grad, correlation
        (batch ≥ 2), and jacobian_* with jacobian=k > 0."""
        base = QUANTITIES if spec.batch >= 2 else QUANTITIES[:-1]
        if not spec.normalization.identity:  # normed after activation
            base = (*base[:2], "normed", *base[2:])
        return (*base, *jacobian.QUANTITIES) if spec.jacobian else base

    def propagate(
        self,
        spec: Spec,
        weights: Sequence[torch.Tensor],
        biases: Sequence[torch.Tensor] | None,
        x0: torch.Tensor,
        cotangent: torch.Tensor,
        *,
        tick: Tick | None = None,
        workspace: Workspace | None = None,
    ) -> dict[str, torch.Tensor]:
        """`propagate` (module function) with the run's activation; with a norm
        `propagate_norm`."""
        if not spec.normalization.identity:
            return propagate_norm(weights, biases, x0, cotangent, spec.activation, spec.normalization,
                                  spec.norm_position, spec.norm_eps, tick)  # type: ignore[arg-type]
        return propagate(weights, biases, x0, cotangent, spec.activation, tick, workspace)

    def bytes_per_replicate(self, spec: Spec) -> int:
        """`bytes_per_replicate` (module function)."""
        return bytes_per_replicate(spec)

    def recompute_bytes(self, spec: Spec, segment: int) -> int | None:
        """`recompute_bytes` (module function); None with a norm (no low-memory path)."""
        return recompute_bytes(spec, segment) if spec.normalization.identity else None

    def propagate_recompute(
        self,
        spec: Spec,
        weights: Sequence[torch.Tensor],
        biases: Sequence[torch.Tensor] | None,
        x0: torch.Tensor,
        cotangent: torch.Tensor,
        segment: int,
        *,
        tick: Tick | None = None,
        workspace: Workspace | None = None,
    ) -> dict[str, torch.Tensor]:
        """`propagate_recompute` (module function) with the run's activation."""
        return propagate_recompute(weights, biases, x0, cotangent, spec.activation, segment,
                                   tick, workspace)

    def jacobian(
        self,
        spec: Spec,
        weights: Sequence[torch.Tensor],
        biases: Sequence[torch.Tensor] | None,
        x0: torch.Tensor,
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """`harness.sim.jacobian.propagate` with the last layer's spectrum."""
        return jacobian.propagate(weights, biases, x0, spec.activation, spectrum=True)

    def calibrate(
        self,
        spec: Spec,
        weights: Sequence[torch.Tensor],
        biases: Sequence[torch.Tensor] | None,
        generator: torch.Generator | Sequence[torch.Generator],
    ) -> lsuv.Calibration:
        """`harness.sim.lsuv.calibrate_spec`."""
        return lsuv.calibrate_spec(spec, weights, biases, generator)

    def predict(
        self, spec: Spec, weight_variances: Sequence[float] | None = None
    ) -> dict[str, np.ndarray]:
        """`harness.theory.meanfield.dense`, and with jacobian=k `harness.sim.jacobian.predict`
        from its forward prediction; with a norm the norm entry's theory hook (`norm_theory`)."""
        if not spec.normalization.identity:
            return norm_theory(spec, "mlp", weight_variances)[0]
        out = meanfield.dense(spec, weight_variances)
        if not spec.jacobian:
            return out
        var_w = np.array(spec.weight_variances() if weight_variances is None else weight_variances,
                         dtype=np.float64)
        with np.errstate(over="ignore", invalid="ignore", under="ignore"):
            jac = jacobian.predict(spec.activation, spec.scheme, spec.widths, var_w, out["forward"])
        return {**jac, **out}

    def theory_note(self, spec: Spec) -> str:
        """The norm entry's reason where its theory is missing ("" otherwise)."""
        return "" if spec.normalization.identity else norm_theory(spec, "mlp")[1]

    def layer(
        self, spec: Spec, n_in: int, n_out: int, *, bias: bool, device: str | torch.device,
        dtype: torch.dtype,
    ) -> nn.Module:
        """nn.Linear(n_in, n_out)."""
        return nn.Linear(n_in, n_out, bias=bias, device=device, dtype=dtype)


ARCH = MLP()
