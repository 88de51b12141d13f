"""Pennington, Schoenholz & Ganguli 2017: dynamical isometry, from a sweep with `jacobian=k`.

Per run (replicate r, layer l) the harness measures v^l_r = jacobian_rel_var, the relative
variance m_2/m_1² − 1 of the squared singular values λ of J^l = ∂h^l/∂x^0 (`harness.sim.jacobian`),
averaged over the k inputs. Its growth per layer is the per-replicate least-squares slope

    b_r = slope of v^l_r against l,   slope = mean_r b_r,   se = sd_r(b_r)/√R

against two predictions: the slope of the run's own theory column (free probability through the
forward prediction q^l), and the paper's closed form at the fixed point,

    μ_2(q*)/μ_1(q*)² − 1 − s_1,   μ_j(q) = E_{z~N(0,q)}[φ'(z)^{2j}],

s_1 = −1 for Gaussian, 0 for orthogonal weights. The spectrum itself comes from each run's
jacobian.parquet (the last layer's λ at every Jacobian input): the figure shows λ/m_1.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from harness.core import activations
from harness.core.init import scheme as scheme_entry
from harness.core.stats import least_squares_slope
from harness.outputs.plots import plt
from harness.outputs.results import JACOBIAN, METADATA, layer_matrix
from harness.sim import jacobian


def paper_slope(act: activations.Activation, scheme: str, q: float) -> float:
    """μ_2(q)/μ_1(q)² − 1 − s_1: the per-layer growth of σ²_{JJᵀ}/m_1² at a fixed point q."""
    qa = np.array([q])
    ratio = float(jacobian.mu(act, qa, 2)[0] / jacobian.mu(act, qa, 1)[0] ** 2)
    return ratio - 1.0 - scheme_entry(scheme).spectral_s1


def spectrum(run_dir: str | Path) -> np.ndarray:
    """The last layer's squared singular values over a run's replicates and inputs, each
    divided by its own Jacobian's mean m_1 (so every spectrum has mean 1): flat array."""
    d = pd.read_parquet(Path(run_dir) / JACOBIAN, columns=["replicate", "input", "value"])
    m1 = d.groupby(["replicate", "input"])["value"].transform("mean")
    with np.errstate(divide="ignore", invalid="ignore"):
        return (d["value"] / m1).to_numpy(dtype=np.float64)


def _sigma_w2(spec: dict) -> float:
    """g², which is σ_w² for the square layers of this experiment (nan without a gain)."""
    return math.nan if spec["gain"] is None else float(spec["gain"]) ** 2


def label(spec: dict) -> str:
    weights = "orthogonal" if scheme_entry(spec["scheme"]).spectral_s1 == 0 else "Gaussian"
    width = spec["width"] if spec["width"] is not None else spec["widths"]
    return (f"{spec['act']}, {weights} ({spec['scheme']}), σ_w²={_sigma_w2(spec):.4g}, "
            f"L={spec['depth']}, n={width}")


def table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per run: the measured slope of jacobian_rel_var ± se, its theory and the paper's
    slope; the last layer's relative variance and mean λ against theory; spectrum quantiles."""
    rows = []
    for run_dir, run in df.groupby("run_dir"):
        meta = json.loads((Path(run_dir) / METADATA).read_text())
        spec, crit = meta["spec"], meta.get("criticality", {})
        if not spec.get("jacobian"):
            raise ValueError(f"{run_dir}: needs jacobian > 0 (the Jacobian was not measured)")
        act = activations.get(spec["act"], **spec["act_params"])
        V, tV = layer_matrix(run, "jacobian_rel_var"), layer_matrix(run, "jacobian_rel_var", "theory")[0]
        M, tM = layer_matrix(run, "jacobian_mean"), layer_matrix(run, "jacobian_mean", "theory")[0]
        R, L = V.shape
        layers = np.arange(1, L + 1, dtype=np.float64)
        b = least_squares_slope(layers, V) if L >= 2 else np.full(R, np.nan)
        q = crit.get("q_star") or float(layer_matrix(run, "forward", "theory")[0][-1])
        lam = spectrum(run_dir)
        rows.append({
            "label": label(spec), "act": spec["act"], "scheme": spec["scheme"],
            "s1": scheme_entry(spec["scheme"]).spectral_s1, "sigma_w2": _sigma_w2(spec),
            "sigma_b2": spec["bias_std"] ** 2, "q_star": q, "chi_1": crit.get("chi_1"),
            "depth": L, "width": spec["width"], "replicates": R, "jacobian_inputs": spec["jacobian"],
            "slope": float(b.mean()), "slope_se": float(b.std(ddof=1) / math.sqrt(R)),
            "theory_slope": float(least_squares_slope(layers, tV)) if L >= 2 else math.nan,
            "paper_slope": paper_slope(act, spec["scheme"], q),
            "rel_var_last": float(V[:, -1].mean()),
            "rel_var_last_se": float(V[:, -1].std(ddof=1) / math.sqrt(R)),
            "theory_rel_var_last": float(tV[-1]),
            "mean_last": float(M[:, -1].mean()),
            "mean_last_se": float(M[:, -1].std(ddof=1) / math.sqrt(R)),
            "theory_mean_last": float(tM[-1]),
            "spectrum_q05": float(np.quantile(lam, 0.05)),
            "spectrum_q95": float(np.quantile(lam, 0.95)),
            "run_dir": run_dir,
        })
    return pd.DataFrame(rows).sort_values(["act", "s1", "depth", "width"]).reset_index(drop=True)


