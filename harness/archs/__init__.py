"""The architecture registry: arch=NAME -> its entry, an `harness.archs.base.Architecture`.

Every architecture lives in ONE module here, which holds everything about it: `mlp.py` (dense
stacks) and `conv.py` (stride-1 'same' conv stacks). The rest of the harness asks the entry of
`spec.arch` (`Spec.architecture`); none of it branches on an architecture's name.

How to add an architecture
--------------------------
1. Write `harness/archs/NAME.py` with a subclass of `Architecture` and one instance `ARCH`:

   - `name` (the value of arch=), `label` (its plural, for messages: "MLPs");
   - `config(cfg)`: its own config keys, validated (raise `ConfigError("what was wrong; what
     is allowed")`), returned as {key: value}; declare them in `keys` with the nullable pandas
     dtype of their column. Each key is a field of `harness.core.spec.Spec` with default None
     (add it there: every run carries every architecture's keys, None where they do not apply,
     so that results of all runs concatenate; `harness/conf/config.yaml` gives the default);
   - shapes: `spatial(spec)` and `kernel_shape(spec)` (() without space), `weight_shapes`
     (default (n_l, n_{l-1}, *kernel_shape), torch's layout, from which the init schemes read
     their fans);
   - `quantities(spec)` (and `all_quantities`, everything it may measure, in report order);
   - `propagate(spec, weights, biases, x0, cotangent, tick=, workspace=)`: the batched forward
     and written-out backward of a chunk of R members, per-replicate (R, L) statistics (the
     generic driver `harness.sim.runner.measure` draws the weights, seeds, chunks and joins);
   - `bytes_per_replicate(spec)`, for the chunking under memory_budget_mb and the memory
     preflight (`harness.sim.memory`), and `memory_keys`, the keys whose smaller values reduce
     it (its one-line error names them); optionally a low-memory path, `recompute_bytes(spec, k)`
     and `propagate_recompute(…, k)` (activations checkpointed every k layers and recomputed,
     weights that may be regenerated: `harness.sim.regen`), bitwise `propagate`'s numbers;
   - `predict(spec, weight_variances)`: the mean-field prediction of every quantity (reuse the
     recursions of `harness.theory` that apply);
   - `layer(spec, n_in, n_out, bias=, device=, dtype=)`: one layer as the plain torch module,
     from which `harness.sim.reference` builds the reference networks (`harness.bench`'s naive
     baseline and the tests' autograd references);
   - `weight_grad_is_outer_product`, and the optional `describe` / `title` (console and figure);
   - `capabilities`: which of base.CAPABILITIES it supports (jacobian, lsuv, input_corr,
     criticality, finite_width_band, positions), with the methods they need (`jacobian`,
     `calibrate`, `position_maps`) and `limits(spec, capability)` where one applies only to some
     runs. Requests it does not support are one-line ConfigErrors naming the architectures that
     do; annotations it does not support read "n/a" with `why_not`'s reason. Nothing falls back
     to another architecture's code.

2. Add `ARCH` to `REGISTRY` below.
3. Tests in `tests/test_NAME.py`: `propagate` against `harness.sim.reference.ensemble` with
   autograd (forward values, gradients, per-example weight gradients) in float64, the fans of
   `weight_shapes` against torch's, `predict` against a long simulation, and each unsupported
   capability's error (as tests/test_archs.py does for a toy architecture).
"""

from __future__ import annotations

from typing import Any

from harness.archs import conv, mlp, resconv, resmlp
from harness.archs.base import Architecture
from harness.core import norms
from harness.core.capabilities import CAPABILITIES
from harness.core.validate import ConfigError

#: arch name -> entry, in the order the CLI lists them
REGISTRY: dict[str, Architecture] = {a.name: a for a in (mlp.ARCH, conv.ARCH, resmlp.ARCH, resconv.ARCH)}
NAMES: tuple[str, ...] = tuple(REGISTRY)

__all__ = ["CAPABILITIES", "NAMES", "REGISTRY", "Architecture", "all_quantities", "column_dtypes",
           "get", "groups", "labels", "names", "why_not"]


def get(name: Any) -> Architecture:
    """The entry of arch=`name`; ConfigError naming the allowed ones if there is none."""
    entry = REGISTRY.get(name) if isinstance(name, str) else None
    if entry is None:
        raise ConfigError(f"unknown arch {name!r}; allowed: {', '.join(REGISTRY)}")
    return entry


def _supporting(capability: str) -> list[Architecture]:
    return [a for a in REGISTRY.values() if capability in a.capabilities]


def names(capability: str) -> str:
    """The architectures that support `capability`, as config values: "arch=mlp"."""
    return ", ".join(f"arch={a.name}" for a in _supporting(capability)) or "no arch"


def labels(capability: str) -> str:
    """The architectures that support `capability`, in words: "MLPs"."""
    return ", ".join(a.label for a in _supporting(capability)) or "no architecture"


def why_not(spec: Any, capability: str) -> str:
    """"" where the run's architecture supports `capability` for this run, else the reason: the
    entry's own (`Architecture.limits`, e.g. why a residual stream has no fixed point), or
    "defined for MLPs (arch=mlp) only", or the norm entry's (`harness.core.norms.Norm.why_not`)."""
    entry = get(spec.arch)
    own = entry.limits(spec, capability)
    if capability not in entry.capabilities:
        return own or f"defined for {labels(capability)} ({names(capability)}) only"
    norm = norms.get(getattr(spec, "norm", "none")).why_not(capability)  # the norm entry's reason
    if norm:
        return f"not defined with norm={spec.norm}: {norm}"
    return own


def column_dtypes() -> dict[str, str]:
    """Every architecture's own config columns -> their nullable pandas dtype, in registry
    order (every run carries them all; None where they do not apply)."""
    return {k: v for a in REGISTRY.values() for k, v in a.keys.items()}


def all_quantities() -> tuple[str, ...]:
    """Every quantity some architecture measures, in report order (registry order, first seen)."""
    return tuple(dict.fromkeys(q for a in REGISTRY.values() for q in a.all_quantities))


def groups() -> dict[str, tuple[str, ...]]:
    """Config group some architecture reads (e.g. "residual") -> the architectures that read it."""
    out: dict[str, tuple[str, ...]] = {}
    for a in REGISTRY.values():
        for g in a.groups:
            out[g] = (*out.get(g, ()), a.name)
    return out
