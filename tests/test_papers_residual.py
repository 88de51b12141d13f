"""Residual-network paper reproductions (issue 12; `harness.papers.residual`): each experiment
run through the CLI at reduced size and its claims asserted on the measured numbers.

Each test checks m claims at family-wise false-positive rate ALPHA (Bonferroni, as
tests/test_papers.py): a two-sided claim passes when |measured − expected| ≤ t·se, t the Student
quantile at 1 − ALPHA/(2m) on R − 1 degrees of freedom (the normal quantile for the
hundreds of networks of the Hanin & Rolnick test); se is the standard error of the mean of the
per-replicate statistic (sd/√R), or of a sample variance from the fourth moment. Claims the
arithmetic makes exact (an α = 0 or zero-weight block is the identity: x + 0·z = x) are
asserted exactly.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from harness import Spec, predict
from harness.archs.resmlp import nf_gamma
from harness.cli import compose_config
from harness.cli.experiments import names
from harness.core import activations
from harness.papers import residual
from harness.sim.runner import measure
from harness.theory import hanin
from tests.conftest import expect_one_line_error
from tests.test_papers import ALPHA, pick, sweep, t_quantile


def test_desmith2020(run_cli, tmp_path):
    """He init, relu: the stream doubles per block at α = 1, ends at (1 + 1/L)^L with α/√L,
    and α = 0 leaves it exactly as it entered."""
    R = 8
    rows = sweep(run_cli, tmp_path, "desmith2020", "depth=12", "width=64", "batch=8", f"replicates={R}")
    assert len(rows) == 4
    t = t_quantile(m=3, replicates=R)
    r = pick(rows, alpha=1.0, depth_scaling="none")
    assert abs(math.log(r["forward_rate"] / 2.0)) <= t * r["forward_log_se"], r
    r = pick(rows, alpha=1.0, depth_scaling="sqrt")
    paper = (1 + 1 / 12) ** 12
    assert r["paper_forward_last"] == pytest.approx(paper, rel=1e-12)
    assert abs(math.log(r["forward_last"] / paper)) <= t * r["forward_last_log_se"], r
    # bounded vs doubling: 2^12 = 4096 against (1 + 1/12)^12 = 2.6, far outside the spread
    none = pick(rows, alpha=1.0, depth_scaling="none")
    assert math.log(none["forward_last"] / r["forward_last"]) > 5 + t * math.hypot(
        none["forward_last_log_se"], r["forward_last_log_se"])
    for r in (x for x in rows if x["alpha"] == 0.0):  # x + 0·f(x) = x in floating point
        assert r["max_abs_log_drift"] == 0.0 and r["forward_rate"] == 1.0, r


def test_yang2017(run_cli, tmp_path):
    """tanh at σ_w² = 3, σ_b² = 0.05: the residual stream's moment grows like l (log-log exponent
    near 1) and its gradient like exp(2C√l) — ln g linear in √l at the mean-field slope, the
    per-layer rate falling from the first half to the second — while the plain chain's gradient
    grows by the same factor per layer in both halves (exponential)."""
    R = 8
    rows = sweep(run_cli, tmp_path, "yang2017", "depth=30", "width=128", "batch=8", f"replicates={R}")
    assert len(rows) == 2
    t = t_quantile(m=6, replicates=R)
    res, plain = pick(rows, arch="resmlp"), pick(rows, arch="mlp")
    assert abs(res["forward_exponent"] - res["theory_forward_exponent"]) <= t * res["forward_exponent_se"]
    assert abs(res["forward_exponent"] - 1.0) < 0.25  # polynomial of degree 1 (not exponential)
    assert abs(res["backward_sqrt_slope"] - res["theory_backward_sqrt_slope"]) <= \
        t * res["backward_sqrt_slope_se"], res
    # subexponential: the per-layer log rate falls (∝ 1/√l); exponential: it does not
    drop = res["backward_log_rate_first_half"] - res["backward_log_rate_second_half"]
    se = math.hypot(res["backward_log_rate_first_half_se"], res["backward_log_rate_second_half_se"])
    assert drop > t * se, res
    for half in ("first", "second"):
        k = f"backward_log_rate_{half}_half"
        assert abs(plain[k] - plain[f"theory_{k}"]) <= t * plain[f"{k}_se"], plain
    assert abs(plain["backward_log_rate_second_half"] - math.log(plain["chi_1"])) <= \
        t * plain["backward_log_rate_second_half_se"], plain


def test_tanh_asymptotes_match_the_iterated_recursion():
    """The closed-form growth laws (docs/theory.md) against the mean-field recursion iterated to
    depth 100: q^L against a·L − b·√L (the next correction is O(ln L), 0.4% of q^L here), and
    the slope of ln g against √l over the last half against −2C (1% at this depth)."""
    L = 100
    spec = Spec.from_config(compose_config([
        "arch=resmlp", "act=tanh", "scheme=meanfield", "scheme.sigma_w2=3", "scheme.sigma_b2=0.05",
        f"depth={L}", "width=8", "batch=1", "replicates=1"]))
    th = predict(spec)
    asym = residual.tanh_asymptotes(3.0, 0.05, 1.0)
    assert th["forward"][-1] == pytest.approx(asym["a"] * L - asym["b"] * math.sqrt(L), rel=0.01)
    assert th["forward"][-1] / L < asym["a"]  # the √L correction is there (q^L/L ≈ 0.9 a)
    win = residual.window(L)
    k = residual.slope_over(th["backward"][None, :], np.sqrt(win), win)[0]
    assert k == pytest.approx(asym["sqrt_slope"], rel=0.02)


def test_brock2021(run_cli, tmp_path):
    """NF blocks, α = 0.2, relu: with ws the stream grows by α² per block (1 + l·α²) and the
    average squared channel mean stays a fixed fraction of the variance; without ws that
    fraction grows."""
    R = 6
    rows = sweep(run_cli, tmp_path, "brock2021", "depth=10", "width=32", "image=5", "batch=4",
                 f"replicates={R}")
    rows = [r for r in rows if "ws" in r]  # the γ rows are checked below
    assert len(rows) == 2
    t = t_quantile(m=4, replicates=R)
    ws, raw = pick(rows, ws=True), pick(rows, ws=False)
    assert abs(ws["forward_slope"] - ws["alpha2"]) <= t * ws["forward_slope_se"], ws
    assert abs(ws["channel_mean_sq_rel_log_rate"]) <= t * ws["channel_mean_sq_rel_log_rate_se"], ws
    assert raw["channel_mean_sq_rel_log_rate"] > t * raw["channel_mean_sq_rel_log_rate_se"], raw
    # without ws the branch variance is γ²V_φ(1) = E φ²/Var φ = 1.47 > 1: faster than 1 + l·α²
    assert raw["forward_slope"] - ws["alpha2"] > t * raw["forward_slope_se"], raw


def test_nfnets_gamma_table_matches_the_exact_gains():
    """Every γ of the NFNets table is within GAMMA_RTOL (relative) of 1/std φ(z) by quadrature,
    and every one but identity's is above it (by 3.4e-4 to 8.6e-4: a systematic offset of the
    published estimates). relu's exact value has the closed form √(2/(1 − 1/π))."""
    g = residual.gamma_table()
    assert set(g["act"]) == set(residual.NFNETS_GAMMA)
    assert (g["rel_diff"].abs() <= residual.GAMMA_RTOL).all(), g
    assert (g[g["act"] != "linear"]["rel_diff"] > 2e-4).all(), g
    relu = nf_gamma(activations.get("relu"))
    assert relu == pytest.approx(math.sqrt(2 / (1 - 1 / math.pi)), rel=1e-12)
    # the table's relu value is off by more than the 1e-3 absolute the issue quotes
    assert residual.NFNETS_GAMMA["relu"] - relu > 1e-3


