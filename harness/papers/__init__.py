"""`python -m harness.papers NAME PATH [--out FILE]`: figure and measured numbers of a paper
reproduction (experiments/NAME.yaml, experiments/README.md) from its sweep folder PATH.

Every number is a per-layer rate measured per replicate and averaged over the R replicates,
with its standard error from their spread. For a quantity v^l_r (replicate r, layer l = 1..L)

    b_r   = least-squares slope of ln v^l_r against l           (one per replicate)
    rate  = exp(mean_r b_r),   se = sd_r(b_r)/√R   (the se of ln rate)

so `rate` is the geometric-mean factor per layer (forward: < 1 shrinks toward the output;
backward: `growth` = exp(−mean b), > 1 grows toward the input). The same slope of the run's
`theory` column gives the mean-field rate. At finite width ln v is biased low: for the relu
family with Gaussian weights `harness.theory.finite_width` gives E[ln(F^l/q^l)] = −s_l²/2, so the
rate a width-n run should show is exp(slope of (ln q^l − s_l²/2)) (`expected_bias`; used for
uniform weights too, as an approximation: their pre-activations are Gaussian only to O(1/n)).
"""

from __future__ import annotations

import io
import json
import math
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from harness import archs
from harness.cli import ArgumentParser
from harness.core.capabilities import FINITE_WIDTH_BAND
from harness.core.stats import least_squares_slope
from harness.outputs.plots import plt
from harness.outputs.results import METADATA, atomic_write_bytes, layer_matrix, load
from harness.papers import de_smith2020, isometry, nlo, order_chaos, residual, xiao2018, xiong2020, yang2019
from harness.theory import finite_width, hanin


