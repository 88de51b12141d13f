"""Poole et al. 2016 / Schoenholz et al. 2017: order to chaos in tanh networks, measured.

For each run of the ``meanfield`` scheme (σ_w², σ_b²) with correlated inputs (input_corr = c_0):

- q* convergence: the forward moment at the last layer (replicate geometric mean, se of its
  log) against the fixed point q* of q ↦ σ_w² V_φ(q) + σ_b² (`harness.theory.criticality`);
- χ_1: the measured backward growth per layer exp(−b), b the least-squares slope of ln δ² over
  the layers (`harness.papers.rate`), against the theory column's and χ_1;
- ξ_c: the gap g^l = c^l − c* between the measured mean cosine of two inputs' pre-activations
  and the correlation map's fixed point c* shrinks as |g^l| ∝ exp(−l/ξ) asymptotically, with
  ξ_c = −1/ln(σ_w² E[φ'(u_1)φ'(u_2)]) at c*. Per replicate, the least-squares slope of ln|g^l|
  over the window of layers where the mean-field gap is at least GAP_MIN gives ξ = −1/slope;
  the same slope of the theory column (the mean-field correlation map, iterated from c_0) is
  the finite-depth prediction, which tends to ξ_c as the gap closes.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from harness.core.stats import least_squares_slope
from harness.outputs.plots import plt
from harness.outputs.results import METADATA, layer_matrix

GAP_MIN = 0.05  # fit window: layers whose mean-field |c^l − c*| ≥ this (well above the noise)


def table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per run: σ_w², σ_b², q*, χ_1, c*, ξ_c, and the measured counterparts ± se."""
    rows = []
    for run_dir, run in df.groupby("run_dir"):
        meta = json.loads((Path(run_dir) / METADATA).read_text())
        spec, crit = meta["spec"], meta["criticality"]
        if spec["scheme"] != "meanfield" or spec["batch"] < 2:
            raise ValueError(f"{run_dir}: needs scheme meanfield and batch ≥ 2")
        R = spec["replicates"]
        F, B, C = (layer_matrix(run, q) for q in ("forward", "backward", "correlation"))
        tB, tC = layer_matrix(run, "backward", "theory")[0], layer_matrix(run, "correlation", "theory")[0]
        layers = np.arange(1, F.shape[1] + 1, dtype=np.float64)
        logF = np.log(F[:, -1])
        b = least_squares_slope(layers, np.log(B))
        c_star = crit["c_star"]
        window = np.abs(tC - c_star) >= GAP_MIN
        row = {
            "sigma_w2": spec["scheme_params"]["sigma_w2"], "sigma_b2": spec["scheme_params"]["sigma_b2"],
            "depth": spec["depth"], "width": spec["width"], "replicates": R,
            "phase": crit["phase"], "q_star": crit["q_star"], "chi_1": crit["chi_1"],
            "c_star": c_star, "xi_c": None if crit["xi_c"] in (None, "inf") else crit["xi_c"],
            "forward_last": float(np.exp(logF.mean())),
            "forward_last_log_se": float(logF.std(ddof=1) / math.sqrt(R)),
            "backward_growth": float(np.exp(-b.mean())),
            "backward_log_se": float(b.std(ddof=1) / math.sqrt(R)),
            "theory_backward_growth": float(np.exp(-least_squares_slope(layers, np.log(tB[None, :]))[0])),
            "corr_last": float(C[:, -1].mean()),
            "corr_last_se": float(C[:, -1].std(ddof=1) / math.sqrt(R)),
            "window": [int(layers[window].min()), int(layers[window].max())] if window.sum() >= 3
            else None,
            "run_dir": run_dir,
        }
        if window.sum() >= 3:
            with np.errstate(invalid="ignore", divide="ignore"):
                s = least_squares_slope(layers[window], np.log(np.abs(C[:, window] - c_star)))
            t = least_squares_slope(layers[window], np.log(np.abs(tC[window] - c_star))[None, :])[0]
            row.update(decay_slope=float(s.mean()), decay_slope_se=float(s.std(ddof=1) / math.sqrt(R)),
                       theory_decay_slope=float(t), xi_measured=float(-1 / s.mean()),
                       xi_theory_window=float(-1 / t))
        rows.append(row)
    return pd.DataFrame(rows).sort_values(["sigma_b2", "sigma_w2"]).reset_index(drop=True)


def figure(df: pd.DataFrame, rows: pd.DataFrame):
    """Left: |c^l − c*| per layer, measured (replicate mean ± se) and theory, with the
    asymptote ∝ exp(−l/ξ_c). Right: the forward moment per layer with q* as a dotted line."""
    fig, axes = plt.subplots(1, 2, figsize=(10.5, 4.2), constrained_layout=True)
    for i, r in enumerate(rows.itertuples()):
        run = df[df["run_dir"] == r.run_dir]
        C, tC = layer_matrix(run, "correlation"), layer_matrix(run, "correlation", "theory")[0]
        F, tF = layer_matrix(run, "forward"), layer_matrix(run, "forward", "theory")[0]
        layers = np.arange(1, C.shape[1] + 1)
        col = f"C{i % 10}"
        xi = "∞" if r.xi_c is None or (isinstance(r.xi_c, float) and math.isnan(r.xi_c)) else f"{r.xi_c:.3g}"
        lab = (f"σw²={r.sigma_w2:g} σb²={r.sigma_b2:g} ({r.phase}): c*={r.c_star:.3g}, "
               f"ξ_c={xi}")
        gap = np.abs(C - r.c_star)
        axes[0].errorbar(layers, gap.mean(0), yerr=gap.std(0, ddof=1) / math.sqrt(len(gap)),
                         fmt="o", ms=3, color=col, label=lab)
        axes[0].plot(layers, np.abs(tC - r.c_star), "--", lw=0.9, color=col)
        axes[1].plot(layers, np.exp(np.log(F).mean(0)), "o-", ms=3, lw=1, color=col)
        axes[1].plot(layers, tF, "--", lw=0.8, color=col)
        axes[1].axhline(r.q_star, ls=":", lw=0.8, color=col)
    axes[0].axhline(GAP_MIN, color="0.5", lw=0.6)
    axes[0].set_yscale("log")
    axes[0].set_ylabel(r"$|c^l - c^*|$ (correlation of two inputs)")
    axes[1].set_yscale("log")
    axes[1].set_ylabel(r"forward moment $q^l$ (dotted: $q^*$)")
    for ax in axes:
        ax.set_xlabel("layer l")
        ax.grid(alpha=0.3, lw=0.4)
    fig.legend(loc="outside lower center", ncol=2, fontsize=7, frameon=False)
    fig.suptitle("Poole et al. 2016 / Schoenholz et al. 2017 (tanh): measured (markers), "
                 "mean-field theory (dashed)", fontsize=9)
    return fig
