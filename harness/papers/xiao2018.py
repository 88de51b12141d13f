"""Xiao, Bahri, Sohl-Dickstein, Schoenholz & Pennington 2018: 10,000-layer vanilla CNNs.

Three claims about a tanh conv stack at the order-to-chaos point (χ_1 = 1), each measured on
the harness's own networks (`experiments/xiao2018.yaml`: Conv2d, kernel 3, circular padding,
16 channels, 8×8 images, σ_w² = 1.0395, σ_b² = 1e-5, q* = 0.0203):

(a) Forward and backward signal, from the sweep's runs (delta-orthogonal vs Gaussian kernels,
    depth 10,000): per run the replicates' geometric mean of the pooled moments
    F^l = mean (h^l)² and B^l = mean (δ^l)² against their mean-field maps q^l and g^l (flat at
    q* and 1 for both kernels), and per replicate the log ratios ln(F^L/q^L) and ln(B^1/B^L)
    (mean ± se over replicates).

(b) Spatial correlation structure (computed here, not by the sweep: the runs record no cross-input
    statistic of conv stacks). For inputs a ≠ b of one network, the cosine between their
    pre-activations at position p,

        c^l_ab(p) = ⟨h^l_a(p), h^l_b(p)⟩ / (‖h^l_a(p)‖ ‖h^l_b(p)‖)    (over channels; l = 0: x^0),

    has a spatial pattern e^l_ab(p) = c^l_ab(p) − mean_p c^l_ab. How much of the input's pattern
    survives to layer l is the projection (per network, over pairs and positions)

        P^l = Σ e^l e^0 / Σ e^0 e^0.

    Mean field, given the inputs: Σ^{l+1}_ab(p) = σ_b² + Σ_t C v_t V_ab(Σ^l_ab(p+t)), so with
    the normalized tap weights w_t = C v_t / σ_w² the pattern obeys, to first order,

        e^{l+1} = χ_c^l · A e^l,   A e(p) = Σ_t w_t e(p + t),
        χ_c^l = σ_w² q^l C'_φ(q^l, c̄^l) / q^{l+1}  (χ_c^0 = σ_w² q_0 / q^1: the first conv is linear)

    (c̄^l the uniform mode, the MLP's correlation map from c̄^0 = 0). A is diagonal in the
    image's Fourier modes k with eigenvalue λ_k = Σ_t w_t cos(k·t), and e^0 is white (iid inputs),
    so

        E P^l = ∏_{j<l} χ_c^j · (Σ_k ∏_{j<l} λ^j_k − 1)/(P − 1).

    The delta kernel has w = 1 at the centre: λ_k = 1 for every mode, and the pattern decays only
    at χ_c (depth scale −1/ln χ_c; at c* = 1, χ_c = χ_1 = 1, ξ_c = ∞). A Gaussian kernel spreads
    w over the taps: every non-uniform mode decays like (χ_c λ_k)^l even at criticality (3×3:
    λ ≤ (1 + 2cos(2π/8))/3 = 0.805 on 8×8 images: depth scale ≤ 4.6 layers).

(c) The Jacobian's squared singular values (computed here at a smaller image and depth, with
    what `jacobian=k` runs for a conv stack: `harness.archs.conv.propagate_jacobian`, the exact
    J^l = ∂h^l/∂x^0 of dimension C·P, J^{l+1} = K^{l+1} diag(φ'(h^l)) J^l with K the conv as a
    matrix); v^l = m_2/m_1² − 1. Theory: the MLP's free-probability result
    `harness.sim.jacobian.predict` (v^l = −s_1 l + Σ_{k<l} (μ_2/μ_1² − 1)). For the
    delta-orthogonal kernel it applies exactly position by position (J is block-diagonal over
    positions, each block an orthogonal MLP of width C: s_1 = 0). For Gaussian kernels K is
    block-diagonal over Fourier modes with Gaussian C×C blocks of variance σ_w²/C; taking those
    free of the D's (Xiao et al.'s Sec. 3, large C) gives the Gaussian MLP's s_1 = −1.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from harness.archs.conv import conv, predict_jacobian, propagate_jacobian
from harness.cli import compose_config
from harness.core.init import scheme as scheme_entry
from harness.core.spec import Spec
from harness.outputs.plots import plt
from harness.outputs.results import METADATA, layer_matrix
from harness.papers import isometry
from harness.sim.runner import replicate_generators, sample_chunk
from harness.theory import meanfield

#: the layers whose numbers the JSON quotes (those ≤ the depth)
MARKS = (1, 10, 100, 1000, 10000)
#: the standalone computations' sizes (b: correlation, c: Jacobian): depth, networks, inputs
CORRELATION = dict(depth=1000, replicates=8, batch=8)
JACOBIAN = dict(depth=300, replicates=4, image=4)


def spec_for(scheme: str, overrides: Sequence[str] = ()) -> Spec:
    """The experiment's Spec (experiments/xiao2018.yaml) with `scheme` and `overrides`."""
    return Spec.from_config(compose_config(["experiment=xiao2018", f"scheme={scheme}", *overrides]))


