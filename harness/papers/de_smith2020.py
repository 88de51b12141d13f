"""De & Smith 2020, "Batch normalization biases residual blocks towards the identity function in
deep networks" (NeurIPS 2020), measured on resmlp.

A pre-norm BatchNorm residual stack x^l = x^{l-1} + α f(BN(x^{l-1})) feeds every branch a
unit-variance input, so each block adds the same variance B = σ_w² V_φ(1) (+ σ_b²): the stream
grows linearly, q^l = q_0 + l·α²B (l + 1 for kaiming relu, B = 1), and the branch's share of
block l's output, α² B^l / q^l, shrinks like 1/(l + 1): deep BN ResNets start close to the
identity. Without the norm (kaiming relu) every block doubles the stream (q^l = 2^l); with SkipInit
(α = 0) the stream stays at q_0.

Per run (replicate r, block l): the stream moment F^l_r (forward) and the branch moment B^l_r
(branch). Numbers:

- `linear_slope` (± se over replicates): the least-squares slope of F^l against l (expected α²B;
  with the theory's slope beside it), and `forward_last` / `theory_forward_last`;
- `log2_rate`: the mean per-block slope of log2 F^l (1 for doubling, 0 for flat);
- `share_last`: the branch share α² B^L / F^L at the last block (replicate mean ± se) against
  1/(L + 1) (`share_theory` from the theory columns).
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


def _label(spec: dict[str, Any]) -> str:
    alpha = spec["residual_alpha"]
    if alpha == 0:
        return f"SkipInit (α=0), norm={spec['norm']}"
    return f"norm={spec['norm']}, α={alpha:g}"


def table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per run: the numbers of the module doc."""
    rows = []
    for run_dir, run in df.groupby("run_dir"):
        meta = json.loads((Path(run_dir) / METADATA).read_text())
        spec = meta["spec"]
        if spec["arch"] != "resmlp":
            raise ValueError(f"{run_dir}: needs arch=resmlp")
        F, tF = layer_matrix(run, "forward"), layer_matrix(run, "forward", "theory")[0]
        Bm, tB = layer_matrix(run, "branch"), layer_matrix(run, "branch", "theory")[0]
        R, L = F.shape
        layers = np.arange(1, L + 1, dtype=np.float64)
        a2 = spec["residual_alpha"] ** 2
        lin = least_squares_slope(layers, F)
        with np.errstate(divide="ignore", invalid="ignore"):
            log2 = least_squares_slope(layers, np.log2(F))
        share = a2 * Bm[:, -1] / F[:, -1]
        rows.append({
            "label": _label(spec), "norm": spec["norm"], "alpha": spec["residual_alpha"],
            "depth": L, "width": spec["width"], "batch": spec["batch"], "replicates": R,
            "linear_slope": float(lin.mean()), "linear_slope_se": float(lin.std(ddof=1) / math.sqrt(R)),
            "theory_linear_slope": float(least_squares_slope(layers, tF[None, :])[0]),
            "log2_rate": float(log2.mean()), "log2_rate_se": float(log2.std(ddof=1) / math.sqrt(R)),
            "theory_log2_rate": float(least_squares_slope(layers, np.log2(tF)[None, :])[0]),
            "forward_last": float(F[:, -1].mean()),
            "forward_last_se": float(F[:, -1].std(ddof=1) / math.sqrt(R)),
            "theory_forward_last": float(tF[-1]),
            "share_last": float(share.mean()), "share_last_se": float(share.std(ddof=1) / math.sqrt(R)),
            "share_theory": float(a2 * tB[-1] / tF[-1]), "one_over_L_plus_1": 1.0 / (L + 1),
            "run_dir": run_dir,
        })
    return pd.DataFrame(rows).sort_values(["alpha", "norm"]).reset_index(drop=True)


def figure(df: pd.DataFrame, rows: pd.DataFrame):
    """Left: the stream moment per block, log scale (measured: replicate mean with markers;
    theory dashed), with l + 1 and 2^l dotted. Right: the branch share α²B^l/F^l against
    1/(l + 1)."""
    fig, axes = plt.subplots(1, 2, figsize=(10.5, 4.2), constrained_layout=True)
    L = 1
    for i, r in enumerate(rows.itertuples()):
        run = df[df["run_dir"] == r.run_dir]
        F, tF = layer_matrix(run, "forward"), layer_matrix(run, "forward", "theory")[0]
        Bm = layer_matrix(run, "branch")
        L = F.shape[1]
        layers = np.arange(1, L + 1)
        col = f"C{i % 10}"
        axes[0].plot(layers, F.mean(0), "o-", ms=2.5, lw=1, color=col, label=r.label)
        axes[0].plot(layers, tF, "--", lw=0.8, color=col)
        if r.alpha > 0:
            share = (r.alpha**2 * Bm / F).mean(0)
            axes[1].plot(layers, share, "o-", ms=2.5, lw=1, color=col, label=r.label)
    layers = np.arange(1, L + 1)
    axes[0].plot(layers, layers + 1.0, ":", color="0.4", lw=0.8, label="l + 1")
    axes[0].plot(layers, 2.0**layers, ":", color="0.7", lw=0.8, label="2^l")
    axes[1].plot(layers, 1.0 / (layers + 1), ":", color="0.4", lw=0.8, label="1/(l + 1)")
    axes[0].set_ylabel("stream moment mean (x^l)²")
    axes[1].set_ylabel("branch share α² mean f_l² / mean (x^l)²")
    for ax in axes:
        ax.set_yscale("log")
        ax.set_xlabel("block l")
        ax.grid(alpha=0.3, which="both", lw=0.4)
        ax.legend(fontsize=7, frameon=False)
    fig.suptitle("De & Smith 2020: BatchNorm (pre-norm) keeps a ResNet's stream linear in depth; "
                 "measured (markers), theory (dashed)", fontsize=9)
    return fig
