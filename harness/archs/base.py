"""`Architecture`: what an entry of the architecture registry (`harness.archs`) provides.

An entry is one instance of a subclass, defined in the architecture's own module. The generic
parts of the harness (`Spec`, `harness.sim.runner.measure`, `harness.theory.meanfield.predict`,
the outputs, `harness.bench`, the reference networks of the tests) ask it, never its name.

Capabilities are what some architectures support and others do not. A user request that the
architecture does not support (jacobian=k, scheme=lsuv, input_corr > 0) is a one-line
`ConfigError` naming the architectures that do; an output annotation (criticality, the
finite-width band) reads "n/a" with the reason `harness.archs.why_not` gives.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from harness.core.capabilities import JACOBIAN, LSUV, POSITIONS
from harness.sim.lsuv import Calibration
from harness.sim.workspace import Workspace

if TYPE_CHECKING:  # type hints only: Spec asks the registry, so the registry must not import it
    from harness.core.spec import Spec

Tick = Callable[[], object]

#: prefix of per-position statistics in `propagate`'s result, e.g. "position:forward"; the runner
#: hands them back as Measurement.positions, (R, L, *spatial)
POSITION = "position:"



class Architecture(ABC):
    """One architecture: its config keys, weight shapes, batched propagation, theory, memory,
    quantities, capabilities and plain torch layers. Shapes: R replicates, B inputs, n_l
    units (or channels) at layer l, S the spatial shape (() for an MLP)."""

    #: the config value arch=NAME
    name: str = ""
    #: the architecture in a sentence's plural, for messages ("MLPs")
    label: str = ""
    #: what it supports of CAPABILITIES
    capabilities: frozenset[str] = frozenset()
    #: its own config keys, each a Spec field (None for the other architectures) and a config
    #: column of every run, with the nullable pandas dtype of that column
    keys: Mapping[str, str] = {}
    #: every quantity it can measure, in report order
    all_quantities: tuple[str, ...] = ()
    #: True if a member's per-example weight gradient is the outer product δ^l_b (x^{l-1}_b)ᵀ,
    #: so that its pooled moment is mean_b[mean_i δ_bi² · mean_j x_bj²] (the naive baseline of
    #: `harness.bench` then needs one backward pass; else one per example)
    weight_grad_is_outer_product: bool = True
    #: the config groups whose keys it reads (e.g. "residual": residual.alpha, …); a key of a
    #: group no architecture of the run reads is rejected when set (not None)
    groups: tuple[str, ...] = ()
    #: the config keys whose smaller values make one replicate need less memory (named by the
    #: memory preflight's error, `harness.sim.memory.preflight`)
    memory_keys: tuple[str, ...] = ("depth", "width (or widths)", "batch")

    # ---- configuration ------------------------------------------------------------------
    @abstractmethod
    def config(self, cfg: Mapping[str, Any]) -> dict[str, Any]:
        """Its own keys of a config, validated (ConfigError), as Spec fields: {key: value}."""

    def theory_note(self, spec: Spec) -> str:
        """A one-line note on the run's theory where part of it is missing (e.g. "BatchNorm
        theory: not yet"), "" otherwise; the console and metadata list it with the notes."""
        return ""

    def norm_limits(self, cfg: Mapping[str, Any]) -> str:
        """Why a normalization layer (norm=batchnorm|layernorm|rmsnorm) cannot be used with this
        config of the architecture ("" if it can; e.g. resmlp's normalizer-free residual.nf)."""
        return ""

    def limits(self, spec: Spec, capability: str) -> str:
        """Why a capability it supports does not apply to this run ("" if it does); for an
        annotation it does not support, optionally its own reason (else `harness.archs.why_not`
        names the architectures that do)."""
        return ""

    def row_columns(self, spec: Spec, quantity: str, n: int) -> dict[str, np.ndarray]:
        """Extra columns of a quantity's n per-layer rows in metrics.parquet (e.g. resmlp's
        weight_grad `branch_layer`), name -> (n,) array; none by default."""
        return {}

    def describe(self, spec: Spec) -> str:
        """What the console's first line adds after the widths (e.g. kernel and image)."""
        return ""

    def title(self, row: Mapping[str, Any]) -> str:
        """What a figure title adds after the widths, from a row of a results frame."""
        return ""

    # ---- shapes -------------------------------------------------------------------------
    def spatial(self, spec: Spec) -> tuple[int, ...]:
        """The spatial shape S of every layer's activations (() without space)."""
        return ()

    def kernel_shape(self, spec: Spec) -> tuple[int, ...]:
        """The spatial shape of a weight beyond (n_l, n_{l-1}) (() for a dense layer)."""
        return ()

    def weight_shapes(self, spec: Spec) -> list[tuple[int, ...]]:
        """One member's weight shape per layer l = 1..L: (n_l, n_{l-1}, *kernel_shape), torch's
        layout (the init schemes read fan_in = n_{l-1}·∏kernel_shape from it)."""
        k = self.kernel_shape(spec)
        return [(spec.widths[l + 1], spec.widths[l], *k) for l in range(spec.depth)]

    def branch_depth(self, spec: Spec) -> int | None:
        """Weight layers per residual branch (None: not a residual architecture), which schemes
        that act on branches ask for (`harness.core.schemes.Scheme.check_branches`)."""
        return None

    def layer_scales(self, spec: Spec) -> list[float] | None:
        """A factor per weight layer on the scheme's draw (and so its variance squared), from the
        layer's role (e.g. scheme=fixup's branch scaling); None: every factor 1."""
        return None

    @abstractmethod
    def quantities(self, spec: Spec) -> tuple[str, ...]:
        """The quantities a run of `spec` measures (the rows of metrics.parquet)."""

    # ---- simulation ---------------------------------------------------------------------
    @abstractmethod
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
        """Forward and explicit backward through a chunk of stacked members: weights (R,
        *weight_shape) per layer, biases (R, n_l) or None, x0 (R, B, n_0, *S), cotangent
        r = ∂loss/∂y (R, B, n_L, *S). Returns every quantity of `quantities` except those of
        other passes (jacobian_*) as (R, L) tensors (activation (R, L-1)), and with POSITIONS
        the per-position maps POSITION + q as (R, L, ∏S). `tick` is called once per layer
        and pass; `workspace` may lend reused buffers."""

    @abstractmethod
    def bytes_per_replicate(self, spec: Spec) -> int:
        """Peak bytes one replicate of a chunk needs (the runner's chunking divides the memory
        budget by it)."""

    def recompute_bytes(self, spec: Spec, segment: int) -> int | None:
        """Peak bytes one replicate needs on the low-memory path (`propagate_recompute` with
        weights regenerated from the streams and activations checkpointed every `segment`
        layers); None if the architecture has no such path (the default)."""
        return None

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
        """`propagate` with O(depth/segment + segment) saved activations: only every
        `segment`-th layer's are kept in the forward pass, the others recomputed segment by
        segment in the backward pass; `weights` may be a `harness.sim.regen.RegeneratedWeights`
        (read in ascending order forward and descending order backward). Bitwise the numbers
        of `propagate`."""
        raise NotImplementedError(f"arch={self.name} has no low-memory path")

    def jacobian(
        self,
        spec: Spec,
        weights: Sequence[torch.Tensor],
        biases: Sequence[torch.Tensor] | None,
        x0: torch.Tensor,
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """JACOBIAN: jacobian_* (R, L) at the inputs x0 (R, k, …) and the last layer's squared
        singular values (R, k, n_0)."""
        raise NotImplementedError(f"arch={self.name} does not support {JACOBIAN}")

    def calibrate(
        self,
        spec: Spec,
        weights: Sequence[torch.Tensor],
        biases: Sequence[torch.Tensor] | None,
        generator: torch.Generator | Sequence[torch.Generator],
    ) -> Calibration:
        """LSUV: rescale the chunk's weights in place on a fresh batch of inputs."""
        raise NotImplementedError(f"arch={self.name} does not support {LSUV}")

    # ---- theory -------------------------------------------------------------------------
    @abstractmethod
    def predict(
        self, spec: Spec, weight_variances: Sequence[float] | None = None
    ) -> dict[str, np.ndarray]:
        """quantity -> mean-field prediction per layer l = 1..L (activation l = 1..L-1),
        float64; `weight_variances` replaces the scheme's Var(W^l) (lsuv's data-dependent
        scales)."""

    def position_maps(self, spec: Spec) -> dict[str, np.ndarray]:
        """POSITIONS: the position-resolved predictions, quantity -> (L, *S)."""
        raise NotImplementedError(f"arch={self.name} does not support {POSITIONS}")

    # ---- the plain torch network ----------------------------------------------------------
    @abstractmethod
    def layer(
        self, spec: Spec, n_in: int, n_out: int, *, bias: bool, device: str | torch.device,
        dtype: torch.dtype,
    ) -> nn.Module:
        """One layer of a member as the plain torch module (its .weight of shape
        weight_shapes[l], .bias (n_out,) or None), for `harness.sim.reference`."""

    def block(
        self, spec: Spec, l: int, *, bias: bool, device: str | torch.device, dtype: torch.dtype
    ) -> nn.Module | None:
        """Block l (0-based) of a residual member as one nn.Module whose `.layers` are its
        weighted layers in order (weight layers l·m … l·m+m-1); None: the member is the plain
        chain layer, φ, layer, … (`harness.sim.reference.member`)."""
        return None
