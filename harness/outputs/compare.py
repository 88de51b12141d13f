"""Measured vs theory across many runs: which keys were swept, per-layer statistics per run, the
end of each pass, and the agreement table. Tidy DataFrames in, tidy DataFrames out.

The one place where the agreement rules live (the report, the console verdict in
`harness.outputs.summary` and `harness.api` use them; this module imports nothing else of the
harness): how each kind of quantity is compared (`KINDS`: |log10 r| for positive quantities,
|difference| for signed ones), when a replicate mean is carried by a few replicates
(`layer_stats`' `dominated`), one class per run (`assess`: agrees / finite-width bias / disagrees /
numerical, `CLASS_RULES`), its severity, and which swept keys explain a class (`explain`).

A frame from `harness.load` has one row per (run_dir, replicate, layer, quantity); every column
other than the measurement columns is part of a run's config.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import combinations
from statistics import NormalDist

import numpy as np
import pandas as pd

#: a probe run's (harness.probe) rows also name their point: `module`, `module_type`
MEASUREMENT_COLUMNS = ("layer", "module", "module_type", "replicate", "quantity", "value", "theory",
                       "theory_nlo", "theory_log_var", "run_dir")
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


# ---- quantity kinds: how measured and predicted are compared --------------------------------------
#: a run whose every significant departure is smaller than this (|log10 r| for a positive quantity,
#: |difference| for a signed one) is "finite-width bias", not "disagrees"
TOLERANCE = 0.05


@dataclass(frozen=True)
class Kind:
    """How measured and predicted values of one kind of quantity are compared.

    positive (signed=False): second moments and the like, > 0 by nature; severity
    |log10(measured/theory)|, a factor ("×3.6e+10"). signed (signed=True): quantities that may be
    0 or negative (a cosine); severity |measured − theory|, a difference ("diff +0.08"). A run
    whose significant departures all have severity < `tolerance` is a finite-width bias."""

    name: str
    signed: bool
    tolerance: float = TOLERANCE

    @property
    def measure(self) -> str:
        """The severity's name: "|diff|" (signed) or "|log10 r|" (positive)."""
        return "|diff|" if self.signed else "|log10 r|"

    def severity(self, measured: pd.Series | np.ndarray, theory: pd.Series | np.ndarray) -> np.ndarray:
        """|measured − theory| (signed) or |log10(measured/theory)| (positive); NaN where it is not
        defined (non-finite values; a positive kind's values ≤ 0)."""
        m, t = np.asarray(measured, dtype=float), np.asarray(theory, dtype=float)
        if self.signed:
            out = np.abs(m - t)
            return np.where(np.isfinite(out), out, np.nan)
        return np.abs(log10_ratio(m, t))

    def factor(self, measured: float, theory: float) -> str:
        """measured against theory in the kind's terms: "×3.6e+10" (measured/theory) or
        "diff +0.08" (measured − theory); "n/a" where undefined."""
        if not (np.isfinite(measured) and np.isfinite(theory)):
            return "n/a"
        if self.signed:
            return f"diff {measured - theory:+.2g}"
        return f"×{measured / theory:.3g}" if measured > 0 and theory > 0 else "n/a"


POSITIVE = Kind("positive", signed=False)
SIGNED = Kind("signed", signed=True)

#: every quantity some architecture measures, and its kind (tests check that none is missing); a
#: new quantity that may be 0 or negative must be listed as SIGNED
KINDS: dict[str, Kind] = {
    "forward": POSITIVE, "activation": POSITIVE, "backward": POSITIVE, "weight_grad": POSITIVE,
    "channel_mean_sq": POSITIVE, "channel_var": POSITIVE, "branch": POSITIVE,
    "normed": POSITIVE,
    "jacobian_mean": POSITIVE, "jacobian_var": POSITIVE, "jacobian_rel_var": POSITIVE,
    "correlation": SIGNED,
    # harness.probe's (measured only, no theory): a module output's mean, its parameters' norm
    "mean": SIGNED, "param_norm": POSITIVE,
}


def kind(quantity: str) -> Kind:
    """The quantity's kind from KINDS; a quantity not listed is compared by difference (SIGNED),
    which is defined for any number."""
    return KINDS.get(quantity, SIGNED)


