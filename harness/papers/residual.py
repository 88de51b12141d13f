"""Residual-network paper reproductions (issue 12): De & Smith 2020, Yang & Schoenholz 2017,
Brock et al. 2021, Hanin & Rolnick 2018 (residual failure modes), Fixup (Zhang et al. 2019).

Each `*_table` reads a sweep's runs (the tidy frame of `harness.outputs.results.load` and each
run's metadata.json) and returns one row per run of measured numbers, each with its standard
error over the R replicates (networks), beside the mean-field prediction of the run's `theory`
column and, where the paper states one, the paper's closed form. Per-replicate statistics:

- a per-block log rate b_r = least-squares slope of ln v^l_r against l (`harness.papers.rate`);
- a log-log exponent p_r = slope of ln v^l_r against ln l over the window l ≥ L/2
  (Yang & Schoenholz's polynomial growth: v ∝ l^p);
- a √l slope s_r = slope of ln v^l_r against √l over the window l ≥ L/2 (their
  exp(Θ(√l)) gradient growth: ln v ≈ const + s √l);
- the value at the last block, as a geometric mean over replicates with the se of its log.

Mean ± se is mean_r ± sd_r/√R of the per-replicate statistic; the same statistic of the theory
column is the finite-depth mean-field value (the recursion iterated numerically). Formulas and
derivations: docs/theory.md, "Residual networks"; numbers and commands: docs/papers.md.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from harness.archs.resmlp import nf_gamma
from harness.core import activations
from harness.core.stats import least_squares_slope
from harness.outputs.plots import plt
from harness.outputs.results import METADATA, layer_matrix
from harness.theory import hanin

#: Brock, De, Smith & Simonyan 2021's activation gains γ = 1/std φ(z), z ~ N(0, 1), as published
#: in the NFNets code base (deepmind-research, nfnets/base.py, the `nonlinearities` table), for
#: the activations the harness registers (harness name -> the table's float32 constant). The
#: paper's code estimated them numerically; `gamma_table` compares them with the exact values.
#: jax.nn.leaky_relu's default slope is 0.01 and jax.nn.gelu's default is the tanh
#: approximation (its exact γ differs from the erf form's by 1e-5, far below the table's error).
NFNETS_GAMMA: dict[str, float] = {
    "linear": 1.0,  # the table's "identity"
    "relu": 1.7139588594436646,
    "leaky_relu": 1.70590341091156,
    "gelu": 1.7015043497085571,
    "silu": 1.7881293296813965,
    "tanh": 1.5939117670059204,
    "sigmoid": 4.803835391998291,
    "elu": 1.2716004848480225,
    "selu": 1.0008515119552612,
    "softplus": 1.9203323125839233,
}
#: parameters the table's jax functions use where the harness's default differs
NFNETS_PARAMS: dict[str, dict[str, float]] = {"leaky_relu": {"negative_slope": 0.01}}
#: the issue's tolerance: the table matches the exact γ "to about 1e-3", read as relative
GAMMA_RTOL = 1e-3


def gamma_table() -> pd.DataFrame:
    """One row per activation: the NFNets table's γ, the exact γ = 1/√(V_φ(1) − M_φ(1)²) by
    Gauss–Hermite quadrature (`harness.archs.resmlp.nf_gamma`; relu in closed form
    √(2/(1 − 1/π)) = 1.712859), their difference and relative difference (table/exact − 1)."""
    rows = []
    for name, table in NFNETS_GAMMA.items():
        exact = nf_gamma(activations.get(name, **NFNETS_PARAMS.get(name, {})))
        rows.append({"act": name, "table": table, "exact": exact, "diff": table - exact,
                     "rel_diff": table / exact - 1.0})
    return pd.DataFrame(rows)


# ---- shared helpers -----------------------------------------------------------------------------
def runs(
    df: pd.DataFrame, min_depth: int = 2, archs: tuple[str, ...] = ("resmlp", "resconv")
) -> Iterator[tuple[str, pd.DataFrame, dict[str, Any]]]:
    """(run_dir, the run's rows, its metadata) for every run of a sweep frame; ValueError for a
    run of another architecture or shallower than `min_depth` (the fits need the layers)."""
    for run_dir, run in df.groupby("run_dir"):
        meta = json.loads((Path(run_dir) / METADATA).read_text())
        spec = meta["spec"]
        if spec["arch"] not in archs:
            raise ValueError(f"{run_dir}: needs arch {' or '.join(archs)}, not {spec['arch']}")
        if spec["depth"] < min_depth:
            raise ValueError(f"{run_dir}: needs depth ≥ {min_depth}")
        yield str(run_dir), run, meta


def mean_se(x: np.ndarray) -> tuple[float, float]:
    """(mean, sd/√R) of per-replicate values x (R,), non-finite values left out."""
    x = np.asarray(x, dtype=np.float64)
    x = x[np.isfinite(x)]
    se = float(x.std(ddof=1) / math.sqrt(len(x))) if len(x) > 1 else math.nan
    return float(x.mean()), se


def window(L: int) -> np.ndarray:
    """The fit window of the growth-law exponents: blocks l = ⌈L/2⌉ … L (1-based)."""
    return np.arange(max(1, math.ceil(L / 2)), L + 1, dtype=np.float64)


def slope_over(values: np.ndarray, x: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Per row of values (R, L): the least-squares slope of ln values[:, cols-1] against x."""
    with np.errstate(divide="ignore", invalid="ignore"):
        y = np.log(values[:, cols.astype(int) - 1])
    return np.atleast_1d(least_squares_slope(x, y))


def log_rate(values: np.ndarray) -> np.ndarray:
    """b_r: the least-squares slope of ln values[r, l] against l = 1..L, per replicate."""
    return slope_over(values, np.arange(1, values.shape[1] + 1, dtype=np.float64),
                      np.arange(1, values.shape[1] + 1))


def last_log(values: np.ndarray) -> tuple[float, float]:
    """(geometric mean over replicates of the last block's value, se of its log)."""
    with np.errstate(divide="ignore"):
        m, se = mean_se(np.log(values[:, -1]))
    return math.exp(m), se


def jsonable(rows: pd.DataFrame, key: str) -> dict[str, dict[str, Any]]:
    """{row[key]: {column: value}} without run_dir, NaN as None, numpy scalars as Python's."""
    out = {}
    for r in rows.to_dict("records"):
        clean = {}
        for k, v in r.items():
            if k == "run_dir":
                continue
            v = v.item() if hasattr(v, "item") else v
            clean[k] = None if isinstance(v, float) and math.isnan(v) else v
        out[str(r[key])] = clean
    return out


def _geo(values: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.exp(np.log(values).mean(0))


# ---- De & Smith 2020 ----------------------------------------------------------------------------
def desmith_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per run (α, depth scaling, L): the stream's per-block growth factor exp(mean b) ± se (of
    its log) against the mean-field one and the paper's 1 + α_l²; the last block's stream
    moment against mean field and (1 + α_l²)^L·input_var; the largest |ln(F^l/F^1)| (α = 0:
    exactly 0, the blocks are the identity)."""
    rows = []
    for run_dir, run, meta in runs(df):
        s = meta["spec"]
        F, tF = layer_matrix(run, "forward"), layer_matrix(run, "forward", "theory")[0]
        L = F.shape[1]
        a = s["residual_alpha"] / {"none": 1.0, "sqrt": math.sqrt(L), "linear": float(L)}[
            s["residual_depth_scaling"]]
        b, b_se = mean_se(log_rate(F))
        last, last_se = last_log(F)
        with np.errstate(divide="ignore", invalid="ignore"):
            drift = float(np.nanmax(np.abs(np.log(F / F[:, :1]))))
        rows.append({
            "label": f"α={s['residual_alpha']:g} ({s['residual_depth_scaling']}) L={L}",
            "alpha": s["residual_alpha"], "depth_scaling": s["residual_depth_scaling"],
            "depth": L, "width": s["width"], "replicates": s["replicates"],
            "alpha_l": a, "forward_rate": math.exp(b), "forward_log_se": b_se,
            "theory_forward_rate": math.exp(float(log_rate(tF[None, :])[0])),
            "paper_forward_rate": 1 + a * a,
            "forward_last": last, "forward_last_log_se": last_se, "theory_forward_last": float(tF[-1]),
            "paper_forward_last": s["input_var"] * (1 + a * a) ** L,
            "max_abs_log_drift": drift, "run_dir": run_dir,
        })
    return pd.DataFrame(rows).sort_values(["alpha", "depth_scaling", "depth"]).reset_index(drop=True)


def desmith_figure(df: pd.DataFrame, rows: pd.DataFrame):
    """The stream's moment per block (log scale), measured (geometric mean over replicates,
    markers) and mean field (dashed), one line per run."""
    fig, ax = plt.subplots(figsize=(7.5, 4.6), constrained_layout=True)
    for i, r in enumerate(rows.itertuples()):
        run = df[df["run_dir"] == r.run_dir]
        F, tF = layer_matrix(run, "forward"), layer_matrix(run, "forward", "theory")[0]
        layers = np.arange(1, F.shape[1] + 1)
        ax.plot(layers, _geo(F), "o", ms=3, color=f"C{i % 10}",
                label=f"{r.label}: ×{r.forward_rate:.3g}/block, F^L = {r.forward_last:.3g}")
        ax.plot(layers, tF, "--", lw=0.9, color=f"C{i % 10}")
    ax.set_yscale("log")
    ax.set_xlabel("block l")
    ax.set_ylabel(r"stream moment mean $(x^l)^2$")
    ax.grid(alpha=0.3, which="both", lw=0.4)
    ax.legend(fontsize=7, frameon=False)
    ax.set_title("De & Smith 2020: relu, He init, unnormalized residual stream; measured "
                 "(markers), mean field (dashed)", fontsize=9)
    return fig


# ---- Yang & Schoenholz 2017 ---------------------------------------------------------------------
#: ∫ sech⁴ = 4/3 and ∫ sech² = 2: for large q, D_tanh(q) ≈ (4/3)/√(2πq), 1 − V_tanh(q) ≈ 2/√(2πq)
SECH4, SECH2 = 4.0 / 3.0, 2.0


def tanh_asymptotes(sigma_w2: float, sigma_b2: float, alpha: float) -> dict[str, float]:
    """The large-l growth laws of a tanh resmlp with m = 1 (docs/theory.md): q^l ≈ a·l − b·√l
    with a = α²(σ_w² + σ_b²), b = 2 α² σ_w² · 2/√(2π a) (exponent 1), and ln g^l ≈ const − 2C√l
    with C = α² σ_w² (4/3)/√(2π a): the gradient grows toward the input as exp(2C√l)."""
    a = alpha**2 * (sigma_w2 + sigma_b2)
    if a <= 0:
        return {"a": a, "b": math.nan, "C": math.nan, "sqrt_slope": math.nan, "exponent": 1.0}
    C = alpha**2 * sigma_w2 * SECH4 / math.sqrt(2 * math.pi * a)
    b = 2 * alpha**2 * sigma_w2 * SECH2 / math.sqrt(2 * math.pi * a)
    return {"a": a, "b": b, "C": C, "sqrt_slope": -2 * C, "exponent": 1.0}


def yang_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per run (arch mlp or resmlp, tanh): the forward log-log exponent over l ≥ L/2 and the
    backward's slope against √l there (measured ± se, mean field over the same window, and the
    asymptote); the backward's per-layer log rates over the first and the second half of the
    layers (exponential: equal; exp(c√l): the second smaller); plain chains' χ_1 and q*."""
    rows = []
    for run_dir, run, meta in runs(df, min_depth=4, archs=("mlp", "resmlp")):
        s, crit = meta["spec"], meta.get("criticality", {})
        if s["act"] != "tanh":
            raise ValueError(f"{run_dir}: needs act=tanh")
        F, tF = layer_matrix(run, "forward"), layer_matrix(run, "forward", "theory")
        B, tB = layer_matrix(run, "backward"), layer_matrix(run, "backward", "theory")
        L = F.shape[1]
        win = window(L)
        p, p_se = mean_se(slope_over(F, np.log(win), win))
        k, k_se = mean_se(slope_over(B, np.sqrt(win), win))
        half = L // 2
        first = np.arange(1, half + 1, dtype=np.float64)
        second = np.arange(half + 1, L + 1, dtype=np.float64)
        r1, r1_se = mean_se(-slope_over(B, first, first))
        r2, r2_se = mean_se(-slope_over(B, second, second))
        residual = s["arch"] in ("resmlp", "resconv")
        sw2 = s["gain"] ** 2 if s["gain"] is not None else s["scheme_params"].get("sigma_w2", math.nan)
        sb2 = s["bias_std"] ** 2
        asym = (tanh_asymptotes(sw2, sb2, s["residual_alpha"])
                if residual and s["residual_branch_depth"] == 1 and s["residual_depth_scaling"] == "none"
                else {"exponent": math.nan, "sqrt_slope": math.nan, "a": math.nan, "b": math.nan,
                      "C": math.nan})
        last, last_se = last_log(F)
        rows.append({
            "label": f"{s['arch']} · tanh σ_w²={sw2:.3g} σ_b²={sb2:.3g} L={L}",
            "arch": s["arch"], "depth": L, "width": s["width"], "replicates": s["replicates"],
            "sigma_w2": sw2, "sigma_b2": sb2,
            "forward_exponent": p, "forward_exponent_se": p_se,
            "theory_forward_exponent": float(slope_over(tF, np.log(win), win)[0]),
            "asymptotic_forward_exponent": asym["exponent"], "asymptotic_a": asym["a"],
            "backward_sqrt_slope": k, "backward_sqrt_slope_se": k_se,
            "theory_backward_sqrt_slope": float(slope_over(tB, np.sqrt(win), win)[0]),
            "asymptotic_backward_sqrt_slope": asym["sqrt_slope"],
            "backward_log_rate_first_half": r1, "backward_log_rate_first_half_se": r1_se,
            "backward_log_rate_second_half": r2, "backward_log_rate_second_half_se": r2_se,
            "theory_backward_log_rate_first_half": float(-slope_over(tB, first, first)[0]),
            "theory_backward_log_rate_second_half": float(-slope_over(tB, second, second)[0]),
            "forward_last": last, "forward_last_log_se": last_se, "theory_forward_last": float(tF[0, -1]),
            "q_star": crit.get("q_star"), "chi_1": crit.get("chi_1"), "run_dir": run_dir,
        })
    return pd.DataFrame(rows).sort_values(["arch", "depth"]).reset_index(drop=True)


