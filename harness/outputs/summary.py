"""The console verdict: a few lines comparing measured and predicted per quantity."""

from __future__ import annotations

import numpy as np
import pandas as pd

from harness.core.spec import ALL_QUANTITIES
from harness.outputs.results import landmarks, layer_summary


def numeric_events(df: pd.DataFrame) -> list[str]:
    """Where a measured quantity overflowed (inf/nan) or underflowed (0), first layer only."""
    lines = []
    for q in _present(df):
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
    w = max(12, *(len(q) for q in _present(df)))
    lines = [f"{'quantity':<{w}} {'layer':>5} {'measured ± s.e.':>22} {'theory':>10} {'ratio':>7}"
             f"  {'worst |log10 ratio|':>19}  within {k:g} s.e."]
    for q in _present(df):
        d = s[s["quantity"] == q]
        if d.empty:
            continue
        last = d.iloc[-1]
        if not np.isfinite(d["theory"]).any():  # measured only (channel statistics)
            measured = f"{last['mean']:.4g} ± {last['sem']:.2g}"
            lines.append(f"{q:<{w}} {int(last['layer']):>5} {measured:>22} {'—':>10} {'':>7}"
                         f"  {'no theory':>19}")
            continue
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = (d["mean"] / d["theory"]).to_numpy()
            logr = np.abs(np.log10(ratio))
            within = (np.abs(d["mean"] - d["theory"]) <= k * d["sem"]).to_numpy()
        if q == "correlation":  # a cosine, near 0 or negative: differences, not log ratios
            diff = np.abs(d["mean"] - d["theory"]).to_numpy()
            i = int(np.nanargmax(np.where(np.isfinite(diff), diff, -1)))
            worst = f"|diff| {diff[i]:.3f} (layer {int(d['layer'].iloc[i])})"
            measured = f"{last['mean']:.4g} ± {last['sem']:.2g}"
            lines.append(f"{q:<{w}} {int(last['layer']):>5} {measured:>22} {last['theory']:>10.4g} "
                         f"{'':>7}  {worst:>19}  {int(within.sum())}/{len(d)} layers")
            continue
        if np.isfinite(logr).any():
            i = int(np.nanargmax(np.where(np.isfinite(logr), logr, -1)))
            worst = f"{logr[i]:.3f} (layer {int(d['layer'].iloc[i])})"
        else:
            worst = "n/a"
        measured = f"{last['mean']:.4g} ± {last['sem']:.2g}"
        lines.append(f"{q:<{w}} {int(last['layer']):>5} {measured:>22} {last['theory']:>10.4g} "
                     f"{ratio[-1]:>7.4g}  {worst:>19}  {int(within.sum())}/{len(d)} layers")
    lines += [f"warning: {e}" for e in numeric_events(df)]
    return lines


def _present(df: pd.DataFrame) -> list[str]:
    """The quantities in df, in the canonical order."""
    have = set(df["quantity"].unique())
    return [q for q in ALL_QUANTITIES if q in have]


def position_lines(pos: pd.DataFrame) -> list[str]:
    """For a conv run: centre, edge and corner (`landmarks`), measured ± s.e. against the
    position-resolved theory, for forward at the last layer and backward at the first (where
    the border deficits are largest)."""
    lines = [f"{'at position':<17} {'layer':>5} {'measured ± s.e.':>22} {'theory':>10} {'ratio':>7}"]
    for q in ("forward", "backward"):
        d = pos[pos["quantity"] == q]
        layer = int(d["layer"].max()) if q == "forward" else int(d["layer"].min())
        d = d[d["layer"] == layer]
        for name, where in landmarks(d).items():
            if where is None:
                continue
            row = d[where].iloc[0]
            measured = f"{row['value']:.4g} ± {row['sem']:.2g}"
            with np.errstate(divide="ignore", invalid="ignore"):
                ratio = row["value"] / row["theory"]
            lines.append(f"{q + ' ' + name:<17} {layer:>5} {measured:>22} {row['theory']:>10.4g} "
                         f"{ratio:>7.4g}")
    return lines