# ---- heavy tails ----------------------------------------------------------------------------------
#: the rule for "the replicate mean is carried by a few replicates": with n ≥ TAIL_MIN_REPLICATES
#: finite positive values, half of their sum comes from at most max(1, ⌊n·TAIL_FRACTION⌋) of them
#: (16 replicates: 2). Light tails need about n/2 (chi-square-like moments of wide layers), a
#: log-normal of log-spread s needs ≤ n/8 only for s ≳ 2 (the median then is a better guide)
TAIL_MIN_REPLICATES = 8
TAIL_FRACTION = 1 / 8


def tail_limit(n: pd.Series | np.ndarray) -> np.ndarray:
    """max(1, ⌊n·TAIL_FRACTION⌋): at most this many replicates carrying half of the sum is a
    heavy tail."""
    return np.maximum(1, np.floor(np.asarray(n, dtype=float) * TAIL_FRACTION))


def layer_stats(df: pd.DataFrame) -> pd.DataFrame:
    """Per (run_dir, quantity, layer): replicate mean, median, min, max, standard error, finite
    count n, replicate count R, theory, `theory_nlo` and `log_var` (the frame's `theory_nlo` and
    `theory_log_var`, NaN where absent), `reference` (the prediction the rules compare with:
    theory_nlo where defined, else theory), `n_half` (the fewest replicates whose values make up half
    of the sum: 1 ≤ n_half ≤ ⌈n/2⌉ for light tails ~ n/2) and `dominated` (the mean is carried by
    a few replicates: n ≥ TAIL_MIN_REPLICATES, n_half ≤ max(1, ⌊n/8⌋), positive kinds only).
    Non-finite values (overflow) are kept out of every statistic. A frame without `run_dir` (one
    run) gets run_dir "" ."""
    if "run_dir" not in df:
        df = df.assign(run_dir="")
    keys = ["run_dir", "quantity", "layer"]
    finite = df[np.isfinite(df["value"])]
    g = finite.groupby(keys, sort=True)["value"]
    stats = pd.DataFrame({"mean": g.mean(), "median": g.median(), "min": g.min(), "max": g.max(),
                          "sem": g.std(ddof=1) / np.sqrt(g.count()), "n": g.count()})
    # n_half: sort each group's values in descending order; count those before the running sum
    # reaches half of the total, plus the one that reaches it
    desc = finite.sort_values([*keys, "value"], ascending=[True, True, True, False])
    running = desc.groupby(keys, sort=True)["value"].cumsum()
    half = desc.groupby(keys, sort=True)["value"].transform("sum") / 2
    stats["n_half"] = (running < half).groupby([desc[k] for k in keys], sort=True).sum() + 1
    whole = df.groupby(keys, sort=True)
    out = stats.reindex(whole.size().index)
    out["n"] = out["n"].fillna(0).astype(int)
    out["R"] = whole.size()
    out["theory"] = whole["theory"].first()
    for col, name in (("theory_nlo", "theory_nlo"), ("theory_log_var", "log_var")):
        out[name] = (whole[col].first().astype(float) if col in df
                     else pd.Series(np.nan, index=out.index))
    # the prediction each point is compared with: the 1/n one where defined, else mean-field
    out["reference"] = out["theory_nlo"].where(np.isfinite(out["theory_nlo"]), out["theory"])
    out = out.reset_index()
    positive = ~out["quantity"].map(lambda q: kind(q).signed).astype(bool)
    out["dominated"] = (positive & (out["n"] >= TAIL_MIN_REPLICATES) & (out["min"] >= 0)
                        & (out["n_half"] <= tail_limit(out["n"])))
    return out


