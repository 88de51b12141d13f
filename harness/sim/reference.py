"""The reference ensemble: each member as a plain torch `nn.Sequential`, one module per layer
(per block for residual architectures: `harness.archs.base.Architecture.block`).

A member of a run is layer_1, φ, layer_2, φ, …, layer_L (a linear readout), each layer the plain
torch module its architecture builds; with a norm (`harness.core.norms`) torch's own module
(nn.BatchNorm1d/2d in training mode, nn.LayerNorm, nn.RMSNorm) sits before φ (norm.position=pre:
layer, N, φ) or after it (post: layer, φ, N) in layers 1..L−1 (residual blocks hold theirs)
(`harness.archs.base.Architecture.layer`: nn.Linear for an
MLP, nn.Conv1d/2d with 'same' padding for a conv). Filled with the ensemble's drawn weights
(`member(spec, weights, biases, r)`), autograd through it is the independent reference the
batched runner is tested against; filled by torch.nn.init, it is `harness.bench`'s naive
baseline.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from harness.core.activations import Activation
from harness.core.spec import Spec

#: torch's normalization modules (the reference networks' norms; not weighted layers here)
NORM_MODULES = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.RMSNorm)


class Phi(nn.Module):
    """An activation φ as an nn.Module."""

    def __init__(self, act: Activation):
        super().__init__()
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """φ(x), elementwise."""
        return self.act.phi(x)


def member(
    spec: Spec,
    weights: Sequence[torch.Tensor] | None = None,
    biases: Sequence[torch.Tensor] | None = None,
    r: int = 0,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> nn.Sequential:
    """Member r of the stacked `weights` (R, *weight_shape) and `biases` (R, n_l) as an
    nn.Sequential (copies, with requires_grad). Without weights: a fresh member (torch's own
    initialization) on `device` in `dtype` (default the run's), with biases iff bias_std > 0."""
    arch = spec.architecture
    if weights is not None:
        device, dtype = weights[0].device, weights[0].dtype
    device = spec.device if device is None else device
    dtype = spec.torch_dtype if dtype is None else dtype
    bias = biases is not None if weights is not None else spec.bias_std > 0
    act = spec.activation
    layers: list[nn.Module] = []
    if arch.block(spec, 0, bias=bias, device=device, dtype=dtype) is not None:  # residual blocks
        for l in range(spec.depth):
            block = arch.block(spec, l, bias=bias, device=device, dtype=dtype)
            if weights is not None:
                m = len(block.layers)
                with torch.no_grad():
                    for j, layer in enumerate(block.layers):
                        layer.weight.copy_(weights[l * m + j][r])
                        if biases is not None:
                            layer.bias.copy_(biases[l * m + j][r])
            layers.append(block)
        return nn.Sequential(*layers)
    entry = spec.normalization
    for l in range(spec.depth):
        layer = arch.layer(spec, spec.widths[l], spec.widths[l + 1], bias=bias, device=device,
                           dtype=dtype)
        if weights is not None:
            with torch.no_grad():
                layer.weight.copy_(weights[l][r])
                if biases is not None:
                    layer.bias.copy_(biases[l][r])
        layers.append(layer)
        if l < spec.depth - 1:
            if entry.identity:
                layers.append(Phi(act))
                continue
            norm = entry.module((spec.widths[l + 1], *spec.spatial), spec.conv_dim, spec.norm_eps,  # type: ignore[arg-type]
                                device=device, dtype=dtype)
            layers.extend([norm, Phi(act)] if spec.norm_position == "pre" else [Phi(act), norm])
    return nn.Sequential(*layers)


def ensemble(
    spec: Spec, weights: Sequence[torch.Tensor], biases: Sequence[torch.Tensor] | None
) -> list[nn.Sequential]:
    """Every member of the stacked weights (R = weights[0].shape[0]) as a `member`."""
    return [member(spec, weights, biases, r) for r in range(weights[0].shape[0])]


def layers(net: nn.Sequential) -> list[nn.Module]:
    """The weighted layers of a member (its modules but the activations; a residual block's
    `.layers` in order), l = 1..L (1..L·m for residual blocks)."""
    out: list[nn.Module] = []
    for m in net:
        if isinstance(m, (Phi, *NORM_MODULES)):
            continue
        block_layers = getattr(m, "layers", None)
        out.extend(block_layers if isinstance(block_layers, nn.ModuleList) else [m])
    return out