def kernel_label(scheme: str) -> str:
    """"delta-orthogonal" or "Gaussian", from the scheme's spectral class (s_1 = 0: orthogonal;
    any iid scheme is called Gaussian, as the experiment's kaiming_normal is)."""
    return "delta-orthogonal" if scheme_entry(scheme).spectral_s1 == 0 else "Gaussian"


# ---- (a) forward and backward, from the sweep --------------------------------------------------
def _log_stats(x: np.ndarray) -> tuple[float, float]:
    """(mean, se) over replicates of a per-replicate log quantity x (R,)."""
    return float(x.mean()), float(x.std(ddof=1) / math.sqrt(len(x))) if len(x) > 1 else math.nan


#: the settings a run must share with experiments/xiao2018.yaml (the computed panels use them)
SHARED = ("arch", "act", "conv_dim", "kernel", "image", "padding_mode", "width", "gain",
          "bias_std", "input_var")


def check_run(spec: dict[str, Any]) -> None:
    """ValueError unless a run's spec has the experiment's SHARED settings (depth, batch,
    replicates, seed and the scheme may differ)."""
    want = spec_for(spec["scheme"], ["depth=2"]).to_dict() if spec.get("arch") == "conv" else {}
    bad = [k for k in SHARED if spec.get(k) != want.get(k)]
    if bad:
        raise ValueError(f"not an experiment=xiao2018 run: {', '.join(bad)} differ")