def within_spread(mean: np.ndarray, reference: np.ndarray, log_var: np.ndarray, n: np.ndarray,
                  k: float) -> np.ndarray:
    """Whether the replicate mean of n networks lies where the predicted across-network spread
    puts it: each network's value log-normal around `reference` with Var ln = s² (`log_var`), so
    their mean of n is (Fenton–Wilkinson) log-normal with the same mean and
    σ_n² = ln(1 + (e^{s²} − 1)/n): |ln(mean/reference) + σ_n²/2| ≤ k σ_n. False where s² is not
    defined (NaN) or mean/reference is not a finite positive ratio."""
    m, r = np.asarray(mean, dtype=float), np.asarray(reference, dtype=float)
    s2, nn = np.asarray(log_var, dtype=float), np.asarray(n, dtype=float)
    ok = np.isfinite(m) & np.isfinite(r) & (m > 0) & (r > 0) & np.isfinite(s2) & (s2 >= 0) & (nn > 0)
    out = np.zeros(m.shape, dtype=bool)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        sig2 = np.log1p(np.expm1(s2[ok]) / nn[ok])
        out[ok] = np.abs(np.log(m[ok] / r[ok]) + sig2 / 2) <= k * np.sqrt(sig2)
    return out


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


# ---- one class per run ----------------------------------------------------------------------------
DISAGREES, NUMERICAL, BIAS, UNTESTED, AGREES = (
    "disagrees", "numerical", "finite-width bias", "untested (1 replicate)", "agrees")
#: a run without any theory to compare with (a harness.probe run of an arbitrary model)
NO_THEORY = "no theory"
#: the order runs are listed in: the worst real problems first
CLASSES = (DISAGREES, NUMERICAL, BIAS, UNTESTED, AGREES, NO_THEORY)
#: one line per class: the rule (shown in the report)
CLASS_RULES = {
    AGREES: ("theory within Bonferroni's k standard errors of the replicate mean, or within what "
             "the predicted spread across networks allows for a mean of R, at every point (one "
             "replicate: within the predicted spread of one network at every point)"),
    BIAS: (f"significant departures, each with |log10 r| < {TOLERANCE:g} (positive quantities) "
           f"or |diff| < {TOLERANCE:g} (signed ones, e.g. correlation)"),
    DISAGREES: (f"a significant departure with |log10 r| ≥ {TOLERANCE:g} (positive quantities) "
                f"or |diff| ≥ {TOLERANCE:g} (signed ones), outside the predicted spread where the "
                f"theory has one"),
    NUMERICAL: "overflow (inf/nan) or underflow (0) in a measured value",
    UNTESTED: ("one replicate (no standard error): every point with a predicted spread of one "
               "network lies within it, and some point has none"),
    NO_THEORY: "measured only: no prediction exists for this run (harness.probe of an arbitrary model)",
}


@dataclass
class Assessment:
    """One run against its theory: `cls` (one of CLASSES), `score` (its worst severity in units of
    its kind's tolerance: max over points of severity/tolerance, comparable across quantities),
    the worst point and a one-line `reason`, the counts behind the class, and per quantity the
    worst severity (`worst`: {quantity: (severity, layer)}). `against`: the prediction it was
    compared with ("1/n" where some point has `theory_nlo`, else "mean-field");
    `meanfield_factor`: the mean against the mean-field theory at the worst point."""

    cls: str
    score: float
    k: float
    points: int
    within: int
    in_range: int
    reason: str
    quantity: str = ""
    layer: int | None = None
    mean_factor: str = ""
    median_factor: str = ""
    tail: str = ""
    against: str = "mean-field"
    meanfield_factor: str = ""
    worst: dict[str, tuple[float, int]] = field(default_factory=dict)


