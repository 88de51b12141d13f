"""Hanin & Rolnick 2018 / Hanin & Nica 2019: the spread of ln‖output‖² across networks.

For relu, Gaussian weights at He init (σ_w² = 2), no bias and one input (batch = 1), the
forward moment F^l = ‖h^l‖²/n_l of one network is an exact product of independent factors
(`harness.theory.finite_width`): F^L/q^L = X_0 · B_1 ⋯ B_{L−1} · A_L with

    X_0 = χ²_{n_0}/n_0,   A_L = χ²_{n_L}/n_L,   B_k = χ²_{K_k}/(n_k/2),  K_k ~ Bin(n_k, 1/2)

(K_k: the active units of layer k; given K, the sum of their squared standard pre-activations is
χ²_K). With E[ln χ²_m] = ψ(m/2) + ln 2 and Var[ln χ²_m] = ψ'(m/2) (digamma ψ, trigamma ψ'), the
exact variance is

    Var ln F^L = ψ'(n_0/2) + Σ_{k=1}^{L−1} (E_K[ψ'(K_k/2)] + Var_K[ψ(K_k/2)]) + ψ'(n_L/2)
               ≈ 2/n_0 + 5 Σ_{k=1}^{L−1} 1/n_k + 2/n_L      (ψ'(m/2) ≈ 2/m, Var ψ(K/2) ≈ 1/n)

— growing with β = Σ 1/n_k, not with the depth L by itself (K_k conditioned on K_k ≥ 1: a
layer with no active unit, probability 2^−n_k, kills the network). `table` measures the sample
variance of ln F^L over the R replicates with its standard error from the fourth moment,
se = √((m_4 − s⁴)/R) (no normality assumed).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import special, stats

from harness.outputs.plots import plt
from harness.outputs.results import METADATA


def layer_log_variance(n: int) -> float:
    """Var ln B for a relu layer of width n: E_K[ψ'(K/2)] + Var_K[ψ(K/2)], K ~ Bin(n, 1/2) | K ≥ 1."""
    k = np.arange(1, n + 1)
    p = stats.binom.pmf(k, n, 0.5)
    p = p / p.sum()
    psi = special.digamma(k / 2)
    return float(p @ special.polygamma(1, k / 2) + p @ psi**2 - (p @ psi) ** 2)


def log_variance(widths: Sequence[int]) -> float:
    """Exact Var ln F^L for widths n_0..n_L (module doc): ψ'(n_0/2) + Σ_k Var ln B_k + ψ'(n_L/2)."""
    n = [int(w) for w in widths]
    inner = sum(layer_log_variance(w) for w in n[1:-1])
    return float(special.polygamma(1, n[0] / 2) + inner + special.polygamma(1, n[-1] / 2))


def beta(widths: Sequence[int]) -> float:
    """β = Σ_{l=1}^{L} 1/n_l (Hanin & Nica's sum of reciprocal widths)."""
    return float(sum(1.0 / w for w in widths[1:]))


def table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per run: depth, width, β, measured Var ln F^L ± se, the exact theory and 5β."""
    rows = []
    for run_dir, run in df.groupby("run_dir"):
        meta = json.loads((Path(run_dir) / METADATA).read_text())
        spec = meta["spec"]
        if spec["act"] != "relu" or spec["batch"] != 1 or spec["bias_std"] > 0:
            raise ValueError(f"{run_dir}: needs relu, batch=1 and no bias")
        d = run[(run["quantity"] == "forward") & (run["layer"] == spec["depth"])]
        with np.errstate(divide="ignore"):
            x = np.log(d["value"].to_numpy(dtype=np.float64))
        x = x[np.isfinite(x)]  # a dead network (probability ≈ L·2^−n) has no log
        v = float(x.var(ddof=1))
        m4 = float(((x - x.mean()) ** 4).mean())
        rows.append({
            "depth": spec["depth"], "width": spec["width"], "beta": beta(spec["widths"]),
            "replicates": len(x), "var_log": v, "var_log_se": math.sqrt(max(m4 - v * v, 0) / len(x)),
            "theory": log_variance(spec["widths"]), "five_beta": 5 * beta(spec["widths"]),
            "run_dir": run_dir,
        })
    return pd.DataFrame(rows).sort_values(["beta", "depth"]).reset_index(drop=True)


def figure(rows: pd.DataFrame):
    """Var ln F^L against β (left) and against depth (right), measured ± se and theory."""
    fig, axes = plt.subplots(1, 2, figsize=(9.5, 3.9), constrained_layout=True)
    for ax, x, name in ((axes[0], "beta", r"$\beta = \sum_l 1/n_l$"), (axes[1], "depth", "depth L")):
        for i, (w, g) in enumerate(rows.groupby("width")):
            ax.errorbar(g[x], g["var_log"], yerr=g["var_log_se"], fmt="o", ms=5, capsize=2,
                        color=f"C{i}", label=f"width {w}: measured ± se")
            ax.plot(g[x], g["theory"], "x", ms=8, color=f"C{i}")
        ax.set_xlabel(name)
        ax.set_ylabel(r"Var$_r$ ln $F^L$ across networks")
        ax.grid(alpha=0.3, lw=0.4)
    b = np.linspace(0, rows["beta"].max() * 1.05, 50)
    axes[0].plot(b, 5 * b, "k--", lw=0.8, label=r"$5\beta$ (leading order)")
    axes[0].legend(fontsize=7, frameon=False)
    axes[1].set_xscale("log", base=2)
    depths = sorted(rows["depth"].unique())
    axes[1].set_xticks(depths, [str(d) for d in depths])
    axes[1].minorticks_off()
    fig.suptitle("Hanin & Nica 2019: relu, He init, one input; × exact theory", fontsize=9)
    return fig