def test_hanin_rolnick2018(run_cli, tmp_path):
    """One input per network, width 32, 400 networks: with depth_scaling none the mean of
    ln F^L grows ∝ L (FM1) and so does its variance; with sqrt and linear (Σ α_l² = 1 and 1/L)
    the mean follows ln q^L − Var/2 (log-normal to leading order) and the variance grows far
    less than a plain relu chain's (exact theory, `harness.theory.hanin`)."""
    rows = sweep(run_cli, tmp_path, "hanin_rolnick2018", "depth=4,16", "width=32", "replicates=400")
    assert len(rows) == 6
    z = float(stats.norm.ppf(1 - ALPHA / (2 * 7)))
    plain_growth = hanin.log_variance([32] * 17) - hanin.log_variance([32] * 5)
    for scaling in ("sqrt", "linear"):
        for depth in (4, 16):
            r = pick(rows, depth_scaling=scaling, depth=depth)
            se = math.hypot(r["mean_log_se"], r["var_log_se"] / 2)
            assert abs(r["mean_log"] + r["var_log"] / 2 - r["theory_log_q"]) <= z * se, r
        a, b = pick(rows, depth_scaling=scaling, depth=4), pick(rows, depth_scaling=scaling, depth=16)
        assert b["var_log"] - a["var_log"] + z * math.hypot(a["var_log_se"], b["var_log_se"]) \
            < 0.25 * plain_growth, (a, b, plain_growth)
    a, b = pick(rows, depth_scaling="none", depth=4), pick(rows, depth_scaling="none", depth=16)
    assert b["mean_log"] - a["mean_log"] > 12 * math.log(2) / 2  # FM1: ∝ L (mean field 12 ln 2)
    assert b["var_log"] - a["var_log"] > z * math.hypot(a["var_log_se"], b["var_log_se"])