def signal_table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per run: ln(F^L/q^L), ln(F^L/F^{L/2}) (the drift over the second half) and
    ln(B^1/B^L) (mean ± se over replicates; theory 0 for the last two), the
    forward and backward geometric means over replicates at the MARKS layers, and the largest
    |ln(geometric mean / theory)| over all layers. ValueError for a run of another experiment."""
    rows = []
    for run_dir, run in df.groupby("run_dir"):
        meta = json.loads((Path(run_dir) / METADATA).read_text())
        s, crit = meta["spec"], meta.get("criticality", {})
        check_run(s)
        F, tF = layer_matrix(run, "forward"), layer_matrix(run, "forward", "theory")[0]
        B, tB = layer_matrix(run, "backward"), layer_matrix(run, "backward", "theory")[0]
        L = F.shape[1]
        with np.errstate(divide="ignore", invalid="ignore"):
            lnF, lnB = np.log(F), np.log(B)
        f_last, f_last_se = _log_stats(lnF[:, -1] - math.log(tF[-1]))
        b_ratio, b_ratio_se = _log_stats(lnB[:, 0] - lnB[:, -1])
        drift, drift_se = _log_stats(lnF[:, -1] - lnF[:, L // 2 - 1])  # ln(F^L/F^{L/2})
        row: dict[str, Any] = {
            "label": f"{kernel_label(s['scheme'])} ({s['scheme']}), L={L}",
            "kernel": kernel_label(s["scheme"]), "scheme": s["scheme"], "depth": L,
            "channels": s["width"], "image": s["image"], "conv_dim": s["conv_dim"],
            "replicates": F.shape[0], "batch": s["batch"], "q_star": crit.get("q_star"),
            "chi_1": crit.get("chi_1"),
            "log_forward_last_over_theory": f_last, "log_forward_last_over_theory_se": f_last_se,
            "log_forward_second_half": drift, "log_forward_second_half_se": drift_se,
            "log_backward_first_over_last": b_ratio, "log_backward_first_over_last_se": b_ratio_se,
            "theory_log_backward_first_over_last": float(math.log(tB[0] / tB[-1])),
            "max_abs_log_forward": float(np.nanmax(np.abs(lnF.mean(0) - np.log(tF)))),
            "max_abs_log_backward": float(np.nanmax(np.abs(lnB.mean(0) - np.log(tB)))),
            "run_dir": run_dir,
        }
        for m in (m for m in MARKS if m <= L):
            row[f"forward_{m}"] = float(np.exp(lnF[:, m - 1].mean()))
            row[f"backward_{m}"] = float(np.exp(lnB[:, m - 1].mean()))
        row["theory_forward"], row["theory_backward_1"] = float(tF[-1]), float(tB[0])
        rows.append(row)
    if not rows:
        raise ValueError("no runs")
    return pd.DataFrame(rows).sort_values(["kernel", "depth"]).reset_index(drop=True)


# ---- (b) the spatial pattern of the cross-input correlation ------------------------------------
def pair_pattern(h: torch.Tensor, replicates: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(e, c̄): e_ab(p) = c_ab(p) − mean_p c_ab(p) for every pair a < b of inputs, per network,
    (R, pairs·P), and c̄ = mean over pairs and positions of c_ab(p), (R,); h (B, R·C, *S),
    c_ab(p) the cosine over channels at position p."""
    B = h.shape[0]
    hv = h.reshape(B, replicates, -1, math.prod(h.shape[2:]))
    gram = torch.einsum("arcp,brcp->rabp", hv, hv).double()  # (R, B, B, P)
    norm = torch.diagonal(gram, dim1=1, dim2=2).sqrt()  # (R, P, B)
    a, b = torch.triu_indices(B, B, 1)
    c = gram[:, a, b] / (norm[:, :, a] * norm[:, :, b]).transpose(1, 2)  # (R, pairs, P)
    return (c - c.mean(-1, keepdim=True)).reshape(replicates, -1), c.mean((1, 2))


def record_layers(depth: int, n: int = 40) -> list[int]:
    """0, 1, 2, `depth` and about n layers geometrically spaced between (those ≤ depth)."""
    grid = {0, 1, 2, depth, *(int(round(x)) for x in np.geomspace(1, max(depth, 1), n))}
    return sorted(grid & set(range(depth + 1)))


def measure_retention(spec: Spec, layers: Sequence[int]) -> dict[str, np.ndarray]:
    """P^l per network at `layers` (module doc, (b); layer 0 = the inputs) and the mean
    correlation c̄^l, by a forward pass of the spec's own networks (`sample_chunk` at replicate
    streams 0..R−1): {"retention": (R, len), "mean_corr": (R, len)}."""
    R = spec.replicates
    weights, biases, x0, _ = sample_chunk(spec, R, replicate_generators(spec, 0, R))
    B = x0.shape[1]
    x = x0.transpose(0, 1).reshape(B, R * x0.shape[2], *x0.shape[3:])
    index = {l: i for i, l in enumerate(layers)}
    keep = np.full((R, len(layers)), np.nan)
    mean_corr = np.full((R, len(layers)), np.nan)
    e0, c0 = pair_pattern(x, R)
    norm0 = e0.square().sum(-1)
    if 0 in index:
        keep[:, index[0]], mean_corr[:, index[0]] = 1.0, c0.numpy()
    act = spec.activation
    for l, W in enumerate(weights, start=1):
        h = conv(x, W, spec.padding_mode, None if biases is None else biases[l - 1])  # type: ignore[arg-type]
        if l in index:
            e, c = pair_pattern(h, R)
            keep[:, index[l]], mean_corr[:, index[l]] = ((e * e0).sum(-1) / norm0).numpy(), c.numpy()
        x = act.phi(h)
    return {"retention": keep, "mean_corr": mean_corr}


