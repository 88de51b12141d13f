"""Report figures over many runs: a results frame (from `harness.load`) in, a Figure out.

`variance_grid`: per-layer measured moments with their replicate spread and theory, faceted by
the swept keys (rows × columns), one colour per value of a third key (depth or width).
`heatmap_grid`: one number per run over two swept keys (e.g. depth × width), faceted by the rest.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.colors import TwoSlopeNorm  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from harness.outputs import compare  # noqa: E402
from harness.outputs.plots import LABELS  # noqa: E402


def _label(keys: Sequence[str], values: Sequence[object]) -> str:
    return " · ".join(f"{k}={_fmt(v)}" for k, v in zip(keys, values, strict=True))


def _fmt(v: object) -> str:
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return "null" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v)


def _levels(table: pd.DataFrame, key: str | None) -> list[object]:
    if key is None:
        return [None]
    return sorted(table[key].dropna().unique().tolist()) + ([None] if table[key].isna().any() else [])


def _select(table: pd.DataFrame, key: str | None, value: object) -> pd.DataFrame:
    if key is None:
        return table
    return table[table[key].isna()] if value is None else table[table[key] == value]


def variance_grid(
    df: pd.DataFrame,
    quantity: str = "forward",
    *,
    hue: str | None = None,
    rows: str | None = None,
    cols: str | None = None,
    stats: pd.DataFrame | None = None,
    title: str = "",
) -> Figure:
    """Replicate mean per layer (line), median (dots), min–max over replicates (band) and theory
    (dashed, same colour) for `quantity`; one panel per (rows, cols) value, one colour per `hue` value."""
    stats = compare.layer_stats(df) if stats is None else stats
    table = compare.runs(df)
    row_levels, col_levels, hue_levels = _levels(table, rows), _levels(table, cols), _levels(table, hue)
    fig, axes = plt.subplots(len(row_levels), len(col_levels), squeeze=False, sharex=False,
                             figsize=(max(7.0, 3.6 * len(col_levels) + 1.8), 2.8 * len(row_levels) + 1.0),
                             constrained_layout=True)
    s = stats[stats["quantity"] == quantity]
    colours = plt.get_cmap("viridis")(np.linspace(0.0, 0.85, max(1, len(hue_levels))))
    for (i, rv), (j, cv) in itertools.product(enumerate(row_levels), enumerate(col_levels)):
        ax = axes[i][j]
        panel = _select(_select(table, rows, rv), cols, cv)
        for colour, hv in zip(colours, hue_levels, strict=True):
            for run_dir in _select(panel, hue, hv)["run_dir"]:
                d = s[s["run_dir"] == run_dir]
                pos = d["mean"] > 0
                label = _label([hue], [hv]) if hue else "measured"
                ax.fill_between(d["layer"][pos], d["min"][pos].clip(lower=np.finfo(float).tiny),
                                d["max"][pos], color=colour, alpha=0.18, lw=0)
                ax.plot(d["layer"][pos], d["mean"][pos], "-", color=colour, lw=1.3, label=label)
                med = d["median"] > 0
                ax.plot(d["layer"][med], d["median"][med], ".", color=colour, ms=3.5, alpha=0.9)
                th = d["theory"].where(np.isfinite(d["theory"]) & (d["theory"] > 0))
                ax.plot(d["layer"], th, "--", color=colour, lw=1.0, alpha=0.9)
        heading = [(k, v) for k, v in ((rows, rv), (cols, cv)) if k is not None]
        ax.set_title(_label([k for k, _ in heading], [v for _, v in heading]) or "", fontsize=9)
        if ax.has_data():
            ax.set_yscale("log")
        else:
            ax.text(0.5, 0.5, "no result", ha="center", va="center", transform=ax.transAxes,
                    color="0.5")
        ax.grid(True, which="major", alpha=0.3)
        ax.tick_params(labelsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if i == len(row_levels) - 1:  # a probe run's points are modules (harness.probe)
            probed = "module" in df and bool(df["module"].notna().any())
            ax.set_xlabel("module, in execution order" if probed else "layer $l$", fontsize=9)
    handles, labels = [], []
    for ax in axes.flat:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    handles += [plt.Line2D([], [], color="k", ls="none", marker=".", ms=5),
                plt.Line2D([], [], color="k", ls="--", lw=1.0)]
    labels += ["median (dots)", "theory (dashed)"]
    fig.legend(handles, labels, loc="outside right center", fontsize=8, frameon=False)
    fig.suptitle(f"{LABELS.get(quantity, quantity)}\nmeasured mean (line), median (dots), band = "
                 f"replicate min–max; theory (dashed)" + (f"; {title}" if title else ""), fontsize=10)
    return fig


def heatmap_grid(
    values: pd.DataFrame,
    column: str,
    *,
    x: str,
    y: str,
    rows: str | None = None,
    cols: str | None = None,
    log10: bool = False,
    title: str = "",
    colorbar: str = "",
) -> Figure:
    """A heatmap of `values[column]` over (x, y) per panel (rows × cols); `values` has one row per
    run with those keys. With `log10`, colours show log10 of the value; cells are annotated with
    the value itself. Colours diverge around 0 (blue below, red above); inf/nan cells are grey."""
    row_levels, col_levels = _levels(values, rows), _levels(values, cols)
    xs, ys = _levels(values, x), _levels(values, y)
    data = values[column].astype(float)
    shown = np.log10(data.where(data > 0)) if log10 else data
    finite = shown[np.isfinite(shown)]
    lim = max(float(np.abs(finite).max()) if len(finite) else 1.0, 1e-3)
    norm = TwoSlopeNorm(vcenter=0.0, vmin=-lim, vmax=lim)
    fig, axes = plt.subplots(len(row_levels), len(col_levels), squeeze=False,
                             figsize=(max(2.6, 0.75 * len(xs) + 1.4) * len(col_levels) + 1.2,
                                      max(2.2, 0.5 * len(ys) + 1.2) * len(row_levels) + 0.8),
                             constrained_layout=True)
    image = None
    for (i, rv), (j, cv) in itertools.product(enumerate(row_levels), enumerate(col_levels)):
        ax = axes[i][j]
        panel = _select(_select(values.assign(_shown=shown, _raw=data), rows, rv), cols, cv)
        grid = np.full((len(ys), len(xs)), np.nan)
        raw = np.full((len(ys), len(xs)), np.nan)
        present = np.zeros((len(ys), len(xs)), dtype=bool)
        for (a, xv), (b, yv) in itertools.product(enumerate(xs), enumerate(ys)):
            cell = _select(_select(panel, x, xv), y, yv)
            if len(cell):
                present[b, a] = True
                grid[b, a] = cell["_shown"].mean()
                raw[b, a] = cell["_raw"].mean()
        ax.set_facecolor("0.85")
        image = ax.imshow(np.where(np.isfinite(grid), grid, np.nan), cmap="RdBu_r", norm=norm,
                          origin="lower", aspect="auto")
        for b, a in itertools.product(range(len(ys)), range(len(xs))):
            text = _cell_text(raw[b, a], log10) if present[b, a] else "–"
            ax.text(a, b, text, ha="center", va="center", fontsize=7,
                    color="k" if not np.isfinite(grid[b, a]) or abs(grid[b, a]) < 0.6 * lim else "w")
        ax.set_xticks(range(len(xs)), [_fmt(v) for v in xs], fontsize=8)
        ax.set_yticks(range(len(ys)), [_fmt(v) for v in ys], fontsize=8)
        ax.set_xlabel(x, fontsize=9)
        ax.set_ylabel(y, fontsize=9)
        heading = [(k, v) for k, v in ((rows, rv), (cols, cv)) if k is not None]
        ax.set_title(_label([k for k, _ in heading], [v for _, v in heading]), fontsize=9)
    if image is not None:
        fig.colorbar(image, ax=axes, shrink=0.8, label=colorbar or column)
    fig.suptitle(title or column, fontsize=10)
    return fig


def _cell_text(v: float, log10: bool) -> str:
    if np.isnan(v):
        return "nan"
    if np.isinf(v):
        return "inf" if v > 0 else "-inf"
    if log10:
        return "0" if v == 0 else f"{v:.2g}"
    return f"{v:+.2f}"