def log_slopes(values: np.ndarray) -> np.ndarray:
    """b_r: the least-squares slope of ln values[r, l] against l, per replicate; values (R, L)."""
    layers = np.arange(1, values.shape[1] + 1, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        logv = np.log(values)
    return least_squares_slope(layers, logv)


def rate(values: np.ndarray) -> tuple[float, float]:
    """(mean_r b_r, sd_r(b_r)/√R): the log of the geometric per-layer factor and its se."""
    b = log_slopes(values)
    se = float(b.std(ddof=1) / math.sqrt(len(b))) if len(b) > 1 else float("nan")
    return float(b.mean()), se


def expected_bias(run: pd.DataFrame, meta: dict[str, Any]) -> float:
    """Slope over l of −s_l²/2 (the finite-width bias of ln F^l) for the relu family, else 0."""
    spec = meta["spec"]
    a = {"relu": 0.0, "linear": 1.0}.get(spec["act"])
    if spec["act"] == "leaky_relu":
        a = float(spec["act_params"]["negative_slope"])
    if (a is None or spec["bias_std"] > 0
            or FINITE_WIDTH_BAND not in archs.get(spec["arch"]).capabilities):
        return 0.0
    corr = _per_layer(run, "correlation", "theory")
    rho = corr.mean(0) if corr is not None else np.ones(spec["depth"])
    s2 = finite_width.log_variance(a, tuple(spec["widths"]), rho, spec["input_corr"],
                                   spec["batch"])
    return float(least_squares_slope(np.arange(1, len(s2) + 1), -s2 / 2))


def _per_layer(run: pd.DataFrame, quantity: str, column: str = "value") -> np.ndarray | None:
    if not (run["quantity"] == quantity).any():
        return None
    return layer_matrix(run, quantity, column)


def label(meta: dict[str, Any]) -> str:
    """scheme · act(params) · gain · depth, for legends and tables."""
    s = meta["spec"]
    params = ",".join(f"{k}={v:g}" for k, v in s["act_params"].items())
    act = f"{s['act']}({params})" if params else s["act"]
    gain = "" if s["gain"] is None else f" gain {s['gain']:.3g}"
    extra = f" q0={s['input_var']:g}" if s["input_var"] != 1 else ""
    return f"{s['scheme']} · {act}{gain} · L={s['depth']}{extra}"


def table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per run: its settings, measured per-layer rates with se, theory rates, and the
    criticality numbers (q*, χ_1) from its metadata."""
    rows = []
    for run_dir, run in df.groupby("run_dir"):
        meta = json.loads((Path(run_dir) / METADATA).read_text())
        s, crit = meta["spec"], meta.get("criticality", {})
        F, B = _per_layer(run, "forward"), _per_layer(run, "backward")
        fwd, fwd_se = rate(F)
        bwd, bwd_se = rate(B)
        tF = _per_layer(run, "forward", "theory")[0]
        tB = _per_layer(run, "backward", "theory")[0]
        W = _per_layer(run, "weight_grad")
        with np.errstate(divide="ignore", invalid="ignore"):
            first_last = np.log(B[:, 0] / B[:, -1])
            w_first_last = np.log(W[:, 0] / W[:, -1])
        rows.append({
            "label": label(meta), "scheme": s["scheme"], "act": s["act"],
            "negative_slope": s["act_params"].get("negative_slope", np.nan),
            "gain": np.nan if s["gain"] is None else s["gain"], "depth": s["depth"],
            "width": s["width"], "input_var": s["input_var"], "replicates": s["replicates"],
            "forward_rate": math.exp(fwd), "forward_log_rate": fwd, "forward_se": fwd_se,
            "theory_forward_rate": math.exp(rate(tF[None, :])[0]),
            "bias_log_rate": expected_bias(run, meta),
            "backward_growth": math.exp(-bwd), "backward_log_rate": bwd, "backward_se": bwd_se,
            "theory_backward_growth": math.exp(-rate(tB[None, :])[0]),
            "backward_first_over_last": float(np.exp(first_last.mean())),
            "backward_first_over_last_log_se": float(first_last.std(ddof=1) / math.sqrt(len(B))),
            "theory_backward_first_over_last": float(tB[0] / tB[-1]),
            "weight_grad_first_over_last": float(np.exp(w_first_last.mean())),
            "forward_last": float(np.exp(np.log(F[:, -1]).mean())),
            "forward_last_log_se": float(np.log(F[:, -1]).std(ddof=1) / math.sqrt(len(F))),
            "theory_forward_last": float(tF[-1]),
            "q_star": crit.get("q_star"), "chi_1": crit.get("chi_1"), "run_dir": run_dir,
        })
    return pd.DataFrame(rows).sort_values("label").reset_index(drop=True)


def figure(df: pd.DataFrame, rows: pd.DataFrame, title: str):
    """Two panels, log scale: the replicate geometric mean of the forward and backward moments
    per layer, one line per run (measured: solid with markers; theory: dashed)."""
    fig, axes = plt.subplots(1, 2, figsize=(10.5, 4.2), constrained_layout=True)
    for i, row in enumerate(rows.itertuples()):
        run = df[df["run_dir"] == row.run_dir]
        for ax, q in zip(axes, ("forward", "backward"), strict=True):
            v = _per_layer(run, q)
            t = _per_layer(run, q, "theory")[0]
            layers = np.arange(1, v.shape[1] + 1)
            with np.errstate(divide="ignore"):
                geo = np.exp(np.log(v).mean(0))
            ax.plot(layers, geo, "o-", ms=2.5, lw=1.2, color=f"C{i % 10}",
                    label=row.label if q == "forward" else None)
            ax.plot(layers, t, "--", lw=0.8, color=f"C{i % 10}")
    axes[0].set_ylabel("forward moment mean (h^l)²")
    axes[1].set_ylabel("backward moment mean (δ^l)²")
    for ax in axes:
        ax.set_yscale("log")
        ax.set_xlabel("layer l  (1: input side)")
        ax.grid(alpha=0.3, which="both", lw=0.4)
    fig.legend(loc="outside lower center", ncol=2, fontsize=7, frameon=False)
    fig.suptitle(f"{title}: measured (solid, geometric mean over replicates), theory (dashed)",
                 fontsize=9)
    return fig


ID_COLUMNS = ["scheme", "act", "negative_slope", "gain", "depth", "width", "input_var",
              "replicates"]


def _numbers(rows: pd.DataFrame, columns: list[str]) -> dict[str, dict[str, Any]]:
    """{label: {column: value}}, JSON-safe (NaN as None)."""
    out = {}
    for _, r in rows.iterrows():
        out[r["label"]] = {c: (None if isinstance(r[c], float) and math.isnan(r[c]) else
                               (r[c].item() if hasattr(r[c], "item") else r[c]))
                           for c in [*ID_COLUMNS, *columns]}
    return out


RATE_COLUMNS = ["forward_rate", "forward_se", "theory_forward_rate", "bias_log_rate",
                "backward_growth", "backward_se", "theory_backward_growth", "forward_last",
                "forward_last_log_se", "theory_forward_last", "q_star", "chi_1"]


def torch_defaults(df: pd.DataFrame):
    """torch's defaults: nn.Linear's kaiming_uniform_(a=√5) (Var W = 1/(3 fan_in)) and
    calculate_gain's 5/3 (tanh), 3/4 (selu), √2 (relu), against gain 1 (lecun_normal)."""
    rows = table(df)
    return figure(df, rows, "torch's defaults"), _numbers(rows, RATE_COLUMNS)


def he2015(df: pd.DataFrame):
    """He et al. 2015: xavier (rate (1+a²)/2 per layer) vs kaiming (rate 1) for leaky relu a."""
    rows = table(df)
    return figure(df, rows, "He et al. 2015"), _numbers(rows, RATE_COLUMNS)


def glorot2010(df: pd.DataFrame):
    """Glorot & Bengio 2010: 5 tanh hidden layers, standard U(±1/√n) vs normalized init."""
    rows = table(df)
    cols = [*RATE_COLUMNS, "backward_first_over_last", "backward_first_over_last_log_se",
            "theory_backward_first_over_last", "weight_grad_first_over_last"]
    return figure(df, rows, "Glorot & Bengio 2010"), _numbers(rows, cols)


def hanin2019(df: pd.DataFrame):
    """Hanin & Rolnick 2018 / Hanin & Nica 2019: Var ln F^L against β = Σ 1/n_l and depth."""
    rows = hanin.table(df)
    numbers = {f"L={r.depth} n={r.width}": {c: getattr(r, c) for c in
                                           ("depth", "width", "beta", "replicates", "var_log",
                                            "var_log_se", "theory", "five_beta")}
               for r in rows.itertuples()}
    return hanin.figure(rows), numbers


def order_chaos_2017(df: pd.DataFrame):
    """Poole et al. 2016 / Schoenholz et al. 2017: q*, χ_1 and ξ_c measured vs mean field."""
    rows = order_chaos.table(df)
    numbers = {f"sigma_w2={r['sigma_w2']:g} sigma_b2={r['sigma_b2']:g}":
               {k: (None if isinstance(v, float) and math.isnan(v) else v)
                for k, v in r.items() if k != "run_dir"}
               for r in rows.to_dict("records")}
    return order_chaos.figure(df, rows), numbers


def pennington2017(df: pd.DataFrame):
    """Pennington et al. 2017: the Jacobian's relative spectral variance grows per layer at
    μ_2/μ_1² − 1 − s_1 (orthogonal s_1 = 0, Gaussian −1); its spectrum at the last layer."""
    rows = isometry.table(df)
    numbers = {r["label"]: {k: (None if isinstance(v, float) and math.isnan(v) else v)
                            for k, v in r.items() if k != "run_dir"}
               for r in rows.to_dict("records")}
    return isometry.figure(df, rows), numbers


def _with_summary(numbers: dict[str, dict[str, Any]], line: Callable[[dict[str, Any]], str]):
    """Each row of `numbers` with its one-line `summary` (what `main` prints)."""
    for row in numbers.values():
        row["summary"] = line(row)
    return numbers


def _g(v: Any, digits: int = 4) -> str:
    return "n/a" if v is None else f"{v:.{digits}g}"


def desmith2020(df: pd.DataFrame):
    """De & Smith 2020: an unnormalized relu residual stream at He init grows by 1 + α_l² per
    block: doubles at α = 1, bounded ((1 + α²/L)^L → e^{α²}) at α/√L, flat at α = 0."""
    rows = residual.desmith_table(df)
    numbers = residual.jsonable(rows, "label")
    return residual.desmith_figure(df, rows), _with_summary(numbers, lambda r: (
        f"stream ×{_g(r['forward_rate'])} per block (mean field {_g(r['theory_forward_rate'])}, "
        f"paper 1 + α_l² = {_g(r['paper_forward_rate'])}), at block L {_g(r['forward_last'])} "
        f"(mean field {_g(r['theory_forward_last'])})"))


def yang2017(df: pd.DataFrame):
    """Yang & Schoenholz 2017: tanh residual streams grow polynomially (q ∝ l) and their
    gradients as exp(Θ(√l)), where the plain tanh chain is exponential."""
    rows = residual.yang_table(df)
    numbers = residual.jsonable(rows, "label")
    return residual.yang_figure(df, rows), _with_summary(numbers, lambda r: (
        f"forward exponent {_g(r['forward_exponent'])} ± {_g(r['forward_exponent_se'], 2)} "
        f"(mean field {_g(r['theory_forward_exponent'])}), backward √l slope "
        f"{_g(r['backward_sqrt_slope'])} ± {_g(r['backward_sqrt_slope_se'], 2)} (mean field "
        f"{_g(r['theory_backward_sqrt_slope'])}, asymptote {_g(r['asymptotic_backward_sqrt_slope'])}), "
        f"backward log rate per layer first/second half {_g(r['backward_log_rate_first_half'])}/"
        f"{_g(r['backward_log_rate_second_half'])}"))


def brock2021(df: pd.DataFrame):
    """Brock et al. 2021: NF-ResNet signal propagation (stream variance 1 + l·α², channel
    means bounded only with ws) and the NFNets γ table against the exact gains."""
    rows = residual.brock_table(df)
    numbers = residual.jsonable(rows, "label")
    numbers = _with_summary(numbers, lambda r: (
        f"stream slope {_g(r['forward_slope'])} ± {_g(r['forward_slope_se'], 2)} per block "
        f"(α² = {_g(r['alpha2'])}, mean field {_g(r['theory_forward_slope'])}), at block L "
        f"{_g(r['forward_last'])} (1 + Lα² = {_g(r['paper_forward_last'])}); channel mean² "
        f"{_g(r['channel_mean_sq_first'])} → {_g(r['channel_mean_sq_last'])}, relative to the "
        f"variance {_g(r['channel_mean_sq_rel_log_rate'])} ± "
        f"{_g(r['channel_mean_sq_rel_log_rate_se'], 2)} per block (log)"))
    gammas = residual.gamma_table()
    for g in gammas.itertuples():
        numbers[f"gamma {g.act}"] = {"act": g.act, "table": g.table, "exact": g.exact,
                                     "diff": g.diff, "rel_diff": g.rel_diff,
                                     "summary": f"NFNets table {g.table:.7f}, exact {g.exact:.7f}, "
                                                f"table − exact {g.diff:+.2e} ({g.rel_diff:+.2e} relative)"}
    return residual.brock_figure(df, rows), numbers


def hanin_rolnick2018(df: pd.DataFrame):
    """Hanin & Rolnick 2018 for residual nets: FM1 (mean of ln F^L bounded iff Σ α_l² stays
    bounded) and FM2 (its variance across networks bounded in depth), against plain chains."""
    rows = residual.hanin_rolnick_table(df)
    numbers = residual.jsonable(rows, "label")
    return residual.hanin_rolnick_figure(rows), _with_summary(numbers, lambda r: (
        f"Σα_l² {_g(r['sum_alpha2'])}, mean ln F^L {_g(r['mean_log'])} ± {_g(r['mean_log_se'], 2)} "
        f"(mean-field ln q^L {_g(r['theory_log_q'])}), Var ln F^L {_g(r['var_log'])} ± "
        f"{_g(r['var_log_se'], 2)}" + ("" if r["plain_theory_var_log"] is None else
                                       f" (plain chain exact {_g(r['plain_theory_var_log'])})")))


def fixup2019(df: pd.DataFrame):
    """Fixup (Zhang, Dauphin & Ma 2019): the output moment does not depend on depth at init,
    and the gradient to each branch's last (zero) layer is nonzero."""
    rows = residual.fixup_table(df)
    numbers = residual.jsonable(rows, "label")
    return residual.fixup_figure(df, rows), _with_summary(numbers, lambda r: (
        f"output moment {_g(r['forward_last'])} ± {_g(r['forward_last_log_se'], 2)} (log se; input "
        f"{_g(r['input_var'])}), max |ln F^l/F^1| {_g(r['max_abs_log_forward_drift'], 2)}; weight "
        f"gradient of the last branch layer {_g(r['weight_grad_' + str(r['branch_depth'])])} ± "
        f"{_g(r['weight_grad_' + str(r['branch_depth']) + '_se'], 2)} (mean field "
        f"{_g(r['theory_weight_grad_' + str(r['branch_depth'])])}), of the first "
        f"{_g(r['weight_grad_1'])}"))


def nlo_2022(df: pd.DataFrame):
    """Roberts, Yaida & Hanin 2022: the forward moment at layer L over mean-field and over the
    1/n (NLO) prediction, against L/n (`harness.papers.nlo`)."""
    rows = nlo.table(df)
    numbers = {f"{r['act']} L={r['depth']} n={r['width']}":
               {k: v for k, v in r.items() if k != "run_dir"} for r in rows.to_dict("records")}
    return nlo.figure(rows), numbers


def _records(rows: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """{label: {column: value}} of a table, JSON-safe (NaN as None), without run_dir."""
    return {r["label"]: {k: (None if isinstance(v, float) and math.isnan(v) else
                             (v.item() if hasattr(v, "item") else v))
                         for k, v in r.items() if k != "run_dir"}
            for r in rows.to_dict("records")}


def de_smith_2020(df: pd.DataFrame):
    """De & Smith 2020: a pre-norm BatchNorm ResNet's stream grows like l + 1 (the branch's
    share like 1/(l + 1)), against 2^l unnormalized and flat with SkipInit."""
    rows = de_smith2020.table(df)
    numbers = _records(rows)
    for row in numbers.values():
        row["summary"] = (f"stream slope {row['linear_slope']:.4g} ± {row['linear_slope_se']:.2g} per "
                          f"block (theory {row['theory_linear_slope']:.4g}), log2 rate "
                          f"{row['log2_rate']:.4g} (theory {row['theory_log2_rate']:.4g}), branch "
                          f"share at L {row['share_last']:.4g} (theory {row['share_theory']:.4g}, "
                          f"1/(L+1) {row['one_over_L_plus_1']:.4g})")
    return de_smith2020.figure(df, rows), numbers


def xiong_2020(df: pd.DataFrame):
    """Xiong et al. 2020: post-LN vs pre-LN per-block weight gradients and their depth scaling."""
    rows = xiong2020.table(df)
    numbers = _records(rows)
    for row in numbers.values():
        last = "final_ln_last" if row["position"] == "pre" else "last"
        row["summary"] = (f"last block {row[last]:.4g} (theory {row['theory_' + last]:.4g}"
                          f"{', with the final LayerNorm' if row['position'] == 'pre' else ''}), "
                          f"last/first {row['last_over_first']:.4g} (theory "
                          f"{row['theory_last_over_first']:.4g}), depth exponent "
                          f"{row.get('depth_exponent') or float('nan'):.3g} (theory "
                          f"{row.get('theory_depth_exponent') or float('nan'):.3g})")
    return xiong2020.figure(df, rows), numbers


EXPERIMENTS: dict[str, Callable[[pd.DataFrame], tuple[Any, dict[str, Any]]]] = {
    "torch_defaults": torch_defaults, "he2015": he2015, "glorot2010": glorot2010,
    "hanin2019": hanin2019, "order_chaos": order_chaos_2017, "pennington2017": pennington2017,
    "desmith2020": desmith2020, "yang2017": yang2017, "brock2021": brock2021,
    "hanin_rolnick2018": hanin_rolnick2018, "fixup2019": fixup2019,
    "nlo": nlo_2022,
}
EXPERIMENTS.update({"de_smith2020": de_smith_2020, "xiong2020": xiong_2020})


def yang_2019(df: pd.DataFrame):
    """Yang et al. 2019: a batch-normalized MLP's gradient growth per layer, measured against
    the finite-batch mean-field rate, over B and the activation (experiment yang2019) or σ_w²
    and the norm's position (yang2019_sigma)."""
    rows = yang2019.table(df)
    numbers = _records(rows)
    for row in numbers.values():
        row["summary"] = (f"gradient growth {row['rate']:.4g} per layer (± {row['log_rate_se']:.2g} "
                          f"in ln; log-normal corrected {row['rate_lognormal']:.4g}), theory "
                          f"{row['theory_rate']:.4g}, linear chain {row['linear_rate']:.4g}")
    return yang2019.figure(df, rows), numbers


EXPERIMENTS["yang2019"] = yang_2019


def xiao_2018(df: pd.DataFrame):
    """Xiao et al. 2018: a tanh conv stack at χ_1 = 1 to depth 10,000, delta-orthogonal vs
    Gaussian kernels: (a) forward and backward from the sweep, (b) the input's spatial
    correlation pattern and (c) the Jacobian's spectrum computed by `harness.papers.xiao2018`."""
    return xiao2018.reproduce(df)


EXPERIMENTS["xiao2018"] = xiao_2018


def main(argv: list[str] | None = None) -> Path:
    """Write PATH/NAME.png (or --out) and NAME.json (the measured numbers); returns the figure."""
    parser = ArgumentParser(prog="python -m harness.papers", description=__doc__.splitlines()[0])
    parser.add_argument("name", choices=sorted(EXPERIMENTS))
    parser.add_argument("path", help="the experiment's sweep folder")
    parser.add_argument("--out", default=None, help="figure path (default PATH/NAME.png)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    parser.check_path(args.path)
    out = parser.check_out(args.out if args.out else Path(args.path) / f"{args.name}.png", folder=False)
    try:
        df = load(args.path)
    except FileNotFoundError as e:
        parser.error(str(e))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        try:
            fig, numbers = EXPERIMENTS[args.name](df)
        except (KeyError, ValueError) as e:  # runs of another kind than NAME needs
            parser.error(f"{args.path} does not hold {args.name}'s runs ({e})")
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    atomic_write_bytes(out, buf.getvalue())
    atomic_write_bytes(out.with_suffix(".json"), json.dumps(numbers, indent=1).encode())
    for name, row in numbers.items():
        if "summary" in row:  # the experiment's own one-line summary
            print(f"{name}: {row['summary']}")
            continue
        if "c_star" in row:
            def f(key: str, row: dict = row) -> str:
                v = row.get(key)
                return "n/a" if v is None else f"{v:.4g}"
            print(f"{name}: forward at L {f('forward_last')} (q* {f('q_star')}), backward growth "
                  f"{f('backward_growth')} (chi_1 {f('chi_1')}), xi measured {f('xi_measured')} "
                  f"(mean field over the window {f('xi_theory_window')}, xi_c {f('xi_c')})")
            continue
        if "paper_slope" in row:
            print(f"{name}: Jacobian relative variance grows {row['slope']:.4g} ± "
                  f"{row['slope_se']:.2g} per layer (theory {row['theory_slope']:.4g}, paper "
                  f"{row['paper_slope']:.4g}); last layer λ/m_1 5–95%: "
                  f"{row['spectrum_q05']:.3g}–{row['spectrum_q95']:.3g}")
            continue
        if "ratio_nlo" in row:
            print(f"{name}: L/n {row['L_over_n']:.3g}, measured/mean-field "
                  f"{row['ratio_meanfield']:.4f} (z {row['z_meanfield']:+.1f}), measured/NLO "
                  f"{row['ratio_nlo']:.4f} (z {row['z_nlo']:+.1f})")
            continue
        if "var_log" in row:
            print(f"{name}: beta {row['beta']:.4g}, Var ln F^L {row['var_log']:.4g} ± "
                  f"{row['var_log_se']:.2g} (exact theory {row['theory']:.4g}, 5 beta "
                  f"{row['five_beta']:.4g})")
            continue
        print(f"{name}: forward rate {row['forward_rate']:.4g} (theory "
              f"{row['theory_forward_rate']:.4g}), backward growth {row['backward_growth']:.4g} "
              f"(theory {row['theory_backward_growth']:.4g})")
    print(f"figure: {out}")
    return out


if __name__ == "__main__":
    main()
