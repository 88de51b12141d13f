"""Measured vs theory across many runs: which keys were swept, per-layer statistics per run, the
end of each pass, and the agreement table. Tidy DataFrames in, tidy DataFrames out.

A frame from `harness.load` has one row per (run_dir, replicate, layer, quantity); every column
other than the measurement columns is part of a run's config.
"""

from __future__ import annotations

from statistics import NormalDist

import numpy as np
import pandas as pd

MEASUREMENT_COLUMNS = ("layer", "replicate", "quantity", "value", "theory", "run_dir")
#: config columns in the order reports use them; derived ones (act_params, widths, gain) come after
#: the keys they follow from, so that those are kept and the derived ones dropped
PREFERRED = ("act", "scheme", "mode", "arch", "depth", "width", "seed", "batch", "replicates",
             "bias_std", "input_var", "dtype", "device", "act_params", "widths", "gain")
NUMERIC_FIRST = ("depth", "width")

#: family-wise false-positive rate of the default agreement test, per run
ALPHA = 0.01


def config_columns(df: pd.DataFrame) -> list[str]:
    """The config columns of a results frame, preferred ones first, then any others (e.g. conv's)."""
    cols = [c for c in df.columns if c not in MEASUREMENT_COLUMNS]
    known = [c for c in PREFERRED if c in cols]
    others = [c for c in cols if c not in PREFERRED]
    # columns another engineer adds (kernel, image, ...) go before the derived ones
    cut = known.index("act_params") if "act_params" in known else len(known)
    return known[:cut] + others + known[cut:]


def runs(df: pd.DataFrame) -> pd.DataFrame:
    """One row per run (run_dir) with its config columns."""
    cols = config_columns(df)
    return df.drop_duplicates("run_dir")[["run_dir", *cols]].reset_index(drop=True)


def swept_keys(df: pd.DataFrame) -> list[str]:
    """Config columns that take more than one value across runs, without those that follow from
    the others (e.g. `widths` from depth and width, `gain` from act under kaiming)."""
    table = runs(df)
    cols = config_columns(df)
    keys = [c for c in cols if table[c].nunique(dropna=False) > 1]
    for c in reversed(list(keys)):
        others = [k for k in keys if k != c]
        if others and table.groupby(others, dropna=False)[c].nunique(dropna=False).max() <= 1:
            keys.remove(c)
    return keys


def fixed_config(df: pd.DataFrame) -> dict[str, object]:
    """Config columns with one value across all runs, and that value (columns that are null in
    every run, such as the conv keys of an MLP sweep, are left out)."""
    table = runs(df)
    return {c: table[c].iloc[0] for c in config_columns(df)
            if table[c].nunique(dropna=False) == 1 and table[c].notna().any()}


def layer_stats(df: pd.DataFrame) -> pd.DataFrame:
    """Per (run_dir, quantity, layer): replicate mean, min, max, standard error, finite count n,
    replicate count R, and theory. Non-finite values (overflow) are kept out of mean/min/max."""
    keys = ["run_dir", "quantity", "layer"]
    finite = df[np.isfinite(df["value"])]
    g = finite.groupby(keys, sort=True)["value"]
    stats = pd.DataFrame({"mean": g.mean(), "min": g.min(), "max": g.max(),
                          "sem": g.std(ddof=1) / np.sqrt(g.count()), "n": g.count()})
    whole = df.groupby(keys, sort=True)
    out = stats.reindex(whole.size().index)
    out["n"] = out["n"].fillna(0).astype(int)
    out["R"] = whole.size()
    out["theory"] = whole["theory"].first()
    return out.reset_index()


def log10_ratio(mean: pd.Series | np.ndarray, theory: pd.Series | np.ndarray) -> np.ndarray:
    """log10(mean / theory), NaN where either is not a finite positive number."""
    m, t = np.asarray(mean, dtype=float), np.asarray(theory, dtype=float)
    ok = np.isfinite(m) & np.isfinite(t) & (m > 0) & (t > 0)
    out = np.full(m.shape, np.nan)
    out[ok] = np.log10(m[ok] / t[ok])
    return out