def mode_eigenvalues(spec: Spec) -> np.ndarray:
    """λ^l_k = Σ_t w^l_t cos(k·t) for every layer l and Fourier mode k of the image
    (w^l = the tap variances normalized to sum 1), (L, P); mode 0 first (λ = 1)."""
    S = spec.spatial
    out = []
    for taps in spec.tap_variances():
        grid = np.zeros(S)
        r = [(k - 1) // 2 for k in taps.shape]
        for idx in np.ndindex(*taps.shape):
            grid[tuple((i - ri) % n for i, ri, n in zip(idx, r, S, strict=True))] += taps[idx]
        out.append(np.fft.fftn(grid / grid.sum()).real.ravel())
    return np.array(out)


def retention_theory(spec: Spec) -> dict[str, Any]:
    """E P^l and c̄^l, l = 0..L (module doc, (b)), χ_c^l (l = 0..L−1) and the largest
    non-uniform mode eigenvalue of the last layer. χ_c^l (a 2-D quadrature each) is evaluated
    at about 60 layers and interpolated linearly in l between them (c̄^l moves slowly: its
    per-layer step is O(σ_b²/q*)). NaN without circular padding (A is then not diagonal in the
    Fourier modes)."""
    L = spec.depth
    act = spec.activation
    s2 = meanfield.sigma_w2(spec)
    q = meanfield.predict(spec)["forward"]
    b2, q0 = spec.bias_std**2, spec.input_var
    cbar = np.concatenate([[0.0], meanfield.correlation_map(act, s2, q, b2, q0, 0.0)])
    at = np.array([l for l in record_layers(L - 1, 60) if l >= 1], dtype=int)
    chi_at = [s2[l] * q[l - 1] * act.C_prime(float(q[l - 1]), float(cbar[l])) / q[l] for l in at]
    chi = np.empty(L)
    chi[0] = s2[0] * q0 / q[0]
    if L > 1:
        chi[1:] = np.interp(np.arange(1, L), at, chi_at)
    eig = mode_eigenvalues(spec)
    lam = np.cumprod(eig, axis=0)  # ∏_{j<l} λ^j_k, l = 1..L
    modes = (lam.sum(1) - 1.0) / (lam.shape[1] - 1)
    keep = np.concatenate([[1.0], np.cumprod(chi) * modes])
    if spec.padding_mode != "circular":
        keep = np.full(L + 1, np.nan)
    return {"retention": keep, "mean_corr": cbar, "chi_c": chi,
            "slowest_mode": float(np.sort(eig[-1])[-2])}


def mean_se(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per column of a (networks, points): the mean over networks and its se, sd/√R."""
    return a.mean(0), a.std(0, ddof=1) / math.sqrt(a.shape[0])


def retention_table(schemes: Sequence[str], sizes: dict[str, int] | None = None) -> pd.DataFrame:
    """One row per (scheme, layer l = 0..L): P^l mean ± se over networks, its theory, c̄^l."""
    sizes = CORRELATION if sizes is None else sizes
    rows = []
    for scheme in schemes:
        spec = spec_for(scheme, [f"{k}={v}" for k, v in sizes.items()])
        layers = record_layers(spec.depth)
        m, t = measure_retention(spec, layers), retention_theory(spec)
        keep, keep_se = mean_se(m["retention"])
        corr = m["mean_corr"].mean(0)
        for i, l in enumerate(layers):
            rows.append({"kernel": kernel_label(scheme), "scheme": scheme, "layer": l,
                         "retention": float(keep[i]), "retention_se": float(keep_se[i]),
                         "theory": float(t["retention"][l]), "mean_corr": float(corr[i]),
                         "theory_mean_corr": float(t["mean_corr"][l]),
                         "slowest_mode": float(t["slowest_mode"]),
                         "chi_c_last": float(t["chi_c"][-1]),
                         "networks": spec.replicates, "inputs": spec.batch})
    return pd.DataFrame(rows)


# ---- (c) the Jacobian's spectrum -------------------------------------------------------------
def measure_jacobian(spec: Spec, layers: Sequence[int]) -> dict[str, np.ndarray]:
    """m_1 and v = m_2/m_1² − 1 of J^l = ∂h^l/∂x^0 (the whole C·P-dimensional map, at each
    network's first input), per network at `layers`: {"mean": (R, len), "rel_var": (R, len)},
    by `harness.archs.conv.propagate_jacobian` (what jacobian=k runs) on the spec's networks."""
    R = spec.replicates
    weights, biases, x0, _ = sample_chunk(spec, R, replicate_generators(spec, 0, R))
    out, _ = propagate_jacobian(weights, biases, x0[:, :1], spec.activation, spec.padding_mode,  # type: ignore[arg-type]
                                layers=layers)
    idx = [l - 1 for l in layers]
    return {"mean": out["jacobian_mean"][:, idx].double().numpy(),
            "rel_var": out["jacobian_rel_var"][:, idx].double().numpy()}


def jacobian_theory(spec: Spec) -> dict[str, np.ndarray]:
    """m_1^l and v^l, l = 1..L: `harness.archs.conv.predict_jacobian` (free probability)."""
    return predict_jacobian(spec, meanfield.predict(spec)["forward"])


def jacobian_table(schemes: Sequence[str], sizes: dict[str, int] | None = None) -> pd.DataFrame:
    """One row per (scheme, recorded layer): m_1 and v (mean ± se over networks) and theory."""
    sizes = JACOBIAN if sizes is None else sizes
    rows = []
    for scheme in schemes:
        spec = spec_for(scheme, [f"{k}={v}" for k, v in sizes.items()] + ["batch=1"])
        layers = record_layers(spec.depth)[1:]
        m, t = measure_jacobian(spec, layers), jacobian_theory(spec)
        v, v_se = mean_se(m["rel_var"])
        geo = np.exp(np.log(m["mean"]).mean(0))
        slope = isometry.paper_slope(spec.activation, scheme, spec_q_star(spec))
        for i, l in enumerate(layers):
            rows.append({"kernel": kernel_label(scheme), "scheme": scheme, "layer": l,
                         "rel_var": float(v[i]), "rel_var_se": float(v_se[i]),
                         "theory_rel_var": float(t["jacobian_rel_var"][l - 1]), "mean": float(geo[i]),
                         "theory_mean": float(t["jacobian_mean"][l - 1]),
                         "paper_slope": slope,
                         "networks": spec.replicates, "dimension": spec.widths[0] * math.prod(spec.spatial)})
    return pd.DataFrame(rows)


def spec_q_star(spec: Spec) -> float:
    """The forward prediction at the last layer (q* for the experiment's networks)."""
    return float(meanfield.predict(spec)["forward"][-1])


# ---- the figure and the numbers ---------------------------------------------------------------
def _colour(kernel: str) -> str:
    return "C0" if kernel == "delta-orthogonal" else "C3"


def figure(df: pd.DataFrame, signal: pd.DataFrame, retention: pd.DataFrame,
           spectrum: pd.DataFrame):
    """2×2, log-x: (a) forward and backward moments per layer (replicates' geometric mean,
    min–max band; mean-field theory dashed); (b) P^l, the input's spatial correlation pattern
    left at layer l (mean ± se over networks; theory dashed); (c) the relative variance of the
    Jacobian's squared singular values (mean ± se; free-probability theory dashed)."""
    fig, axes = plt.subplots(2, 2, figsize=(10.5, 7.6), constrained_layout=True)
    for r in signal.itertuples():
        run = df[df["run_dir"] == r.run_dir]
        col = _colour(r.kernel)
        for ax, q in zip(axes[0], ("forward", "backward"), strict=True):
            v, t = layer_matrix(run, q), layer_matrix(run, q, "theory")[0]
            layers = np.arange(1, v.shape[1] + 1)
            with np.errstate(divide="ignore"):
                geo = np.exp(np.log(v).mean(0))
            ax.fill_between(layers, v.min(0), v.max(0), color=col, alpha=0.15, lw=0)
            ax.plot(layers, geo, "-", lw=1.0, color=col,
                    label=f"{r.kernel} ({r.replicates} networks)" if q == "forward" else None)
            ax.plot(layers, t, "--", lw=0.9, color="k" if q == "forward" else "0.3")
    axes[0, 0].set_ylabel("forward  mean (h^l)²")
    axes[0, 1].set_ylabel("backward  mean (δ^l)²")
    axes[0, 0].set_title("(a) signal, from the sweep (dashed: mean field)", fontsize=9)
    axes[0, 1].set_title("(a) gradient, from the sweep (dashed: mean field)", fontsize=9)
    for ax in axes[0]:
        ax.set_yscale("log")
    axes[0, 0].legend(fontsize=7, frameon=False)
    ax = axes[1, 0]
    for kernel, d in retention.groupby("kernel"):
        d = d[d["layer"] > 0]
        col = _colour(str(kernel))
        ax.errorbar(d["layer"], d["retention"], yerr=d["retention_se"], fmt="o", ms=2.5,
                    color=col, label=f"{kernel}")
        ax.plot(d["layer"], d["theory"], "--", lw=0.9, color=col)
    ax.axhline(0, color="0.6", lw=0.5)
    ax.set_ylabel("P^l: input's spatial correlation pattern left")
    ax.set_title("(b) computed by harness.papers.xiao2018 (dashed: mean field)", fontsize=9)
    ax.legend(fontsize=7, frameon=False)
    ax = axes[1, 1]
    for kernel, d in spectrum.groupby("kernel"):
        col = _colour(str(kernel))
        ax.errorbar(d["layer"], d["rel_var"], yerr=d["rel_var_se"], fmt="o", ms=2.5, color=col,
                    label=f"{kernel}, {int(d['dimension'].iloc[0])}-dim J")
        ax.plot(d["layer"], d["theory_rel_var"], "--", lw=0.9, color=col)
    ax.set_yscale("log")
    ax.set_ylim(bottom=1e-3)  # layer 1 of the delta kernel: 0 up to rounding (σ_w·orthogonal)
    ax.set_ylabel("Var λ / (mean λ)²  of  J^l = ∂h^l/∂x^0")
    ax.set_title("(c) computed by harness.papers.xiao2018 (dashed: free probability)", fontsize=9)
    ax.legend(fontsize=7, frameon=False)
    for ax in axes.ravel():
        ax.set_xscale("log")
        ax.set_xlabel("layer l")
        ax.grid(alpha=0.3, which="both", lw=0.4)
    fig.suptitle("Xiao et al. 2018: tanh conv stacks at χ_1 = 1, delta-orthogonal vs Gaussian "
                 "kernels", fontsize=10)
    return fig


def _jsonable(v: Any) -> Any:
    if isinstance(v, (np.floating, float)):
        return None if math.isnan(v) else float(v)
    return v.item() if hasattr(v, "item") else v


def numbers(signal: pd.DataFrame, retention: pd.DataFrame, spectrum: pd.DataFrame
            ) -> dict[str, dict[str, Any]]:
    """{name: {key: value, "summary": one line}}: one row per sweep run (a), per kernel for the
    correlation pattern (b) and the Jacobian (c)."""
    out: dict[str, dict[str, Any]] = {}
    for r in signal.to_dict("records"):
        row = {k: _jsonable(v) for k, v in r.items() if k != "run_dir"}
        row["summary"] = (
            f"ln(F^L/q*) {r['log_forward_last_over_theory']:+.3f} ± "
            f"{r['log_forward_last_over_theory_se']:.2g}, ln(F^L/F^(L/2)) "
            f"{r['log_forward_second_half']:+.3f} ± {r['log_forward_second_half_se']:.2g}, ln(B^1/B^L) "
            f"{r['log_backward_first_over_last']:+.3f} ± {r['log_backward_first_over_last_se']:.2g} "
            f"(mean field {r['theory_log_backward_first_over_last']:+.3f}); max over layers of "
            f"|ln(geometric mean/theory)|: forward {r['max_abs_log_forward']:.3f}, backward "
            f"{r['max_abs_log_backward']:.3f}")
        out[r["label"]] = row
    for kernel, d in retention.groupby("kernel"):
        pts = {f"layer {int(x.layer)}": {"measured": x.retention, "se": x.retention_se,
                                         "theory": x.theory}
               for x in d.itertuples() if x.layer in (1, 2, 5, 10, 20, 100, 1000)
               or x.layer == d["layer"].max()}
        last = d[d["layer"] == d["layer"].max()].iloc[0]
        out[f"correlation pattern, {kernel}"] = {
            "depth": int(last["layer"]), "networks": int(last["networks"]),
            "inputs": int(last["inputs"]), "slowest_mode_eigenvalue": last["slowest_mode"],
            "chi_c_last": last["chi_c_last"], "points": pts,
            "summary": "P^l measured (theory): " + ", ".join(
                f"{k.split()[1]}: {v['measured']:.3g} ± {v['se']:.2g} ({v['theory']:.3g})"
                for k, v in pts.items())}
    for kernel, d in spectrum.groupby("kernel"):
        layers = d["layer"].to_numpy(dtype=np.float64)
        last = d.iloc[-1]
        slope = float(np.polyfit(layers, d["rel_var"].to_numpy(), 1)[0])
        theory_slope = float(np.polyfit(layers, d["theory_rel_var"].to_numpy(), 1)[0])
        out[f"Jacobian spectrum, {kernel}"] = {
            "depth": int(last["layer"]), "dimension": int(last["dimension"]),
            "networks": int(last["networks"]), "rel_var_last": last["rel_var"],
            "rel_var_last_se": last["rel_var_se"], "theory_rel_var_last": last["theory_rel_var"],
            "slope": slope, "theory_slope": theory_slope, "paper_slope": last["paper_slope"],
            "mean_last": last["mean"], "theory_mean_last": last["theory_mean"],
            "rel_var_ceiling": int(last["dimension"]) - 1,  # N λ's: m_2/m_1² − 1 ≤ N − 1
            "points": {f"layer {int(x.layer)}": {"measured": x.rel_var, "se": x.rel_var_se,
                                                 "theory": x.theory_rel_var}
                       for x in d.itertuples()},
            "summary": (f"Var λ/m_1² at layer {int(last['layer'])}: {last['rel_var']:.4g} ± "
                        f"{last['rel_var_se']:.2g} (theory {last['theory_rel_var']:.4g}); "
                        f"growth per layer {slope:.4g} (theory {theory_slope:.4g}); "
                        f"m_1 {last['mean']:.4g} (theory {last['theory_mean']:.4g})")}
    return out


def reproduce(df: pd.DataFrame, correlation: dict[str, int] | None = None,
              spectrum: dict[str, int] | None = None):
    """The figure and numbers of `python -m harness.papers xiao2018 DIR`: (a) from the sweep's
    runs in df, (b) and (c) computed for the schemes found there at the CORRELATION and
    JACOBIAN sizes (or the given ones)."""
    signal = signal_table(df)
    schemes = list(dict.fromkeys(signal.sort_values("kernel")["scheme"]))
    retention = retention_table(schemes, correlation)
    spec_rows = jacobian_table(schemes, spectrum)
    return figure(df, signal, retention, spec_rows), numbers(signal, retention, spec_rows)
