"""The probe's figure: its statistics along execution order (a DataFrame in, a Figure out).

One panel per statistic (forward with the SPP channel statistics, backward, weight gradient,
parameter norm, mean): the replicate mean per point (line), the replicates' min–max (band),
markers coloured by module class; a log y axis where the values span more than a decade. The x
axis is the execution order; its ticks name the block outputs where the model has them.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from harness.outputs.plots import log_y  # noqa: E402
from harness.outputs.results import layer_summary  # noqa: E402

PANELS = (
    ("forward", "forward: mean y²", ("channel_mean_sq", "channel_var")),
    ("backward", "backward: mean (∂ loss/∂y)²", ()),
    ("weight_grad", "weight grad: mean (∂ loss/∂θ)² / batch", ()),
    ("param_norm", "parameter norm ‖θ‖", ()),
    ("mean", "mean y", ()),
)
EXTRA_STYLE = {"channel_mean_sq": ("C1", "channel mean²"), "channel_var": ("C2", "channel variance")}
#: at most this many named ticks on the x axis
MAX_TICKS = 24


def modules(df: pd.DataFrame, title: str | None = None) -> Figure:
    """The figure described in the module docstring for one probe run's frame."""
    s = layer_summary(df)
    points = df.drop_duplicates("layer").sort_values("layer")[["layer", "module", "module_type"]]
    kinds = list(dict.fromkeys(points["module_type"]))
    colours = {k: plt.get_cmap("tab10")(i % 10) for i, k in enumerate(kinds)}
    present = [p for p in PANELS if p[0] in set(s["quantity"])]
    fig, axes = plt.subplots(len(present), 1, sharex=True, squeeze=False,
                             figsize=(11, 2.1 * len(present) + 1.2), constrained_layout=True)
    for ax, (q, label, extras) in zip(axes[:, 0], present, strict=True):
        d = s[s["quantity"] == q].sort_values("layer")
        ax.fill_between(d["layer"], d["min"], d["max"], color="C0", alpha=0.22, lw=0,
                        label="replicate min–max")
        ax.plot(d["layer"], d["mean"], "-", color="C0", lw=1.1, label="replicate mean")
        types = points.set_index("layer").loc[d["layer"], "module_type"]
        ax.scatter(d["layer"], d["mean"], s=9, zorder=3, c=[colours[t] for t in types])
        values = [d["mean"]]
        for e in extras:
            de = s[s["quantity"] == e].sort_values("layer")
            colour, name = EXTRA_STYLE[e]
            ax.plot(de["layer"], de["mean"], ":", color=colour, lw=1.1, label=name)
            values.append(de["mean"])
        v = pd.concat(values)
        v = v[np.isfinite(v)]
        if q != "mean" and len(v) and (v > 0).all() and v.max() / v.min() > 10:
            log_y(ax)
            main = d["min"][(d["min"] > 0) & np.isfinite(d["min"])]
            if extras and len(main):  # a channel mean² at round-off (after a norm) would flatten the rest
                ax.set_ylim(bottom=max(float(v.min()), float(main.min()) / 1e4) / 1.5)
        ax.set_ylabel(label, fontsize=8)
        ax.grid(alpha=0.3)
        if extras:
            ax.legend(fontsize=7, loc="best")
    handles = [plt.Line2D([], [], ls="", marker="o", ms=4, color=colours[k], label=k) for k in kinds]
    axes[0, 0].figure.legend(handles=handles[:12], loc="outside right upper", fontsize=7,
                             title="module class", title_fontsize=7)
    ax = axes[-1, 0]
    blocks = points[~points["module_type"].isin(_leaf_types(df))]
    ticks = blocks if 0 < len(blocks) <= MAX_TICKS else points.iloc[
        np.unique(np.linspace(0, len(points) - 1, min(MAX_TICKS, len(points))).astype(int))]
    ax.set_xticks(ticks["layer"].to_numpy())
    ax.set_xticklabels(ticks["module"].tolist(), rotation=60, ha="right", fontsize=7)
    ax.set_xlabel("module, in execution order")
    row = df.iloc[0]
    fig.suptitle(title or (f"{row['model']} · scheme {row['scheme']} · {row['replicates']} replicates × "
                           f"{row['batch']} inputs of shape [{row['input_shape']}] · {row['device']} "
                           f"{row['dtype']}"), fontsize=10)
    return fig


def _leaf_types(df: pd.DataFrame) -> set[str]:
    """Module classes that have weight_grad rows and are not composite blocks: every class whose
    points all carry parameters is taken as a layer unless it is a block (named x.N)."""
    pts = df.drop_duplicates("layer")
    is_block = pts["module"].str.rsplit(".", n=1).str[-1].str.split("#").str[0].str.isdigit()
    return set(pts.loc[~is_block, "module_type"])