def yang_figure(df: pd.DataFrame, rows: pd.DataFrame):
    """Left: the forward moment against l, log-log (resmlp: linear growth; mlp: settles at q*).
    Right: the backward moment g^l/g^L against l, log y (mlp: a straight line, exponential;
    resmlp: exp(2C(√L − √l)), bending), measured (markers), mean field (dashed), asymptote
    (dotted)."""
    fig, axes = plt.subplots(1, 2, figsize=(10.5, 4.4), constrained_layout=True)
    for i, r in enumerate(rows.itertuples()):
        run = df[df["run_dir"] == r.run_dir]
        F, tF = layer_matrix(run, "forward"), layer_matrix(run, "forward", "theory")[0]
        B, tB = layer_matrix(run, "backward"), layer_matrix(run, "backward", "theory")[0]
        layers = np.arange(1, F.shape[1] + 1, dtype=np.float64)
        col = f"C{i % 10}"
        axes[0].plot(layers, _geo(F), "o", ms=2.5, color=col,
                     label=f"{r.label}: exponent {r.forward_exponent:.3g} (mean field "
                           f"{r.theory_forward_exponent:.3g})")
        axes[0].plot(layers, tF, "--", lw=0.9, color=col)
        axes[1].plot(layers, _geo(B), "o", ms=2.5, color=col,
                     label=f"{r.label}: √l slope {r.backward_sqrt_slope:.3g} (mean field "
                           f"{r.theory_backward_sqrt_slope:.3g})")
        axes[1].plot(layers, tB, "--", lw=0.9, color=col)
        if np.isfinite(r.asymptotic_a):
            axes[0].plot(layers, r.asymptotic_a * layers, ":", color="0.3", lw=1,
                         label="a·l, a = α²(σ_w² + σ_b²)")
            L = layers[-1]
            axes[1].plot(layers, np.exp(-r.asymptotic_backward_sqrt_slope * (np.sqrt(L) - np.sqrt(layers))),
                         ":", color="0.3", lw=1, label="exp(2C(√L − √l))")
    axes[0].set_xscale("log")
    axes[0].set_yscale("log")
    axes[0].set_xlabel("layer / block l")
    axes[0].set_ylabel(r"forward moment $q^l$")
    axes[1].set_yscale("log")
    axes[1].set_xlabel("layer / block l")
    axes[1].set_ylabel(r"backward moment $g^l$ (unit at the output)")
    for ax in axes:
        ax.grid(alpha=0.3, which="both", lw=0.4)
        ax.legend(fontsize=6.5, frameon=False)
    fig.suptitle("Yang & Schoenholz 2017: tanh, plain chain vs residual stream; measured "
                 "(markers, geometric mean), mean field (dashed), asymptote (dotted)", fontsize=9)
    return fig


