"""Yang, Pennington, Rao, Sohl-Dickstein & Schoenholz 2019, "A mean field theory of batch
normalization" (ICLR 2019), measured on arch=mlp with norm=batchnorm.

A batch-normalized MLP's gradients explode exponentially toward the input at a per-layer rate
λ(φ, B) > 1 that no initialization removes, and that falls toward 1 as the network approaches
the linear regime (`harness.theory.batchnorm`, docs/theory.md "BatchNorm"). Two sweeps:

- `yang2019`: pre position (x = φ(BN(h))), act ∈ {relu, tanh, linear, gelu} × B ∈ {4, 8, 16,
  32, 64}: the rate against B and the activation (linear: (B − 2)/(B − 3));
- `yang2019_sigma`: tanh, scheme=meanfield, σ_w² ∈ {0.05 … 16} × position {pre, post} × B ∈
  {8, 32}: pre's rate does not depend on σ_w² (BN removes W's scale); post's φ sees variance σ_w²,
  so small σ_w² is the linear regime and the rate falls to the linear chain's (B − 2)/(B − 3).

Per run (replicate r, layer l): b_r = the least-squares slope of ln backward^l_r over the
layers 2..L−1 (deep inside: layer 1 sees the inputs' Gram, layer L is the readout), measured rate
= exp(−mean_r b_r) (growth per layer toward the input), se = sd_r(b_r)/√R (the se of ln rate);
the same slope of the theory column is the theory's rate (equal to `explosion_rate` there).
The theory predicts E[backward^l], while b_r estimates the slope of E[ln backward^l] = ln E −
Var/2, and Var(ln backward^l) across networks grows toward the input by O(1/n) per layer (as
Hanin & Nica's spread does): `rate_lognormal` = exp(−mean b − s_v/2), s_v the slope of the
replicates' variance of ln backward^l over the same layers, removes that bias to first order.
At B = 4, 5 each layer's factor averages per-unit terms of infinite variance, and ln of that
average sits well below ln of its mean: `typical_rate` (`batchnorm.typical_rate`, pre position,
B ≤ 5) is the theory's rate for a typical network of the run's width under independent layer
factors (docs/theory.md, "The mean and the typical network at B = 4, 5").
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from harness.core import activations
from harness.core.quadrature import gaussian_expectation
from harness.core.stats import least_squares_slope
from harness.outputs.plots import plt
from harness.outputs.results import METADATA, layer_matrix
from harness.theory import batchnorm

#: B values the theory curves are drawn at
CURVE_B = (4, 5, 6, 8, 11, 16, 23, 32, 45, 64)
#: σ_w² values of the post-position theory curve
CURVE_S2 = (0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0)


def _sigma_w2(spec: dict[str, Any]) -> float | None:
    return spec["scheme_params"].get("sigma_w2")


def label(spec: dict[str, Any]) -> str:
    """act · position · B (· σ_w² for the meanfield scheme)."""
    s2 = _sigma_w2(spec)
    extra = f" σw²={s2:g}" if s2 is not None else ""
    return f"{spec['act']} {spec['norm_position']} B={spec['batch']}{extra}"


def table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per run: settings, the measured rate ± se (of ln rate), the theory's, the linear
    chain's (B − 2)/(B − 3) and the B → ∞ limit E[φ'(z)²]/Var φ(z) of the pre position."""
    rows = []
    for run_dir, run in df.groupby("run_dir"):
        meta = json.loads((Path(run_dir) / METADATA).read_text())
        spec = meta["spec"]
        if spec["arch"] != "mlp" or spec["norm"] != "batchnorm":
            raise ValueError(f"{run_dir}: needs arch=mlp norm=batchnorm")
        Bk, tB = layer_matrix(run, "backward"), layer_matrix(run, "backward", "theory")[0]
        R, L = Bk.shape
        if L < 5:
            raise ValueError(f"{run_dir}: needs depth ≥ 5 (the fit uses layers 2..L−1)")
        window = np.arange(1, L - 1)  # 0-based: layers 2..L−1
        layers = window + 1.0
        with np.errstate(divide="ignore", invalid="ignore"):
            b = least_squares_slope(layers, np.log(Bk[:, window]))
            tb = least_squares_slope(layers, np.log(tB[window])[None, :])[0]
            # the log-normal correction: E ln B^l = ln E B^l − Var(ln B^l)/2, and the spread
            # across networks grows toward the input (O(1/n) per layer), which biases b low
            s_var = least_squares_slope(layers, np.log(Bk[:, window]).var(0, ddof=1)[None, :])[0]
        act = activations.get(spec["act"], **spec["act_params"])
        mean = float(gaussian_expectation(act.phi, 1.0))
        B = spec["batch"]
        rows.append({
            "label": label(spec), "act": spec["act"], "position": spec["norm_position"],
            "batch": B, "sigma_w2": _sigma_w2(spec), "depth": L, "width": spec["width"],
            "replicates": R,
            "rate": float(np.exp(-b.mean())), "log_rate_se": float(b.std(ddof=1) / math.sqrt(R)),
            "rate_lognormal": float(np.exp(-b.mean() - s_var / 2)),
            "theory_rate": float(np.exp(-tb)),
            # B = 4, 5: the per-unit terms' infinite variance (docs/theory.md); B ≥ 6: ≈ theory
            "typical_rate": (batchnorm.typical_rate(act, B, spec["width"])
                             if spec["norm_position"] == "pre" and 4 <= B <= 5 else math.nan),
            "linear_rate": batchnorm.linear_rate(B) if B > 3 else math.inf,
            "large_batch_rate": float(act.D(1.0)) / (float(act.V(1.0)) - mean * mean),
            "backward_first": float(Bk[:, 0].mean()), "theory_backward_first": float(tB[0]),
            "run_dir": run_dir,
        })
    return (pd.DataFrame(rows).sort_values(["position", "act", "sigma_w2", "batch"],
                                           na_position="first").reset_index(drop=True))


