"""Xiong et al. 2020, "On layer normalization in the transformer architecture" (ICML 2020),
measured on resmlp with FFN-like branches (W₂ φ(W₁ ·), residual.branch_depth = 2) and LayerNorm.

Post-LN: x^l = LN(x^{l-1} + f(x^{l-1})). Going backward each block multiplies the gradient's
second moment by (1 + χ)/(1 + B) at infinite width (the sum's second moment is 1 + B, the branch's
Jacobian adds χ): where the branch's output variance B exceeds its Jacobian's gain χ (attention in
a transformer; here the biases, B = σ_w² V_φ + σ_b², χ = ρ² D_φ) the gradients are largest at the
blocks near the output and decay toward the input, and the last block's gradient does not depend
on the depth L. Pre-LN: x^l = x^{l-1} + f(LN(x^{l-1})) lets the stream grow, q^L ≈ 1 + L·B; with
the final LayerNorm of a pre-LN transformer every gradient is divided by q^L (its backward at
infinite width, O(1/n) projection aside), so the gradients shrink like 1/L, evenly over the
blocks. (With bias-free relu branches B = χ exactly: the post-LN profile is then flat.)

Per run (replicate r, block l): w^l_r, the weight-gradient moment of the branch's last layer W₂
(`weight_grad` with branch_layer 2, Xiong et al.'s W^{2,l}). Numbers per run:

- `last` (and `first`): the replicate geometric mean of w^L (w^1), ± the se of its log, and the
  theory's; `last_over_first` = w^L/w^1 (geometric mean over replicates) and the theory's;
- pre-LN also `final_ln_last` = w^L / F^L per replicate (the final LayerNorm's 1/q^L), with
  theory.

Across depths, per position: `depth_exponent` = the least-squares slope of ln(last) against ln L
(post ≈ 0; pre with the final LayerNorm ≈ −1), measured and from theory.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from harness.core.stats import least_squares_slope
from harness.outputs.plots import plt
from harness.outputs.results import METADATA, layer_matrix


def _w2(run: pd.DataFrame, column: str = "value") -> np.ndarray:
    """The weight-gradient moments of the branches' last layers, (R, L)."""
    d = run[(run["quantity"] == "weight_grad") & (run["branch_layer"] == run["branch_layer"].max())]
    m = d.pivot(index="replicate", columns="layer", values=column).to_numpy(dtype=np.float64)
    return m


def _geo(v: np.ndarray) -> tuple[float, float]:
    """(geometric mean, se of its log) over replicates of v (R,)."""
    lv = np.log(v)
    return float(np.exp(lv.mean())), float(lv.std(ddof=1) / math.sqrt(len(lv)))


def table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per run (module doc)."""
    rows = []
    for run_dir, run in df.groupby("run_dir"):
        meta = json.loads((Path(run_dir) / METADATA).read_text())
        spec: dict[str, Any] = meta["spec"]
        if spec["arch"] != "resmlp" or spec["norm"] == "none":
            raise ValueError(f"{run_dir}: needs arch=resmlp with a norm")
        W, tW = _w2(run), _w2(run, "theory")[0]
        F, tF = layer_matrix(run, "forward"), layer_matrix(run, "forward", "theory")[0]
        R, L = W.shape
        last, last_se = _geo(W[:, -1])
        first, first_se = _geo(W[:, 0])
        ratio, ratio_se = _geo(W[:, -1] / W[:, 0])
        fin, fin_se = _geo(W[:, -1] / F[:, -1])
        rows.append({
            "label": f"{spec['norm_position']}-LN, L={L}", "position": spec["norm_position"],
            "depth": L, "width": spec["width"], "bias_std": spec["bias_std"], "replicates": R,
            "last": last, "last_log_se": last_se, "theory_last": float(tW[-1]),
            "first": first, "first_log_se": first_se, "theory_first": float(tW[0]),
            "last_over_first": ratio, "last_over_first_log_se": ratio_se,
            "theory_last_over_first": float(tW[-1] / tW[0]),
            "final_ln_last": fin, "final_ln_last_log_se": fin_se,
            "theory_final_ln_last": float(tW[-1] / tF[-1]), "run_dir": run_dir,
        })
    out = pd.DataFrame(rows).sort_values(["position", "depth"]).reset_index(drop=True)
    for pos, g in out.groupby("position"):
        col = "final_ln_last" if pos == "pre" else "last"
        lnL = np.log(g["depth"].to_numpy(np.float64))
        if len(g) >= 2:
            out.loc[g.index, "depth_exponent"] = float(
                least_squares_slope(lnL, np.log(g[col].to_numpy(np.float64))[None, :])[0])
            out.loc[g.index, "theory_depth_exponent"] = float(
                least_squares_slope(lnL, np.log(g[f"theory_{col}"].to_numpy(np.float64))[None, :])[0])
    return out


def figure(df: pd.DataFrame, rows: pd.DataFrame):
    """Left: w^l (the branches' last layers) against l/L, post-LN solid, pre-LN (with the final
    LayerNorm's 1/F^L) dashed, theory dotted. Right: the last block's gradient against L."""
    fig, axes = plt.subplots(1, 2, figsize=(10.5, 4.2), constrained_layout=True)
    depths = sorted(rows["depth"].unique())
    for r in rows.itertuples():
        run = df[df["run_dir"] == r.run_dir]
        W, tW = _w2(run), _w2(run, "theory")[0]
        L = W.shape[1]
        scale = np.ones(W.shape[0]) if r.position == "post" else 1.0 / layer_matrix(run, "forward")[:, -1]
        tscale = 1.0 if r.position == "post" else 1.0 / layer_matrix(run, "forward", "theory")[0][-1]
        x = np.arange(1, L + 1) / L
        col = f"C{depths.index(r.depth)}"
        geo = np.exp(np.log(W * scale[:, None]).mean(0))
        axes[0].plot(x, geo, "o-" if r.position == "post" else "s--", ms=2.5, lw=1, color=col,
                     label=f"{r.position}-LN L={L}")
        axes[0].plot(x, tW * tscale, ":", lw=0.8, color=col)
    for pos, g in rows.groupby("position"):
        col = "final_ln_last" if pos == "pre" else "last"
        axes[1].errorbar(g["depth"], g[col], yerr=g[col] * g[f"{col}_log_se"],
                         fmt="o-" if pos == "post" else "s--",
                         label=f"{pos}-LN" + (" (with the final LayerNorm)" if pos == "pre" else ""))
        axes[1].plot(g["depth"], g[f"theory_{col}"], ":", color="0.4", lw=0.8)
    axes[0].set_xlabel("relative block l/L (1: output side)")
    axes[0].set_ylabel("weight-gradient moment of W₂ (geometric mean)")
    axes[1].set_xlabel("depth L (blocks)")
    axes[1].set_ylabel("last block's weight-gradient moment")
    axes[1].set_xscale("log")
    for ax in axes:
        ax.set_yscale("log")
        ax.grid(alpha=0.3, which="both", lw=0.4)
        ax.legend(fontsize=7, frameon=False)
    fig.suptitle("Xiong et al. 2020: post-LN's gradients peak near the output and do not shrink "
                 "with depth; pre-LN's shrink like 1/L (theory dotted)", fontsize=9)
    return fig