def assess(d: pd.DataFrame, k: float | None = None, alpha: float = ALPHA) -> Assessment:
    """Classify one run from its `layer_stats` rows (points without theory are left out).

    Each point is compared with its `reference` (the 1/n prediction `theory_nlo` where defined,
    else the mean-field `theory`). A point departs significantly when |mean − reference| > k·s.e.,
    or when its mean is carried by a few replicates (`dominated`: the s.e. is then no guide) and
    its severity ≥ its tolerance; but never where the theory predicts its spread across networks
    (`log_var`) and the mean lies within what that spread allows for n replicates
    (`within_spread`). One replicate has no s.e.: there a point departs when it lies outside the
    predicted spread of one network (n = 1), and a point without a predicted spread is untested.
    k defaults to Bonferroni's `bonferroni_k(m, alpha)` for the run's m points. The class:
    no theory when no point has one (harness.probe); numerical if a value overflowed (inf/nan)
    or a positive quantity underflowed to 0; else agrees with no significant departure (one
    replicate: untested unless every point has a predicted spread), finite-width bias when every
    significant departure has severity < its tolerance (points within k s.e. are noise, whatever
    their severity), disagrees otherwise. The run's
    score and worst point: its largest severity/tolerance among significant departures (else
    among all points)."""
    ref = "reference" if "reference" in d else "theory"
    if len(d) and not np.isfinite(d[ref].astype(float)).any():
        return Assessment(cls=NO_THEORY, score=float("nan"), k=float("nan"), points=0, within=0,
                          in_range=0, reason=f"measured only: no theory for its {len(d)} points")
    d = d[np.isfinite(d[ref].astype(float))].reset_index(drop=True)
    quantities, layers = d["quantity"].to_numpy(), d["layer"].to_numpy()
    kinds = [kind(q) for q in quantities]
    mean, theory = d["mean"].to_numpy(dtype=float), d[ref].to_numpy(dtype=float)
    meanfield = d["theory"].to_numpy(dtype=float)
    nlo = (np.isfinite(d["theory_nlo"].to_numpy(dtype=float)) if "theory_nlo" in d
           else np.zeros(len(d), dtype=bool))
    log_var = d["log_var"].to_numpy(dtype=float) if "log_var" in d else np.full(len(d), np.nan)
    sev = np.array([kd.severity([m], [t])[0] for kd, m, t in zip(kinds, mean, theory, strict=True)])
    score = sev / np.array([kd.tolerance for kd in kinds]) if len(d) else sev
    k_run = bonferroni_k(len(d), alpha) if k is None else k
    dominated = d["dominated"].to_numpy(dtype=bool)
    # a mean within what the predicted spread across networks allows for n replicates is no
    # departure, whatever its sample s.e. (16 replicates of a log-normal understate it)
    spread_ok = within_spread(mean, theory, log_var, d["n"].to_numpy(), k_run)
    R = int(d["R"].max()) if len(d) else 0
    # one network has no standard error: a point is judged only where the theory predicts the
    # spread of one network (log_var), and departs when it lies outside it
    has_spread = np.isfinite(log_var)
    with np.errstate(invalid="ignore"):
        beyond = (np.abs(mean - theory) > k_run * d["sem"].to_numpy(dtype=float)) & ~spread_ok
        significant = (beyond | (dominated & (score >= 1) & ~spread_ok) if R >= 2
                       else has_spread & ~spread_ok)
    within = int((~beyond & np.isfinite(d["sem"].to_numpy(dtype=float))).sum())
    in_range = int(((d["min"] <= d[ref]) & (d[ref] <= d["max"])).sum())
    overflow = (d["n"] < d["R"]).to_numpy()
    signed = np.array([kd.signed for kd in kinds], dtype=bool)
    underflow = ~signed & (d["min"].to_numpy(dtype=float) == 0)
    finite = np.isfinite(score)
    # the run's severity: its worst significant departure (else its worst point at all)
    pick = significant & finite if (significant & finite).any() else finite
    top = float(np.max(score[pick])) if pick.any() else np.inf
    worst = {}
    for q in dict.fromkeys(quantities):
        m = (quantities == q) & finite
        if m.any():
            i = int(np.flatnonzero(m)[np.argmax(sev[m])])
            worst[q] = (float(sev[i]), int(layers[i]))
    if overflow.any() or underflow.any():
        cls = NUMERICAL
    elif not significant.any():
        cls = AGREES if R >= 2 or has_spread.all() else UNTESTED
    elif not (significant & (score >= 1)).any():
        cls = BIAS
    else:
        cls = DISAGREES
    out = Assessment(cls=cls, score=top, k=k_run, points=len(d), within=within, in_range=in_range,
                     reason="", worst=worst, against="1/n" if nlo.any() else "mean-field")
    if cls == NUMERICAL:
        # the first quantity in KINDS order, at its first layer
        order = list(KINDS)
        bad = sorted(np.flatnonzero(overflow | underflow),
                     key=lambda j: (order.index(quantities[j]) if quantities[j] in order else len(order),
                                    layers[j]))
        i = int(bad[0])
        what = (f"{int(d['R'].iloc[i] - d['n'].iloc[i])}/{int(d['R'].iloc[i])} replicates inf/nan"
                if overflow[i] else "underflow to 0")
        out.quantity, out.layer = str(quantities[i]), int(layers[i])
        out.reason = f"{quantities[i]} layer {layers[i]}: {what}"
        return out
    if not finite.any():
        out.reason = "nothing to compare"
        return out
    i = int(np.flatnonzero(pick)[np.argmax(score[pick])])
    kd = kinds[i]
    out.quantity, out.layer = str(quantities[i]), int(layers[i])
    out.mean_factor = kd.factor(mean[i], theory[i])
    out.median_factor = kd.factor(float(d["median"].iloc[i]), theory[i])
    out.meanfield_factor = kd.factor(mean[i], meanfield[i])
    label = "1/n theory" if nlo[i] else "theory"
    if dominated[i]:
        out.tail = f"mean carried by {int(d['n_half'].iloc[i])} of {int(d['n'].iloc[i])} replicates"
    sem = float(d["sem"].iloc[i])
    z = abs(mean[i] - theory[i]) / sem if sem > 0 else np.inf
    parts = [f"{out.quantity} layer {out.layer}: mean {out.mean_factor} of {label}"
             if not kd.signed else f"{out.quantity} layer {out.layer}: mean {out.mean_factor} from {label}",
             f"{kd.measure} {sev[i]:.3g}"]
    if np.isfinite(z) and cls != AGREES and not out.tail:
        parts.append(f"{z:.1f} s.e.")
    if out.tail:
        parts.append(f"{out.tail}; median {out.median_factor}")
    out.reason = ", ".join(parts[:2]) + "".join(f"; {p}" for p in parts[2:])
    return out


