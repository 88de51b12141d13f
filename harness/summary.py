"""The console verdict: a few lines comparing measured and predicted per quantity."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .plots import layer_summary
from .spec import QUANTITIES


def numeric_events(df: pd.DataFrame) -> list[str]:
    """Where a measured quantity overflowed (inf/nan) or underflowed (0), first layer only."""
    lines = []
    for q in QUANTITIES:
        if q == "correlation":  # a cosine: 0 is a value, and its nan follows a forward overflow
            continue
        d = df[df["quantity"] == q]
        R = d["replicate"].nunique()
        for label, bad in (("overflowed to inf/nan", ~np.isfinite(d["value"])),
                           ("underflowed to 0", d["value"] == 0)):
            hit = d[bad]
            if len(hit):
                # forward runs from layer 1 up, backward from layer L down
                layer = hit["layer"].max() if q in ("backward", "weight_grad") else hit["layer"].min()
                n = hit[hit["layer"] == layer]["replicate"].nunique()
                lines.append(f"{q} {label} at layer {layer} ({n}/{R} replicates)")
    return lines


def verdict(df: pd.DataFrame, k: float = 3.0) -> list[str]:
    """Per quantity: the last layer's replicate mean ± standard error, theory and their ratio;
    the worst |log10(mean/theory)| over layers; how many layers agree within k standard errors."""
    s = layer_summary(df)
    lines = [f"{'quantity':<12} {'layer':>5} {'measured ± s.e.':>22} {'theory':>10} {'ratio':>7}"
             f"  {'worst |log10 ratio|':>19}  within {k:g} s.e."]
    for q in QUANTITIES:
        d = s[s["quantity"] == q]
        if d.empty:
            continue
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = (d["mean"] / d["theory"]).to_numpy()
            logr = np.abs(np.log10(ratio))
            within = (np.abs(d["mean"] - d["theory"]) <= k * d["sem"]).to_numpy()
        last = d.iloc[-1]
        if q == "correlation":  # a cosine, near 0 or negative: differences, not log ratios
            diff = np.abs(d["mean"] - d["theory"]).to_numpy()
            i = int(np.nanargmax(np.where(np.isfinite(diff), diff, -1)))
            worst = f"|diff| {diff[i]:.3f} (layer {int(d['layer'].iloc[i])})"
            measured = f"{last['mean']:.4g} ± {last['sem']:.2g}"
            lines.append(f"{q:<12} {int(last['layer']):>5} {measured:>22} {last['theory']:>10.4g} "
                         f"{'':>7}  {worst:>19}  {int(within.sum())}/{len(d)} layers")
            continue
        if np.isfinite(logr).any():
            i = int(np.nanargmax(np.where(np.isfinite(logr), logr, -1)))
            worst = f"{logr[i]:.3f} (layer {int(d['layer'].iloc[i])})"
        else:
            worst = "n/a"
        measured = f"{last['mean']:.4g} ± {last['sem']:.2g}"
        lines.append(f"{q:<12} {int(last['layer']):>5} {measured:>22} {last['theory']:>10.4g} "
                     f"{ratio[-1]:>7.4g}  {worst:>19}  {int(within.sum())}/{len(d)} layers")
    lines += [f"warning: {e}" for e in numeric_events(df)]
    return lines
