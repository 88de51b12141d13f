"""`python -m harness.phase PATH [--out FILE]`: the order/chaos phase diagram of a sweep.

PATH holds runs of one activation with the ``meanfield`` scheme over a grid of (σ_w², σ_b²),
e.g. the sweep of ``python -m harness.run experiment=phase_diagram``. The figure shows

- the theory's order/chaos boundary χ_1 = 1, drawn parametrically in q* (Schoenholz et al.
  2017): χ_1 = σ_w² D_φ(q*) = 1 and q* = σ_w² V_φ(q*) + σ_b² give
  σ_w² = 1/D_φ(q*),  σ_b² = q* − V_φ(q*)/D_φ(q*)  for q* > 0 (where σ_b² ≥ 0);
- each run's measured per-layer gradient growth as a coloured marker: with g^l the replicate
  geometric mean of the backward moment, the least-squares slope b of ln g^l against l over
  l = 1..L gives the growth per layer toward the input, exp(−b) (> 1: gradients explode going
  back, the chaotic phase; < 1: they vanish, the ordered phase);

and writes ``phase_diagram.png`` and ``phase_diagram.parquet`` (one row per grid point: σ_w²,
σ_b², measured growth, theory χ_1 and phase) into PATH (or beside --out).
"""

from __future__ import annotations

import io
import json
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from harness.cli import ArgumentParser
from harness.core import activations
from harness.core.stats import least_squares_slope
from harness.outputs.plots import plt
from harness.outputs.results import (
    METADATA,
    atomic_write_bytes,
    layer_matrix,
    load,
    write_parquet,
)


def boundary(act: activations.Activation, q: np.ndarray | None = None) -> pd.DataFrame:
    """The χ_1 = 1 curve: σ_w² = 1/D(q*), σ_b² = q* − V(q*)/D(q*) over q* (σ_b² ≥ 0 kept)."""
    q = np.geomspace(1e-4, 20.0, 200) if q is None else np.asarray(q, dtype=np.float64)
    D, V = act.D(q), act.V(q)
    out = pd.DataFrame({"q_star": q, "sigma_w2": 1.0 / D, "sigma_b2": q - V / D})
    return out[out["sigma_b2"] >= 0].reset_index(drop=True)