def bonferroni_k(m: int, alpha: float = ALPHA) -> float:
    """The per-point threshold in standard errors for m two-sided comparisons at family-wise
    false-positive rate α: k = Φ⁻¹(1 − α / (2m)) (e.g. m = 199, α = 0.01: k ≈ 3.89)."""
    return NormalDist().inv_cdf(1 - alpha / (2 * max(m, 1)))


def agreement(
    df: pd.DataFrame, k: float | None = None, stats: pd.DataFrame | None = None, alpha: float = ALPHA
) -> pd.DataFrame:
    """One row per run (`assess`): its swept keys, `class`, `severity` (the worst severity in
    units of its kind's tolerance, comparable across quantities), the worst point (`worst at`),
    `compared with` (the prediction: "1/n" where the run has `theory_nlo`, else "mean-field"),
    the replicate mean and median there against that theory (a factor for positive quantities, a
    difference for signed ones), the mean against the mean-field theory (`mean vs mean-field`),
    `tail` (when the mean is carried by a few replicates), the worst
    |log10 r| over layers of forward and backward, k, how many points have theory within k s.e.
    and within the replicates' min–max range, and the one-line `reason`. k defaults to
    Bonferroni's for the run's points. Sorted by class (CLASSES: the worst real problems first),
    then by severity, largest first."""
    stats = layer_stats(df) if stats is None else stats
    if "run_dir" not in df:
        df = df.assign(run_dir="")
    keys = swept_keys(df)
    table = runs(df).set_index("run_dir")
    rows = []
    for run_dir, d in stats.groupby("run_dir", sort=True):
        a = assess(d, k, alpha)
        row: dict[str, object] = {k_: table.at[run_dir, k_] for k_ in keys}
        row["class"] = a.cls
        row["severity"] = a.score
        row["worst at"] = f"{a.quantity} layer {a.layer}" if a.quantity else ""
        row["compared with"] = a.against
        row["mean vs theory"] = a.mean_factor
        row["median vs theory"] = a.median_factor
        row["mean vs mean-field"] = a.meanfield_factor
        row["tail"] = a.tail
        for q in ("forward", "backward"):
            if q in set(d["quantity"]):
                row[f"{q} worst |log10 r|"] = (f"{a.worst[q][0]:.3f} (layer {a.worst[q][1]})"
                                               if q in a.worst else "n/a")
        if k is None:
            row["k (s.e.)"] = round(a.k, 2)
        row["within k s.e." if k is None else f"within {k:g} s.e."] = f"{a.within}/{a.points}"
        row["in replicate range"] = f"{a.in_range}/{a.points}"
        row["reason"] = a.reason
        row["run_dir"] = run_dir
        rows.append(row)
    out = pd.DataFrame(rows)
    order = out["class"].map(CLASSES.index)
    score = out["severity"].where(np.isfinite(out["severity"]), np.finfo(float).max)
    out = out.assign(_order=order, _score=score).sort_values(["_order", "_score"],
                                                              ascending=[True, False], kind="stable")
    return out.drop(columns=["_order", "_score"]).reset_index(drop=True)