# ---- Brock et al. 2021 --------------------------------------------------------------------------
def brock_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per run (NF resconv, ws on/off): the stream moment's slope per block (least squares of
    F^l against l, per replicate) against α² (the paper's 1 + l·α² for unit-variance input),
    the last block's moment against 1 + L·α² and mean field; the channel statistics: the last
    block's average squared channel mean, its per-block log rate relative to the stream moment
    (slope of ln(channel_mean_sq/F) against l: 0 when the mean stays a fixed fraction of the
    noise floor, > 0 when it grows)."""
    rows = []
    for run_dir, run, meta in runs(df):
        s = meta["spec"]
        if not s.get("residual_nf") or "channel_mean_sq" not in set(run["quantity"]):
            raise ValueError(f"{run_dir}: needs arch=resconv with residual.nf=true")
        F, tF = layer_matrix(run, "forward"), layer_matrix(run, "forward", "theory")[0]
        M, V = layer_matrix(run, "channel_mean_sq"), layer_matrix(run, "channel_var")
        L = F.shape[1]
        layers = np.arange(1, L + 1, dtype=np.float64)
        a2 = (s["residual_alpha"] / {"none": 1.0, "sqrt": math.sqrt(L), "linear": float(L)}[
            s["residual_depth_scaling"]]) ** 2
        k, k_se = mean_se(np.atleast_1d(least_squares_slope(layers, F)))
        last, last_se = last_log(F)
        rel, rel_se = mean_se(log_rate(M / F))
        m_last, m_last_se = mean_se(M[:, -1])
        m_first, m_first_se = mean_se(M[:, 0])
        rows.append({
            "label": f"NF resconv · {s['act']} · ws={str(s['ws']).lower()} · α={s['residual_alpha']:g}",
            "ws": bool(s["ws"]), "act": s["act"], "scheme": s["scheme"], "depth": L,
            "width": s["width"], "image": s["image"], "batch": s["batch"],
            "replicates": s["replicates"], "alpha2": a2,
            "forward_slope": k, "forward_slope_se": k_se,
            "theory_forward_slope": float(least_squares_slope(layers, tF)),
            "forward_last": last, "forward_last_log_se": last_se, "theory_forward_last": float(tF[-1]),
            "paper_forward_last": s["input_var"] + L * a2,
            "channel_mean_sq_first": m_first, "channel_mean_sq_first_se": m_first_se,
            "channel_mean_sq_last": m_last, "channel_mean_sq_last_se": m_last_se,
            "channel_var_last": float(V[:, -1].mean()),
            "channel_mean_sq_rel_log_rate": rel, "channel_mean_sq_rel_log_rate_se": rel_se,
            "gamma": nf_gamma(activations.get(s["act"], **s["act_params"])),
            "gamma_table": NFNETS_GAMMA.get(s["act"], math.nan), "run_dir": run_dir,
        })
    return pd.DataFrame(rows).sort_values("ws").reset_index(drop=True)


def brock_figure(df: pd.DataFrame, rows: pd.DataFrame):
    """Brock et al.'s signal-propagation plot: per block, the average channel variance (left,
    circles ± se) and the stream's mean square (crosses; = variance + squared channel mean) with
    1 + l·α² dotted and its mean field dashed, and the average squared channel mean (right, log
    y), replicate means, one colour per run."""
    fig, axes = plt.subplots(1, 2, figsize=(10.5, 4.2), constrained_layout=True)
    for i, r in enumerate(rows.itertuples()):
        run = df[df["run_dir"] == r.run_dir]
        F, tF = layer_matrix(run, "forward"), layer_matrix(run, "forward", "theory")[0]
        V, M = layer_matrix(run, "channel_var"), layer_matrix(run, "channel_mean_sq")
        layers = np.arange(1, F.shape[1] + 1)
        col = f"C{i % 10}"
        R = len(V)
        axes[0].errorbar(layers, V.mean(0), yerr=V.std(0, ddof=1) / math.sqrt(R), fmt="o", ms=3,
                         color=col, label=f"{r.label}: channel variance")
        axes[0].plot(layers, F.mean(0), "x", ms=4, color=col,
                     label=f"mean (x^l)², slope {r.forward_slope:.4g}/block")
        axes[0].plot(layers, tF, "--", lw=0.9, color=col)
        axes[1].errorbar(layers, M.mean(0), yerr=M.std(0, ddof=1) / math.sqrt(R), fmt="o", ms=3,
                         color=col, label=r.label)
    r0 = rows.iloc[0]
    layers = np.arange(1, int(r0["depth"]) + 1)
    axes[0].plot(layers, 1 + layers * r0["alpha2"], ":", color="0.2", lw=1.2, label="1 + l·α²")
    axes[0].set_ylabel("stream: channel variance (o), mean square (x)")
    axes[1].set_yscale("log")
    axes[1].set_ylabel("average squared channel mean of the stream")
    for ax in axes:
        ax.set_xlabel("block l")
        ax.grid(alpha=0.3, which="both", lw=0.4)
        ax.legend(fontsize=7, frameon=False)
    fig.suptitle("Brock et al. 2021: signal propagation of NF-ResNet blocks (residual conv, "
                 "circular padding); measured ± se, mean field (dashed)", fontsize=9)
    return fig


# ---- Hanin & Rolnick 2018 -----------------------------------------------------------------------
def hanin_rolnick_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per run (relu, He, one input per network): over the R networks, the mean of ln F^L ± se
    against the mean-field ln q^L (FM1) and Σ_l α_l², and the sample variance of ln F^L ± se
    from the fourth moment (FM2); plain chains (arch=mlp runs in the same folder) with the
    exact variance of `harness.theory.hanin`."""
    rows = []
    for run_dir, run, meta in runs(df, min_depth=1, archs=("mlp", "resmlp")):
        s = meta["spec"]
        if s["act"] != "relu" or s["batch"] != 1 or s["bias_std"] > 0:
            raise ValueError(f"{run_dir}: needs relu, batch=1 and no bias")
        F, tF = layer_matrix(run, "forward"), layer_matrix(run, "forward", "theory")[0]
        L = F.shape[1]
        with np.errstate(divide="ignore"):
            x = np.log(F[:, -1])
        x = x[np.isfinite(x)]
        if len(x) < 2:
            raise ValueError(f"{run_dir}: needs at least 2 networks with a finite output")
        m, m_se = mean_se(x)
        v = float(x.var(ddof=1))
        m4 = float(((x - x.mean()) ** 4).mean())
        residual = s["arch"] in ("resmlp", "resconv")
        if residual:
            a = s["residual_alpha"] / {"none": 1.0, "sqrt": math.sqrt(L), "linear": float(L)}[
                s["residual_depth_scaling"]]
            sum_a2, scaling = L * a * a, s["residual_depth_scaling"]
            plain_theory = math.nan
        else:
            sum_a2, scaling = math.nan, "plain"
            plain_theory = hanin.log_variance(s["widths"])
        rows.append({
            "label": f"{s['arch']} ({scaling}) L={L} n={s['width']}", "arch": s["arch"],
            "depth_scaling": scaling, "alpha": s["residual_alpha"] if residual else math.nan,
            "depth": L, "width": s["width"], "replicates": len(x), "sum_alpha2": sum_a2,
            "mean_log": m, "mean_log_se": m_se, "theory_log_q": math.log(float(tF[-1])),
            "var_log": v, "var_log_se": math.sqrt(max(m4 - v * v, 0) / len(x)),
            "plain_theory_var_log": plain_theory, "run_dir": run_dir,
        })
    return pd.DataFrame(rows).sort_values(["arch", "depth_scaling", "depth"]).reset_index(drop=True)


