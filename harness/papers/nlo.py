"""The 1/n theory against measurement: the forward moment at the last layer over the mean-field
prediction and over the next-to-leading-order one (`harness.theory.nlo`), against L/n.

Per run: m = replicate mean of F^L, its standard error se, r_mf = m/q^L and r_nlo = m/(q^L + δ^L),
each with the error bar se/prediction, and z = (m − prediction)/se for both. The mean-field
ratio departs from 1 linearly in L/n; the NLO one stays at 1 until O((L/n)²) terms show.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from harness.outputs.plots import plt


def table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per run: act, depth, width, L/n, replicates, the ratios to both predictions with
    their error bars and z-scores."""
    rows = []
    for run_dir, run in df.groupby("run_dir"):
        depth = int(run["depth"].iloc[0])
        d = run[(run["quantity"] == "forward") & (run["layer"] == depth)]
        if d["theory_nlo"].isna().all():
            raise ValueError(f"{run_dir}: no theory_nlo")
        v = d["value"].to_numpy(dtype=float)
        m, se = float(v.mean()), float(v.std(ddof=1) / np.sqrt(len(v)))
        mf, nlo = float(d["theory"].iloc[0]), float(d["theory_nlo"].iloc[0])
        width = int(run["width"].iloc[0])
        rows.append({"act": str(run["act"].iloc[0]), "depth": depth, "width": width,
                     "L_over_n": depth / width, "replicates": len(v),
                     "ratio_meanfield": m / mf, "ratio_nlo": m / nlo, "se_meanfield": se / mf,
                     "se_nlo": se / nlo, "z_meanfield": (m - mf) / se, "z_nlo": (m - nlo) / se,
                     "run_dir": run_dir})
    return pd.DataFrame(rows).sort_values(["act", "L_over_n", "depth"]).reset_index(drop=True)


def figure(rows: pd.DataFrame):
    """One panel per activation: measured/mean-field (circles) and measured/NLO (squares) at the
    last layer against L/n, ± one standard error, colour by width."""
    acts = list(dict.fromkeys(rows["act"]))
    fig, axes = plt.subplots(1, len(acts), figsize=(4.2 * len(acts), 3.8), squeeze=False,
                             sharey=True, constrained_layout=True)
    widths = sorted(rows["width"].unique())
    for ax, act in zip(axes[0], acts, strict=True):
        a = rows[rows["act"] == act]
        for i, w in enumerate(widths):
            g = a[a["width"] == w]
            ax.errorbar(g["L_over_n"], g["ratio_meanfield"], yerr=g["se_meanfield"], fmt="o",
                        mfc="none", ms=5, capsize=2, color=f"C{i}",
                        label=f"n = {w}: / mean-field" if act == acts[0] else None)
            ax.errorbar(g["L_over_n"], g["ratio_nlo"], yerr=g["se_nlo"], fmt="s", ms=4,
                        capsize=2, color=f"C{i}", label=f"n = {w}: / NLO" if act == acts[0] else None)
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_xscale("log")
        ax.set_xlabel("L / n")
        ax.set_title(f"{act} + xavier: forward at layer L", fontsize=9)
        ax.grid(alpha=0.3, lw=0.4)
    axes[0][0].set_ylabel("measured mean / prediction")
    axes[0][0].legend(fontsize=6.5, frameon=False, ncol=2)
    fig.suptitle("mean-field (open circles) vs 1/n theory (filled squares)", fontsize=9)
    return fig