# ---- triage over many runs ------------------------------------------------------------------------
def class_counts(table: pd.DataFrame) -> dict[str, int]:
    """Runs per class of an `agreement` table, in CLASSES order (classes with none left out)."""
    counts = table["class"].value_counts()
    return {c: int(counts[c]) for c in CLASSES if c in counts}


def explain(table: pd.DataFrame, keys: Sequence[str], cls: str = DISAGREES) -> list[str]:
    """Which swept keys explain the runs of class `cls` in an `agreement` table, as sentences.

    The values every such run shares ("all 10 disagreements have act=gelu and scheme=kaiming"),
    with how many of the runs that have those values are in the class, and, when the one key
    value or pair that best separates the class (largest F1 = 2·hits/(class runs + runs with
    those values)) separates it better than the shared values, a second sentence naming it ("10
    of them have act=gelu and scheme=kaiming (10 of the 10 runs with these values)"); when they
    share none, that best key value or pair."""
    hit = table["class"] == cls
    n = int(hit.sum())
    if not n or not keys:
        return []
    label = "disagreements" if cls == DISAGREES else f"{cls} runs"
    shared = {key: table.loc[hit, key].iloc[0] for key in keys
              if table.loc[hit, key].nunique(dropna=False) == 1}
    best: tuple[float, dict[str, object]] | None = None
    for size in (1, 2):
        for combo in combinations(keys, size):
            for values, part in table[hit].groupby(list(combo), dropna=False):
                values = values if isinstance(values, tuple) else (values,)
                cond = dict(zip(combo, values, strict=True))
                f1 = 2 * len(part) / (n + int(_matching(table, cond).sum()))
                if best is None or f1 > best[0] + 1e-12:
                    best = (f1, cond)
    assert best is not None
    cond = best[1]
    matching = _matching(table, cond)
    covered = int((matching & hit).sum())
    these_best = "these values" if len(cond) > 1 else "this value"
    if shared:
        with_values = int(_matching(table, shared).sum())
        head = (f"all {n} {label} have {_values(shared)}" if n > 1
                else f"the one {label[:-1]} has {_values(shared)}")
        these = "these values" if len(shared) > 1 else "this value"
        share = (f"the only run with {these}" if with_values == 1
                 else f"{n} of the {with_values} runs with {these}")
        lines = [f"{head} ({share})"]
        # the shared values are common elsewhere too: name the key values that separate better
        if best[0] > 2 * n / (n + with_values) + 1e-12 and covered < n:
            lines.append(f"{covered} of them have {_values(cond)} ({covered} of the "
                         f"{int(matching.sum())} runs with {these_best})")
        return lines
    return [f"{covered} of the {n} {label} have {_values(cond)} ({covered} of the {int(matching.sum())} "
            f"runs with {these_best}); no key value is shared by all"]


def _values(cond: dict[str, object]) -> str:
    """"act=gelu, scheme=kaiming and depth=50"."""
    items = [f"{key}={_text(v)}" for key, v in cond.items()]
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _matching(table: pd.DataFrame, cond: dict[str, object]) -> pd.Series:
    m = pd.Series(True, index=table.index)
    for key, v in cond.items():
        m &= table[key].isna() if _missing(v) else table[key] == v
    return m


def _missing(v: object) -> bool:
    return v is None or (isinstance(v, float) and np.isnan(v)) or v is pd.NA


def _text(v: object) -> str:
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return "null" if _missing(v) else str(v)