def end_of_pass(stats: pd.DataFrame) -> pd.DataFrame:
    """Per run: forward at its last layer L and backward at layer 1 (where each pass ends: the
    vanishing/exploding signal), their replicate means, theory and log10(mean/theory)."""
    rows = []
    for run_dir, d in stats.groupby("run_dir", sort=True):
        row: dict[str, object] = {"run_dir": run_dir}
        for q, pick in (("forward", "max"), ("backward", "min")):
            dq = d[d["quantity"] == q]
            if dq.empty:
                continue
            at = dq[dq["layer"] == getattr(dq["layer"], pick)()].iloc[0]
            finite = at["n"] == at["R"]
            row[f"{q}_layer"] = int(at["layer"])
            row[f"{q}_mean"] = at["mean"] if finite else np.inf
            row[f"{q}_theory"] = at["theory"]
            row[f"{q}_log10_ratio"] = log10_ratio([row[f"{q}_mean"]], [at["theory"]])[0]
        rows.append(row)
    return pd.DataFrame(rows)


def bonferroni_k(m: int, alpha: float = ALPHA) -> float:
    """The per-point threshold in standard errors for m two-sided comparisons at family-wise
    false-positive rate α: k = Φ⁻¹(1 − α / (2m)) (e.g. m = 199, α = 0.01: k ≈ 3.89)."""
    return NormalDist().inv_cdf(1 - alpha / (2 * max(m, 1)))


def agreement(
    df: pd.DataFrame, k: float | None = None, stats: pd.DataFrame | None = None, alpha: float = ALPHA
) -> pd.DataFrame:
    """One row per run: its swept keys, the worst |log10(mean/theory)| over layers for forward and
    backward and over every quantity (with where), how many (quantity, layer) points have theory
    within k standard errors of the replicate mean and within the replicates' min–max range, and
    `agree` (theory within k s.e. at every point, and nothing overflowed). k defaults to
    Bonferroni's threshold `bonferroni_k(m, alpha)` for the run's m points, so that a run whose
    theory is right is flagged with probability ≤ α (for roughly normal replicate means); a number
    fixes k for every point instead. Sorted so that disagreements come first, then by the worst
    ratio."""
    stats = layer_stats(df) if stats is None else stats
    keys = swept_keys(df)
    table = runs(df).set_index("run_dir")
    rows = []
    for run_dir, d in stats.groupby("run_dir", sort=True):
        lr = np.abs(log10_ratio(d["mean"], d["theory"]))
        k_run = bonferroni_k(len(d), alpha) if k is None else k
        within = (np.abs(d["mean"] - d["theory"]) <= k_run * d["sem"]).to_numpy()
        overflow = bool((d["n"] < d["R"]).any())
        row: dict[str, object] = {k_: table.at[run_dir, k_] for k_ in keys}
        for q in ("forward", "backward"):
            m = (d["quantity"] == q).to_numpy()
            row[f"{q} worst |log10 r|"] = _worst(lr[m], d["layer"].to_numpy()[m])
        all_worst = _worst(lr, d["layer"].to_numpy(), d["quantity"].to_numpy())
        row["worst |log10 r| (all)"] = all_worst
        if k is None:
            row["k (s.e.)"] = round(k_run, 2)
        row["within k s.e." if k is None else f"within {k:g} s.e."] = f"{int(within.sum())}/{len(d)}"
        in_range = ((d["min"] <= d["theory"]) & (d["theory"] <= d["max"])).to_numpy()
        row["in replicate range"] = f"{int(in_range.sum())}/{len(d)}"
        R = int(d["R"].max())
        row["agree"] = ("no (overflow)" if overflow else
                        "n/a (1 replicate)" if R < 2 else "yes" if within.all() else "no")
        row["_worst"] = np.nanmax(lr) if np.isfinite(lr).any() else np.inf
        row["run_dir"] = run_dir
        rows.append(row)
    out = pd.DataFrame(rows)
    order = out["agree"].map(lambda a: 0 if a.startswith("no") else 1 if a.startswith("n/a") else 2)
    out = out.assign(_order=order).sort_values(["_order", "_worst"], ascending=[True, False])
    return out.drop(columns=["_order", "_worst"]).reset_index(drop=True)


def _worst(lr: np.ndarray, layers: np.ndarray, quantities: np.ndarray | None = None) -> str:
    if not len(lr):
        return ""
    if not np.isfinite(lr).any():
        return "n/a"
    i = int(np.nanargmax(np.where(np.isfinite(lr), lr, -1)))
    where = f"{quantities[i]} layer {layers[i]}" if quantities is not None else f"layer {layers[i]}"
    return f"{lr[i]:.3f} ({where})"
