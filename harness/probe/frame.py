"""A probe's tidy frame and console lines.

metrics.parquet of a probe run has the contract of `harness.run`'s (`harness.outputs.results`):
one row per (replicate, point, quantity) with the run's config columns, `layer` (the point's
1-based position in execution order, so every per-layer tool reads it), `module` (the module's
qualified name, with #k for its k-th call), `module_type` (its class name), `replicate`,
`quantity`, `value` and `theory` (NaN: there is no theory for an arbitrary model).
weight_grad and param_norm rows exist only for modules with parameters.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from harness.outputs import compare
from harness.probe.engine import PARAM_QUANTITIES, QUANTITIES, ProbeMeasurement
from harness.probe.spec import ProbeSpec


def to_frame(spec: ProbeSpec, m: ProbeMeasurement) -> pd.DataFrame:
    """Long format, one row per (replicate, point, quantity); see the module docstring."""
    R, P, _ = m.values.shape
    has_params = np.array([bool(p.params) for p in m.points])
    keys = np.array([p.key for p in m.points], dtype=object)
    kinds = np.array([p.module_type for p in m.points], dtype=object)
    parts = []
    for j, q in enumerate(QUANTITIES):
        keep = has_params if q in PARAM_QUANTITIES else np.ones(P, dtype=bool)
        idx = np.flatnonzero(keep)
        n = len(idx)
        if n == 0:
            continue
        parts.append(pd.DataFrame({
            "layer": np.tile(idx + 1, R),
            "module": np.tile(keys[idx], R),
            "module_type": np.tile(kinds[idx], R),
            "replicate": np.repeat(np.arange(R), n),
            "quantity": q,
            "value": m.values[:, idx, j].ravel(),
            "theory": np.nan,
        }))
    df = pd.concat(parts, ignore_index=True)
    cols = spec.columns()
    for k, v in cols.items():
        df[k] = v
    for c in ("module", "module_type", "quantity"):
        df[c] = df[c].astype("string")
    return df[[*cols, "layer", "module", "module_type", "replicate", "quantity", "value", "theory"]]


def verdict(spec: ProbeSpec, frame: pd.DataFrame, info: dict) -> list[str]:
    """Per quantity: the replicate mean ± s.e. at the first and the last point, and how many
    decades its replicate means span over the points (positive quantities); no theory."""
    s = compare.layer_stats(frame)
    names = frame.drop_duplicates("layer").set_index("layer")["module"]
    lines = [f"{'quantity':<16} {'first point':>34} {'last point':>34}  span over points"]
    for q in QUANTITIES:
        d = s[s["quantity"] == q]
        if d.empty:
            continue
        first, last = d.iloc[0], d.iloc[-1]

        def cell(r: pd.Series) -> str:
            return f"{names[int(r['layer'])][:14]} {r['mean']:.3g} ± {r['sem']:.2g}"

        span = ""
        if not compare.kind(q).signed:
            pos = d["mean"][(d["mean"] > 0) & np.isfinite(d["mean"])]
            if len(pos):
                span = f"{np.log10(pos.max() / pos.min()):.2f} decades"
        lines.append(f"{q:<16} {cell(first):>34} {cell(last):>34}  {span}")
    path = info.get("path", "?")
    why = f" (vmap failed: {info['vmap_error']})" if "vmap_error" in info else ""
    lines.append(f"{info.get('points', '?')} points in execution order; no theory for an arbitrary "
                 f"model (measured only); path {path}{why}")
    return lines