def hanin_rolnick_figure(rows: pd.DataFrame):
    """Left (FM1): the mean of ln F^L against depth, measured ± se and mean-field ln q^L.
    Right (FM2): Var ln F^L across networks against depth, ± se; plain chains' exact theory."""
    fig, axes = plt.subplots(1, 2, figsize=(10.5, 4.2), constrained_layout=True)
    for i, (key, g) in enumerate(rows.groupby(["arch", "depth_scaling"], sort=True)):
        col = f"C{i % 10}"
        lab = "plain relu chain (mlp)" if key[0] == "mlp" else f"{key[0]}, depth_scaling={key[1]}"
        axes[0].errorbar(g["depth"], g["mean_log"], yerr=g["mean_log_se"], fmt="o", ms=4, capsize=2,
                         color=col, label=lab)
        axes[0].plot(g["depth"], g["theory_log_q"], "--", lw=0.9, color=col)
        axes[1].errorbar(g["depth"], g["var_log"], yerr=g["var_log_se"], fmt="o-", ms=4, lw=0.8,
                         capsize=2, color=col, label=lab)
        if key[0] == "mlp":
            axes[1].plot(g["depth"], g["plain_theory_var_log"], "x--", lw=0.8, ms=7, color=col,
                         label="plain chain, exact theory")
    axes[0].set_ylabel(r"mean over networks of ln $F^L$ (FM1); dashed: ln $q^L$")
    axes[1].set_ylabel(r"Var over networks of ln $F^L$ (FM2)")
    axes[1].set_yscale("log")
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_xlabel("depth L (blocks / layers)")
        ax.grid(alpha=0.3, which="both", lw=0.4)
        ax.legend(fontsize=7, frameon=False)
    fig.suptitle("Hanin & Rolnick 2018, residual failure modes: relu, He init, one input per "
                 "network", fontsize=9)
    return fig