def figure(df: pd.DataFrame, rows: pd.DataFrame):
    """Left: the rate against B per activation (measured ± se markers, theory lines, the linear
    chain dotted). Right: the rate against σ_w² (tanh, pre and post, B = 8, 32) with the
    post-position theory and (B − 2)/(B − 3)."""
    byB = rows[rows["sigma_w2"].isna()]
    bys = rows[rows["sigma_w2"].notna()]
    panels = int(len(byB) > 0) + int(len(bys) > 0)
    fig, axs = plt.subplots(1, panels, figsize=(5.5 * panels, 4.2), constrained_layout=True,
                            squeeze=False)
    axes = list(axs[0])
    if len(byB) == 0:
        axes.insert(0, None)
    for i, (act_name, grp) in enumerate(byB.groupby("act")):
        col = f"C{i % 10}"
        err = np.vstack([grp["rate"] * (1 - np.exp(-grp["log_rate_se"])),
                         grp["rate"] * (np.exp(grp["log_rate_se"]) - 1)])
        axes[0].errorbar(grp["batch"], grp["rate"], yerr=err, fmt="o", ms=4, color=col,
                         label=f"{act_name} measured")
        act = activations.get(act_name)
        axes[0].plot(CURVE_B, [batchnorm.explosion_rate(act, b) for b in CURVE_B], "-", lw=0.9,
                     color=col)
    if len(byB):
        axes[0].plot(CURVE_B, [batchnorm.linear_rate(b) for b in CURVE_B], ":", color="0.4",
                     lw=0.8, label="(B−2)/(B−3)")
        axes[0].axhline(1.0, color="0.7", lw=0.6)
        axes[0].set_xscale("log")
        axes[0].minorticks_off()
        axes[0].set_xticks([4, 8, 16, 32, 64], ["4", "8", "16", "32", "64"])
        axes[0].set_xlabel("batch size B")
        axes[0].set_ylabel("gradient growth per layer λ (pre-norm)")
    for i, ((pos, B), grp) in enumerate(bys.groupby(["position", "batch"])):
        col = f"C{(i + 4) % 10}"
        err = np.vstack([grp["rate"] * (1 - np.exp(-grp["log_rate_se"])),
                         grp["rate"] * (np.exp(grp["log_rate_se"]) - 1)])
        axes[1].errorbar(grp["sigma_w2"], grp["rate"], yerr=err, fmt="o" if pos == "post" else "s",
                         ms=4, color=col, label=f"{grp['act'].iloc[0]} {pos} B={B} measured")
        act = activations.get(grp["act"].iloc[0])
        theory = [batchnorm.explosion_rate(act, int(B), s, position=pos) for s in CURVE_S2]
        axes[1].plot(CURVE_S2, theory, "-", lw=0.9, color=col)
        axes[1].axhline(batchnorm.linear_rate(int(B)), ls=":", lw=0.8, color=col)
    if len(bys):
        axes[1].set_xscale("log")
        axes[1].set_xlabel("σ_w²  (post: small σ_w² is the linear regime)")
        axes[1].set_ylabel("gradient growth per layer λ (dotted: linear chain)")
    for ax in axes:
        if ax is None:
            continue
        ax.grid(alpha=0.3, which="both", lw=0.4)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, frameon=False)
    fig.suptitle("Yang et al. 2019: BatchNorm MLPs' gradients explode at every σ_w², less so "
                 "toward the linear regime and large B; measured (markers), theory (lines)",
                 fontsize=9)
    return fig
