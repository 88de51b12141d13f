"""Figures: a tidy DataFrame in, a matplotlib Figure out (nothing is shown or saved here)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

LABELS = {
    "forward": "forward: mean $(h^l)^2$",
    "activation": r"activation: mean $\phi(h^l)^2$",
    "backward": r"backward: mean $(\partial\,\mathrm{loss}/\partial h^l)^2$",
    "weight_grad": r"weight grad: mean $(\partial\,\mathrm{loss}/\partial W^l)^2$",
}


def layer_summary(df: pd.DataFrame) -> pd.DataFrame:
    """Per (quantity, layer): replicate mean, min, max, standard error, and theory.

    Non-finite values (overflow) are kept out of mean/min/max; `n` counts the finite ones.
    """
    finite = df[np.isfinite(df["value"])]
    g = finite.groupby(["quantity", "layer"], sort=True)["value"]
    out = pd.DataFrame(
        {
            "mean": g.mean(),
            "min": g.min(),
            "max": g.max(),
            "sem": g.std(ddof=1) / np.sqrt(g.count()),
            "n": g.count(),
        }
    )
    theory = df.groupby(["quantity", "layer"], sort=True)["theory"].first()
    return out.reindex(theory.index).assign(theory=theory).reset_index()


def title_of(df: pd.DataFrame) -> str:
    row = df.iloc[0]
    width = row["width"] if pd.notna(row["width"]) else f"[{row['widths']}]"
    act = row["act"] + (f"({row['act_params']})" if row.get("act_params") else "")
    return (
        f"{row['arch']} · {row['scheme']} (gain {row['gain']:.3g}, {row['mode']}) · {act} · "
        f"depth {row['depth']} · width {width} · {row['replicates']} replicates × "
        f"{row['batch']} inputs · {row['device']} {row['dtype']}"
    )


def variance(df: pd.DataFrame, quantities: tuple[str, ...] = ("forward", "backward")) -> Figure:
    """Measured per-layer moments (replicate mean, band = replicate min–max) vs theory, log y."""
    s = layer_summary(df)
    fig, axes = plt.subplots(1, len(quantities), figsize=(5.2 * len(quantities), 4.0),
                             squeeze=False, constrained_layout=True)
    for ax, q in zip(axes[0], quantities, strict=True):
        d = s[s["quantity"] == q]
        pos = d["mean"] > 0
        ax.fill_between(d["layer"][pos], d["min"][pos].clip(lower=np.finfo(float).tiny),
                        d["max"][pos], alpha=0.25, color="C0", lw=0, label="replicate range")
        ax.plot(d["layer"][pos], d["mean"][pos], "o-", ms=2.5, lw=1.2, color="C0",
                label="measured (mean)")
        th = d["theory"].where(np.isfinite(d["theory"]) & (d["theory"] > 0))
        ax.plot(d["layer"], th, "--", lw=1.5, color="k", label="mean-field theory")
        ax.set_yscale("log")
        ax.set_xlabel("layer $l$")
        ax.set_title(LABELS.get(q, q), fontsize=10)
        ax.grid(True, which="major", alpha=0.3)
    axes[0][0].legend(fontsize=8, loc="best")
    fig.suptitle(title_of(df), fontsize=9)
    return fig