# ---- Fixup --------------------------------------------------------------------------------------
def fixup_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per run (scheme=fixup, depth L): the stream's moment at the last block (geometric mean
    ± se of its log) against input_var, max |ln F^l/F^1| and max |ln B^l/B^L| over the blocks
    (exactly 0: every branch outputs 0), and the weight gradients per branch layer j: the
    replicate mean over blocks ± se against the mean field (last layer j = m: α_l² E[a_m²] > 0;
    the others exactly 0, their backward passes through the zero layer)."""
    rows = []
    for run_dir, run, meta in runs(df, min_depth=1):
        s = meta["spec"]
        if s["scheme"] != "fixup":
            raise ValueError(f"{run_dir}: needs scheme=fixup")
        F, B = layer_matrix(run, "forward"), layer_matrix(run, "backward")
        W, tW = layer_matrix(run, "weight_grad"), layer_matrix(run, "weight_grad", "theory")[0]
        L, m = F.shape[1], s["residual_branch_depth"]
        last, last_se = last_log(F)
        with np.errstate(divide="ignore", invalid="ignore"):
            f_drift = float(np.max(np.abs(np.log(F / F[:, :1]))))
            b_drift = float(np.max(np.abs(np.log(B / B[:, -1:]))))
        row = {"label": f"fixup m={m} L={L}", "depth": L, "width": s["width"], "branch_depth": m,
               "replicates": s["replicates"], "input_var": s["input_var"],
               "forward_last": last, "forward_last_log_se": last_se,
               "max_abs_log_forward_drift": f_drift, "max_abs_log_backward_drift": b_drift,
               "run_dir": run_dir}
        for j in range(1, m + 1):
            w = W[:, j - 1::m].mean(1)  # per replicate: the mean over blocks of layer j's moment
            mu, se = mean_se(w)
            row.update({f"weight_grad_{j}": mu, f"weight_grad_{j}_se": se,
                        f"theory_weight_grad_{j}": float(tW[j - 1::m].mean()),
                        f"weight_grad_{j}_max_abs": float(np.abs(W[:, j - 1::m]).max())})
        rows.append(row)
    return pd.DataFrame(rows).sort_values("depth").reset_index(drop=True)


def fixup_figure(df: pd.DataFrame, rows: pd.DataFrame):
    """Left: the stream's moment per block for each depth (flat at the input's). Right: the
    weight-gradient moment of each branch layer per block, measured (markers) and mean field
    (dashed); exact zeros (the branch's first layer) drawn on the axis floor."""
    fig, axes = plt.subplots(1, 2, figsize=(10.5, 4.2), constrained_layout=True)
    for i, r in enumerate(rows.itertuples()):
        run = df[df["run_dir"] == r.run_dir]
        F = layer_matrix(run, "forward")
        W, tW = layer_matrix(run, "weight_grad"), layer_matrix(run, "weight_grad", "theory")[0]
        col = f"C{i % 10}"
        L, m = F.shape[1], r.branch_depth
        blocks = np.arange(1, L + 1)
        axes[0].plot(blocks / L, _geo(F), "o-", ms=2.5, lw=0.8, color=col,
                     label=f"L={L}: F^L = {r.forward_last:.4g}")
        for j in range(1, m + 1):
            axes[1].plot(blocks / L, W[:, j - 1::m].mean(0), "o^"[(j - 1) % 2], ms=3, color=col,
                         label=f"L={L}, branch layer {j}: {getattr(r, f'weight_grad_{j}'):.3g}")
            axes[1].plot(blocks / L, tW[j - 1::m], "--", lw=0.8, color=col)
    axes[0].set_ylabel("stream moment mean $(x^l)^2$")
    axes[0].set_ylim(0.5, 1.5)
    axes[1].set_yscale("symlog", linthresh=1e-4)
    axes[1].set_ylabel("weight-gradient moment (symlog)")
    for ax in axes:
        ax.set_xlabel("block l / L")
        ax.grid(alpha=0.3, which="both", lw=0.4)
        ax.legend(fontsize=6.5, frameon=False)
    fig.suptitle("Fixup (Zhang, Dauphin & Ma 2019): relu, depth-independent output at init, "
                 "nonzero gradient to each branch's zero last layer", fontsize=9)
    return fig