def test_fixup2019(run_cli, tmp_path):
    """scheme=fixup, m = 2: the stream and its gradient are exactly the same at every block
    (every branch outputs 0), the output moment is the input's at every depth, the first branch
    layer's gradient is exactly 0 and the last one's is the mean-field α² E[a²] > 0."""
    R = 8
    rows = sweep(run_cli, tmp_path, "fixup2019", "depth=4,16", "width=64", "batch=8", f"replicates={R}")
    assert len(rows) == 2
    t = t_quantile(m=6, replicates=R)
    for r in rows:
        assert r["max_abs_log_forward_drift"] == 0.0 and r["max_abs_log_backward_drift"] == 0.0, r
        assert r["weight_grad_1_max_abs"] == 0.0, r
        assert abs(math.log(r["forward_last"] / r["input_var"])) <= t * r["forward_last_log_se"], r
        assert abs(r["weight_grad_2"] - r["theory_weight_grad_2"]) <= t * r["weight_grad_2_se"], r
        assert r["weight_grad_2"] > t * r["weight_grad_2_se"], r


@pytest.mark.parametrize("name", ["desmith2020", "yang2017", "brock2021", "hanin_rolnick2018",
                                  "fixup2019"])
def test_residual_experiments_compose_from_anywhere(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = compose_config([f"experiment={name}", "replicates=3"])
    assert name in names() and cfg.replicates == 3 and cfg.plot is False
    Spec.from_config(cfg)  # every experiment's config is valid as it stands


def test_resconv_ws_needs_circular_padding_and_matches_theory(capsys):
    """ws=true with zero padding is a one-line error; with circular padding the NF stream's
    moment follows the centred recursion (1 + l·α² here) at every block within t·se."""
    expect_one_line_error(["arch=resconv", "ws=true"], "needs padding_mode=circular", capsys)
    R = 6
    spec = Spec.from_config(compose_config([
        "arch=resconv", "ws=true", "padding_mode=circular", "residual.nf=true", "residual.alpha=0.3",
        "act=relu", "scheme=lecun_normal", "depth=5", "width=32", "image=6", "batch=4",
        f"replicates={R}"]))
    th = predict(spec)
    np.testing.assert_allclose(th["forward"], 1 + 0.09 * np.arange(1, 6), rtol=1e-9)
    F = measure(spec, progress=False).values["forward"]
    t = float(stats.t.isf(ALPHA / (2 * 5), R - 1))
    se = F.std(0, ddof=1) / math.sqrt(R)
    assert (np.abs(F.mean(0) - th["forward"]) <= t * se).all(), (F.mean(0), th["forward"], se)
