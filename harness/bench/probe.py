"""harness.probe's batched path against its loop: the vmap/loop time ratio on real models.

For each model of the grid (resnet18 and a small ViT, from the probe's presets, when the `models`
extra is installed) one ensemble is built (`harness.probe.engine.ensemble`) and the same
per-replicate function (forward with hooks, `torch.func.grad` for the parameter and output
gradients, the statistics) is timed over the R replicates both ways: mapped with `torch.func.vmap`
over the stacked parameters, and called once per replicate. Each time is the best of `repeat`
calls after a warm-up, the two paths' calls alternating so that both see the same load;
ratio = t_loop / t_vmap (> 1: the batched path is faster). Building the models and the first
(discovery) pass are not timed: they are the same on both paths. Both paths run with freed memory
kept for reuse (`harness.probe.alloc.retained`), as a probe measures.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import pandas as pd
import torch

from harness.core.validate import ConfigError
from harness.probe import alloc, checks, engine, models
from harness.probe.spec import ProbeSpec

#: (label, probe overrides) of the default grid and of --quick
GRID = [
    ("resnet18", ["model=resnet18", "input_shape=[3,64,64]", "batch=8", "replicates=8"]),
    ("vit_s16 64×64", ["model=vit_s16", "+model.img_size=64", "input_shape=[3,64,64]", "batch=8",
                       "replicates=8"]),
]
QUICK = [
    ("resnet18", ["model=resnet18", "input_shape=[3,32,32]", "batch=2", "replicates=2"]),
    ("vit_s16 32×32", ["model=vit_s16", "+model.img_size=32", "+model.depth=2", "input_shape=[3,32,32]",
                       "batch=2", "replicates=2"]),
]


def _interleaved(a: Callable[[], object], b: Callable[[], object], device: str, repeat: int
                 ) -> tuple[float, float]:
    """Best times of `a` and `b` over `repeat` alternating calls each, after one warm-up call
    each: on a shared machine whose speed drifts, both see the same conditions."""
    a()
    b()
    ta = tb = math.inf
    for _ in range(repeat):
        ta = min(ta, _best(a, device, 1, warm=False))
        tb = min(tb, _best(b, device, 1, warm=False))
    return ta, tb


def _best(fn: Callable[[], object], device: str, repeat: int, warm: bool = True) -> float:
    if warm:
        fn()
    best = math.inf
    for _ in range(repeat):
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return best


def bench_model(label: str, overrides: list[str], repeat: int = 3, device: str = "auto",
                dtype: str = "float32") -> dict[str, object]:
    """One row: the model, R, batch, input shape, points, t_vmap, t_loop (best of `repeat`
    after a warm-up, seconds) and ratio = t_loop / t_vmap. ConfigError if the model cannot be
    built (e.g. the models extra is missing)."""
    cfg = checks.check_overrides([*overrides, f"device={device}", f"dtype={dtype}", "progress=false"],
                                 multirun=False)
    spec = ProbeSpec.from_config(cfg)
    ens = engine.ensemble(models.resolve(spec.target, f"model {spec.model}"), spec)
    f = engine.point_function(ens, spec)
    R = spec.replicates
    with engine.quiet(), alloc.retained():
        t_vmap, t_loop = _interleaved(lambda: engine._run_vmap(f, ens, R, R, False),
                                      lambda: engine._run_loop(f, ens, R, False), spec.device, repeat)
    return {"model": label, "replicates": R, "batch": spec.batch,
            "input_shape": "×".join(map(str, spec.input_shape)), "points": len(ens.points),
            "vmap_s": t_vmap, "loop_s": t_loop, "ratio": t_loop / t_vmap}


def table(quick: bool = False, repeat: int = 3, device: str = "auto", dtype: str = "float32"
          ) -> tuple[pd.DataFrame, list[str]]:
    """The rows of the grid (QUICK with `quick`) and a note per model that could not run."""
    rows, notes = [], []
    for label, overrides in (QUICK if quick else GRID):
        try:
            rows.append(bench_model(label, overrides, repeat, device, dtype))
        except ConfigError as e:
            notes.append(f"{label}: skipped ({e})")
    return pd.DataFrame(rows), notes
