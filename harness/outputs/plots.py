"""Figures: a tidy DataFrame in, a matplotlib Figure out (nothing is shown or saved here).

Labels are plain Unicode text (hˡ, 10⁻², ∂), not mathtext: matplotlib parses every mathtext
string again for each figure saved (its parse cache lives on the renderer, which each savefig
makes anew), which measured ~40% of a default run's savefig; the log-axis tick labels are
matplotlib's own (`LogFormatterSciNotation`), rewritten as Unicode by `LogTicks`.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import re  # noqa: E402

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import Locator, LogFormatterSciNotation  # noqa: E402

from harness import archs  # noqa: E402
from harness.outputs.results import landmarks, layer_summary  # noqa: E402  (used here; re-exported)

LABELS = {
    "forward": "forward: mean (hˡ)²",
    "activation": "activation: mean φ(hˡ)²",
    "backward": "backward: mean (∂ loss/∂hˡ)²",
    "weight_grad": "weight grad: mean (∂ loss/∂Wˡ)²",
    "channel_mean_sq": "channel mean²: mean over channels c of h̄_c²",
    "channel_var": "channel variance: mean over channels c of Var h_c",
    "correlation": "correlation: mean cos(hˡ(a), hˡ(b)), inputs a ≠ b",
    "jacobian_mean": "Jacobian: mean λ (squared singular values of ∂hˡ/∂x⁰)",
    "jacobian_var": "Jacobian: Var λ",
    "jacobian_rel_var": "Jacobian: Var λ / (mean λ)²",
}
#: quantities drawn on a linear axis (the rest are second moments, on a log axis)
LINEAR = {"correlation", "jacobian_rel_var"}
_SUPERSCRIPT = str.maketrans("0123456789-+.", "⁰¹²³⁴⁵⁶⁷⁸⁹⁻⁺·")
_MATHDEFAULT = re.compile(r"\$\\mathdefault\{(.*)\}\$")
_POWER = re.compile(r"\^\{([-+.\d]+)\}")


class LogTicks(LogFormatterSciNotation):
    """matplotlib's log-axis tick labels ("10⁻²"; "2×10⁻¹" on an axis spanning less than a
    decade) as plain Unicode text instead of mathtext; anything else is left as matplotlib
    writes it."""

    def __call__(self, x: float, pos: int | None = None) -> str:
        label = super().__call__(x, pos)
        m = _MATHDEFAULT.fullmatch(label)
        if m is None:
            return label
        text = _POWER.sub(lambda p: p.group(1).translate(_SUPERSCRIPT), m.group(1))
        text = text.replace("\\times", "×")
        if "\\" in text or "{" in text or "$" in text:
            return label
        return text.replace("-", "−") if text.startswith("-") else text


class InView(Locator):
    """Another locator's ticks less those outside the axis's view (by more than 0.1% of it).

    matplotlib makes a `Tick` (three lines and two texts) for every location its locator
    returns and then draws only those inside the view; a log axis's locators return whole
    decades, up to a third of them outside. Dropping those first draws the same ticks and
    makes fewer (on the default run's two log axes, 83 → 58 per figure)."""

    def __init__(self, locator: Locator):
        self.locator = locator

    def set_axis(self, axis) -> None:
        self.axis = axis
        self.locator.set_axis(axis)

    def __call__(self) -> np.ndarray:
        locs = np.asarray(self.locator(), dtype=float)
        lo, hi = sorted(self.axis.get_view_interval())
        transform = self.axis.get_transform()
        a, b = transform.transform([lo, hi])
        with np.errstate(invalid="ignore", divide="ignore"):
            t = transform.transform(locs) if len(locs) else locs
        margin = 1e-3 * (b - a)  # matplotlib draws within 1e-10 of the span: this keeps more
        return locs[(t >= a - margin) & (t <= b + margin)]

    def tick_values(self, vmin: float, vmax: float) -> np.ndarray:
        return self.locator.tick_values(vmin, vmax)

    def view_limits(self, vmin: float, vmax: float) -> tuple[float, float]:
        return self.locator.view_limits(vmin, vmax)

    def nonsingular(self, v0: float, v1: float) -> tuple[float, float]:
        return self.locator.nonsingular(v0, v1)


def log_y(ax: plt.Axes) -> None:
    """A log y axis with `LogTicks` labels (major and minor, as matplotlib would label them),
    its locators' ticks `InView`."""
    ax.set_yscale("log")
    ax.yaxis.set_major_locator(InView(ax.yaxis.get_major_locator()))
    ax.yaxis.set_minor_locator(InView(ax.yaxis.get_minor_locator()))
    ax.yaxis.set_major_formatter(LogTicks())
    ax.yaxis.set_minor_formatter(LogTicks(labelOnlyBase=False))


def title_of(df: pd.DataFrame) -> str:
    row = df.iloc[0]
    width = row["width"] if pd.notna(row["width"]) else f"[{row['widths']}]"
    act = row["act"] + (f"({row['act_params']})" if row.get("act_params") else "")
    conv = archs.get(row["arch"]).title(row)  # e.g. conv's kernel, image and padding
    gain = "n/a" if pd.isna(row["gain"]) else f"{row['gain']:.3g}"
    norm = row.get("norm")  # a normalization layer (older frames: no column)
    if isinstance(norm, str) and norm != "none":
        conv += f" · {norm} ({row['norm_position']})"
    return (
        f"{row['arch']} · {row['scheme']} (gain {gain}, {row['mode']}) · {act} · "
        f"depth {row['depth']} · width {width}{conv} · {row['replicates']} replicates × "
        f"{row['batch']} inputs · {row['device']} {row['dtype']}"
    )


def _nlo(df: pd.DataFrame, q: str) -> pd.Series | None:
    """The quantity's `theory_nlo` per layer where the frame has it and it differs from the
    mean-field theory somewhere (relu and linear: equal, not drawn), else None."""
    if "theory_nlo" not in df:
        return None
    d = df[(df["quantity"] == q) & (df["replicate"] == df["replicate"].min())]
    nlo = d.set_index("layer")["theory_nlo"].astype(float)
    if not np.isfinite(nlo).any() or np.allclose(nlo, d["theory"].to_numpy(dtype=float),
                                                  rtol=1e-9, equal_nan=True):
        return None
    return nlo


def variance(
    df: pd.DataFrame,
    quantities: tuple[str, ...] = ("forward", "backward", "correlation", "jacobian_rel_var"),
    *,
    bands: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
    note: str | None = None,
    band_label: str = "Hanin & Nica",
) -> Figure:
    """Measured per-layer moments (replicate mean, band = replicate min–max) vs theory, log y
    (correlation: linear y), and the 1/n theory (`theory_nlo`) where the frame has it. `bands`
    adds a theory band per quantity (lower, upper per layer, e.g. the finite-width band of the
    forward moment, labelled with `band_label`, its source); `note` a second title line (e.g.
    the criticality summary). Quantities absent from df are skipped."""
    present = set(df["quantity"].unique())
    quantities = tuple(q for q in quantities if q in present)
    s = layer_summary(df)
    fig, axes = plt.subplots(1, len(quantities), figsize=(5.2 * len(quantities), 4.0),
                             squeeze=False)
    # fixed margins: constrained layout measured ~0.5 s per figure, a third of a default run
    fig.subplots_adjust(left=0.07 if len(quantities) > 2 else 0.09, right=0.98, bottom=0.12,
                        top=0.80 if note else 0.86, wspace=0.25)
    for ax, q in zip(axes[0], quantities, strict=True):
        d = s[s["quantity"] == q]
        linear = q in LINEAR
        shown = d if linear else d[d["mean"] > 0]
        low = shown["min"] if linear else shown["min"].clip(lower=np.finfo(float).tiny)
        ax.fill_between(shown["layer"], low, shown["max"], alpha=0.25, color="C0", lw=0,
                        label="replicate range")
        ax.plot(shown["layer"], shown["mean"], "o-", ms=2.5, lw=1.2, color="C0",
                label="measured (mean)")
        if bands and q in bands:
            lo, hi = bands[q]
            ax.plot(d["layer"], lo, ":", lw=1.4, color="C3",
                    label=f"finite-width 95% band ({band_label})")
            ax.plot(d["layer"], hi, ":", lw=1.4, color="C3")
        ok = np.isfinite(d["theory"]) & (True if linear else d["theory"] > 0)
        ax.plot(d["layer"], d["theory"].where(ok), "--", lw=1.5, color="k",
                label="mean-field theory")
        nlo = _nlo(df, q)
        if nlo is not None:
            ax.plot(nlo.index, nlo.to_numpy(), "-.", lw=1.3, color="C2", label="1/n theory (NLO)")
        if not linear:
            log_y(ax)
        ax.set_xlabel("layer l")
        fixed_label_positions(ax)
        # a fixed y skips matplotlib's per-draw search for a title position clear of the tick
        # labels (measured: 0.37 s of a 0.7 s savefig for three log-scale panels)
        ax.set_title(LABELS.get(q, q), fontsize=10, y=1.0)
        ax.grid(True, which="major", alpha=0.3)
    axes[0][0].legend(fontsize=8, loc="best")
    fig.suptitle(title_of(df) + (f"\n{note}" if note else ""), fontsize=9)
    return fig


def fixed_label_positions(ax: plt.Axes) -> None:
    """Axis labels at fixed axes coordinates: otherwise each draw lays out every tick label of
    both axes a second time to find room for them (measured: ~15% of a savefig)."""
    ax.xaxis.set_label_coords(0.5, -0.1)
    ax.yaxis.set_label_coords(-0.12, 0.5)


def _depths(layers: np.ndarray, n: int = 4) -> list[int]:
    """n roughly evenly spaced layers from the first to the last."""
    lo, hi = int(layers.min()), int(layers.max())
    return sorted({int(round(x)) for x in np.linspace(lo, hi, n)})


def positions(pos: pd.DataFrame) -> Figure:
    """A conv run's position-resolved moments (a `positions.parquet` frame) against theory.

    Left: forward and backward at the centre, the middle of an edge and the corner (Conv1d:
    centre and edge) per layer, measured (± s.e.) as markers, theory as lines. Right: the
    profile along the row through the centre at a few depths, as a fraction of the theory at
    the centre, so the border deficit and how far it reaches inward can be read off.
    """
    fig, axes = plt.subplots(2, 2, figsize=(10.4, 7.2), constrained_layout=True)
    for i, q in enumerate(("forward", "backward")):
        d = pos[pos["quantity"] == q]
        ax = axes[i][0]
        for j, (name, where) in enumerate(landmarks(d).items()):
            if where is None:
                continue
            e = d[where].sort_values("layer")
            ax.errorbar(e["layer"], e["value"], yerr=e["sem"], fmt="o", ms=3, color=f"C{j}",
                        label=f"{name} (measured)")
            ax.plot(e["layer"], e["theory"], "-", lw=1.2, color=f"C{j}", label=f"{name} (theory)")
        log_y(ax)
        ax.set_xlabel("layer l")
        ax.set_title(LABELS[q] + " at a position", fontsize=10, y=1.0)
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=7, loc="best")

        ax = axes[i][1]
        two_d = "row" in d
        axis = "col" if two_d else "pos"
        n = int(d[axis].max()) + 1
        line = d[d["row"] == n // 2] if two_d else d
        centre = line[line[axis] == n // 2].set_index("layer")["theory"]
        for j, layer in enumerate(_depths(d["layer"].to_numpy())):
            e = line[line["layer"] == layer].sort_values(axis)
            ref = centre.loc[layer]
            ax.errorbar(e[axis], e["value"] / ref, yerr=e["sem"] / ref, fmt="o", ms=3,
                        color=f"C{j}", label=f"layer {layer} (measured)")
            ax.plot(e[axis], e["theory"] / ref, "-", lw=1.2, color=f"C{j}",
                    label=f"layer {layer} (theory)")
        where = f"row {n // 2}, " if two_d else ""
        ax.set_xlabel(f"position ({where}{axis})")
        ax.set_ylabel("/ theory at the centre")
        ax.set_title(f"{q}: profile through the centre", fontsize=10, y=1.0)
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=7, loc="best", ncol=2)
    fig.suptitle(title_of(pos), fontsize=9)
    return fig