FLOOR = 1e-4  #: the density panel's left edge; λ/m_1 below it (relu's exact zeros) is counted


def figure(df: pd.DataFrame, rows: pd.DataFrame):
    """Left: jacobian_rel_var per layer, measured (replicate mean ± se) and theory (dashed).
    Right: the density of ln(λ/m_1) at the last layer above FLOOR, one line per run, with the
    fraction below FLOOR (relu's rank-deficient Jacobians: D zeroes half the directions)."""
    fig, axes = plt.subplots(1, 2, figsize=(10.5, 4.4), constrained_layout=True)
    lam_all = [spectrum(r.run_dir) for r in rows.itertuples()]
    finite = np.concatenate([x[np.isfinite(x)] for x in lam_all])
    hi = max(float(np.quantile(finite, 0.999)), 2.0) if len(finite) else 100.0
    bins = np.geomspace(FLOOR, hi, 60)
    for i, (r, lam) in enumerate(zip(rows.itertuples(), lam_all, strict=True)):
        run = df[df["run_dir"] == r.run_dir]
        V, tV = layer_matrix(run, "jacobian_rel_var"), layer_matrix(run, "jacobian_rel_var", "theory")[0]
        layers = np.arange(1, V.shape[1] + 1)
        col = f"C{i % 10}"
        axes[0].errorbar(layers, V.mean(0), yerr=V.std(0, ddof=1) / math.sqrt(len(V)), fmt="o",
                         ms=2.5, color=col,
                         label=f"{r.label}: {r.slope:.3g} ± {r.slope_se:.2g} per layer "
                               f"(paper {r.paper_slope:.3g})")
        axes[0].plot(layers, tV, "--", lw=0.9, color=col)
        lam = lam[np.isfinite(lam)]
        dens, edges = np.histogram(lam, bins=bins)
        width = np.diff(np.log(edges))
        below = float((lam < FLOOR).mean()) if len(lam) else math.nan
        axes[1].plot(np.sqrt(edges[1:] * edges[:-1]), dens / max(len(lam), 1) / width, "-",
                     lw=1.2, color=col, label=f"{below:.0%} below {FLOOR:g}")
    axes[0].set_xlabel("layer l")
    axes[0].set_ylabel(r"Var $\lambda$ / (mean $\lambda$)$^2$ of $J^l = \partial h^l/\partial x^0$")
    axes[1].set_xscale("log")
    axes[1].set_xlabel(r"$\lambda / m_1$ at the last layer (squared singular value / its mean)")
    axes[1].set_ylabel(r"density of ln($\lambda / m_1$)")
    axes[1].legend(fontsize=7, frameon=False, loc="upper left")
    for ax in axes:
        ax.grid(alpha=0.3, lw=0.4)
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncol=1,
               fontsize=7, frameon=False)
    fig.suptitle("Pennington et al. 2017: Jacobian spectra at criticality; measured (markers), "
                 "free-probability theory (dashed)", fontsize=9)
    return fig