def gradient_growth(backward: np.ndarray) -> float:
    """exp(−slope) of the least-squares line through ln(geometric mean over replicates of the
    backward moment) against the layer; backward is (R, L)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        logg = np.log(backward).mean(0)
    layers = np.arange(1, backward.shape[1] + 1, dtype=np.float64)
    ok = np.isfinite(logg)
    if ok.sum() < 2:
        return float("nan")
    slope = least_squares_slope(layers[ok], logg[ok])
    return float(np.exp(-slope))


def grid(path: str | Path) -> tuple[pd.DataFrame, str, dict[str, object]]:
    """(one row per run: sigma_w2, sigma_b2, growth, chi_1, phase; the activation; the sizes)."""
    df = load(path)
    rows, acts, sizes = [], set(), {}
    for run_dir, d in df.groupby("run_dir"):
        meta = json.loads((Path(run_dir) / METADATA).read_text())
        spec = meta["spec"]
        if spec["scheme"] != "meanfield":
            raise ValueError(f"{run_dir}: scheme {spec['scheme']}; the phase diagram needs meanfield")
        acts.add((spec["act"], json.dumps(spec["act_params"], sort_keys=True)))
        b = layer_matrix(d, "backward")
        crit = meta.get("criticality", {})
        sizes = {"depth": spec["depth"], "width": spec["width"], "replicates": spec["replicates"]}
        rows.append({
            "sigma_w2": spec["scheme_params"]["sigma_w2"],
            "sigma_b2": spec["scheme_params"]["sigma_b2"],
            "growth": gradient_growth(b),
            "chi_1": np.nan if crit.get("chi_1") is None else float(crit["chi_1"]),
            "phase": crit.get("phase", "n/a"),
            "run_dir": run_dir,
        })
    if len(acts) != 1:
        raise ValueError(f"runs under {path} mix activations {sorted(a for a, _ in acts)}; one only")
    (act_name, _), = acts
    return pd.DataFrame(rows).sort_values(["sigma_b2", "sigma_w2"]), act_name, sizes


def figure(points: pd.DataFrame, act: activations.Activation, sizes: dict[str, object]):
    """The phase diagram: theory boundary and the measured growth per grid point."""
    from matplotlib.colors import TwoSlopeNorm

    fig, ax = plt.subplots(figsize=(6.6, 5.0), constrained_layout=True)
    wmax = max(points["sigma_w2"].max() * 1.08, 1.5)
    bmax = max(points["sigma_b2"].max() * 1.25, 0.05)
    curve = boundary(act)
    curve = curve[(curve["sigma_w2"] <= wmax * 1.5) & (curve["sigma_b2"] <= bmax * 1.5)]
    ax.fill_betweenx(curve["sigma_b2"], 0, curve["sigma_w2"], color="C0", alpha=0.07, lw=0)
    ax.fill_betweenx(curve["sigma_b2"], curve["sigma_w2"], wmax * 1.5, color="C3", alpha=0.07,
                     lw=0)
    ax.plot(curve["sigma_w2"], curve["sigma_b2"], "k-", lw=2, label=r"theory: $\chi_1 = 1$")
    logg = np.log2(points["growth"].to_numpy())
    lo = min(np.nanmin(logg), -1e-3) if np.isfinite(logg).any() else -1.0
    hi = max(np.nanmax(logg), 1e-3) if np.isfinite(logg).any() else 1.0
    sc = ax.scatter(points["sigma_w2"], points["sigma_b2"], c=logg, cmap="coolwarm",
                    norm=TwoSlopeNorm(vcenter=0.0, vmin=lo, vmax=hi), s=90, edgecolors="k",
                    linewidths=0.6, zorder=3, label="measured gradient growth per layer")
    cb = fig.colorbar(sc, ax=ax)
    cb.set_label(r"measured gradient growth per layer, $\log_2$ (0: none)")
    ax.text(0.02, 0.98, "ordered: gradients vanish", transform=ax.transAxes, va="top",
            fontsize=9, color="C0")
    ax.text(0.98, 0.98, "chaotic: gradients explode", transform=ax.transAxes, va="top",
            ha="right", fontsize=9, color="C3")
    ax.set_xlim(0, wmax)
    ax.set_ylim(-0.04 * bmax, bmax)
    ax.set_xlabel(r"$\sigma_w^2$")
    ax.set_ylabel(r"$\sigma_b^2$")
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.11), ncol=2, frameon=False)
    ax.set_title(f"{act.describe()} · meanfield · depth {sizes.get('depth')} · width "
                 f"{sizes.get('width')} · {sizes.get('replicates')} replicates", fontsize=9)
    return fig


def main(argv: list[str] | None = None) -> Path:
    """Draw PATH's phase diagram; returns the figure's path."""
    parser = ArgumentParser(prog="python -m harness.phase", description=__doc__.splitlines()[0])
    parser.add_argument("path", help="a sweep folder of meanfield runs")
    parser.add_argument("--out", default=None, help="figure path (default PATH/phase_diagram.png)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    parser.check_path(args.path)
    out = parser.check_out(args.out if args.out else Path(args.path) / "phase_diagram.png", folder=False)
    try:
        points, act_name, sizes = grid(args.path)
    except (FileNotFoundError, ValueError) as e:
        parser.error(str(e))
    act = activations.get(act_name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        fig = figure(points, act, sizes)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(out, buf.getvalue())
    write_parquet(points, out.with_suffix(".parquet"))
    agree = ((points["growth"] > 1) == (points["chi_1"] > 1)).mean()
    print(points.drop(columns="run_dir").to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print(f"{len(points)} grid points; measured growth on the theory's side of 1 at "
          f"{100 * agree:.0f}% of them; figure: {out}")
    return out


if __name__ == "__main__":
    main()
