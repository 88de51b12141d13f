"""The console verdict: a few lines comparing measured and predicted per quantity."""

from __future__ import annotations

import numpy as np
import pandas as pd

from harness.core.spec import ALL_QUANTITIES
from harness.outputs import compare
from harness.outputs.results import landmarks


def numeric_events(df: pd.DataFrame) -> list[str]:
    """Where a measured quantity overflowed (inf/nan) or underflowed (0), first layer only."""
    values = df["value"].to_numpy(dtype=np.float64)
    if np.isfinite(values).all() and (values != 0).all():  # the usual run: one pass, no events
        return []
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
    """Per quantity: the last layer's replicate mean ± standard error, theory, their ratio, the 1/n
    theory (`theory_nlo`) and the ratio to it where the run has one, and the replicates' median
    over theory; the worst severity over layers, against the 1/n theory where defined
    (`harness.outputs.compare.kind`:
    |log10(mean/theory)| for positive quantities, |mean − theory| for signed ones such as the
    correlation); how many layers agree within k standard errors. Then a `heavy tail:` line per
    quantity whose mean is carried by a few replicates (`compare.layer_stats`' `dominated`), and
    the run's class (`compare.assess`, Bonferroni's k over all points) with its one-line reason."""
    s = compare.layer_stats(df)
    w = max(12, *(len(q) for q in _present(df)))
    nlo = bool(np.isfinite(s["theory_nlo"]).any())
    lines = [f"{'quantity':<{w}} {'layer':>5} {'measured ± s.e.':>22} {'theory':>10} {'ratio':>9}"
             + (f" {'1/n theory':>10} {'ratio':>7}" if nlo else "")
             + f" {'median r':>8}  {'worst |log10 ratio|':>19}  within {k:g} s.e."]
    tails = []
    for q in _present(df):
        d = s[s["quantity"] == q]
        if d.empty:
            continue
        last = d.iloc[-1]
        measured = f"{last['mean']:.4g} ± {last['sem']:.2g}"
        if not np.isfinite(d["theory"]).any():  # measured only (channel statistics)
            lines.append(f"{q:<{w}} {int(last['layer']):>5} {measured:>22} {'—':>10} {'':>9}"
                         + (f" {'':>10} {'':>7}" if nlo else "") + f" {'':>8}  {'no theory':>19}")
            continue
        kind = compare.kind(q)
        # severity and agreement against the reference: the 1/n theory where defined
        sev = kind.severity(d["mean"], d["reference"])
        with np.errstate(invalid="ignore"):
            within = (np.abs(d["mean"] - d["reference"]) <= k * d["sem"]).to_numpy()
        if np.isfinite(sev).any():
            i = int(np.nanargmax(np.where(np.isfinite(sev), sev, -1)))
            worst = f"{'|diff| ' if kind.signed else ''}{sev[i]:.3f} (layer {int(d['layer'].iloc[i])})"
        else:
            worst = "n/a"
        if kind.signed:  # a cosine, near 0 or negative: differences, not ratios
            ratio = median = ""
        else:
            with np.errstate(divide="ignore", invalid="ignore"):
                ratio = f"{last['mean'] / last['theory']:.4g}"
                median = f"{last['median'] / last['theory']:.3g}"
        extra = ""
        if nlo:
            has = np.isfinite(last["theory_nlo"])
            with np.errstate(divide="ignore", invalid="ignore"):
                r_nlo = (f"{last['mean'] / last['theory_nlo']:.4g}" if has and not kind.signed
                         else "")
            extra = f" {last['theory_nlo']:>10.4g} {r_nlo:>7}" if has else f" {'—':>10} {'':>7}"
        lines.append(f"{q:<{w}} {int(last['layer']):>5} {measured:>22} {last['theory']:>10.4g} "
                     f"{ratio:>9}{extra} {median:>8}  {worst:>19}  "
                     f"{int(within.sum())}/{len(d)} layers")
        heavy = d[d["dominated"].astype(bool)]
        if len(heavy):
            hs = kind.severity(heavy["mean"], heavy["reference"])  # the worst such layer
            at = heavy.iloc[int(np.argmax(np.where(np.isfinite(hs), hs, -1)))]
            tails.append(f"heavy tail: {q} mean carried by {int(at['n_half'])} of {int(at['n'])} "
                         f"replicates at layer {int(at['layer'])} ({len(heavy)} of {len(d)} layers); "
                         f"there mean {kind.factor(at['mean'], at['theory'])}, median "
                         f"{kind.factor(at['median'], at['theory'])} of theory: read the median")
    lines += tails
    a = compare.assess(s)
    if a.points:
        against = ("the 1/n theory where defined, else mean-field" if a.against == "1/n"
                   else "mean-field theory")
        lines.append(f"class: {a.cls} ({compare.CLASS_RULES[a.cls]}; k = {a.k:.2f} over {a.points} "
                     f"points; compared with {against})"
                     + (f": {a.reason}" if a.cls != compare.AGREES else ""))
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
