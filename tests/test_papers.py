"""Paper reproductions (experiments/README.md): each experiment smoke-run through the CLI at
tiny size, and its claims asserted on the measured numbers.

Rates are per-layer geometric factors with their standard error over replicates
(`harness.papers`). Each test checks m claims at family-wise false-positive rate ALPHA
(Bonferroni): a two-sided claim passes when |measured − expected| ≤ t·se with t the Student
quantile at 1 − ALPHA/(2m) on R − 1 degrees of freedom; a one-sided claim (a rate is below or
above 1) needs its estimate beyond t·se. Expected forward rates of the relu family include the
finite-width bias of ln F (`bias_log_rate`, from `harness.theory.finite_width`).
"""

from __future__ import annotations

import json
import math

import pytest
from scipy import stats

from harness.cli import compose_config
from harness.cli.experiments import names
from harness.papers import main as papers_main

ALPHA = 0.01
R = 8
TINY = ("depth=10", "width=64", "batch=8", f"replicates={R}")


def t_quantile(m: int, replicates: int = R) -> float:
    """Student t quantile for m two-sided claims at family-wise ALPHA."""
    return float(stats.t.ppf(1 - ALPHA / (2 * m), replicates - 1))


def sweep(run_cli, tmp_path, name: str, *overrides: str) -> list[dict]:
    """Run experiment NAME's sweep at tiny size through the CLI and draw it; its rows."""
    out = tmp_path / name
    res = run_cli(f"experiment={name}", *overrides, f"hydra.sweep.dir={out}", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    papers_main([name, str(out)])
    assert (out / f"{name}.png").stat().st_size > 10_000
    return list(json.loads((out / f"{name}.json").read_text()).values())


def pick(rows: list[dict], **match) -> dict:
    (row,) = [r for r in rows if all(r[k] == v for k, v in match.items())]
    return row


@pytest.mark.parametrize("name", ["torch_defaults", "he2015", "glorot2010", "hanin2019",
                                  "order_chaos", "pennington2017"])
def test_experiments_compose_from_anywhere(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = compose_config([f"experiment={name}", "replicates=3"])
    assert name in names() and cfg.replicates == 3 and cfg.plot is False


def test_torch_defaults(run_cli, tmp_path):
    rows = sweep(run_cli, tmp_path, "torch_defaults", *TINY)
    assert len(rows) == 9
    t = t_quantile(m=7)
    # nn.Linear's default: Var W = 1/(3 n), so relu keeps 1/2 of 1/3 per layer
    r = pick(rows, scheme="torch_default", act="relu")
    expected = math.log(1 / 6) + r["bias_log_rate"]
    assert abs(math.log(r["forward_rate"]) - expected) <= t * r["forward_se"], r
    # tanh at calculate_gain's 5/3: gradients grow toward the input (chaotic, χ_1 > 1), at the
    # mean-field rate, while the forward moment settles at the theory's bounded q*
    r = pick(rows, scheme="kaiming", act="tanh")
    assert r["gain"] == pytest.approx(5 / 3)
    assert math.log(r["backward_growth"]) > t * r["backward_se"], r
    assert abs(math.log(r["backward_growth"] / r["theory_backward_growth"])) <= t * r["backward_se"]
    assert r["chi_1"] > 1
    assert abs(math.log(r["forward_last"] / r["theory_forward_last"])) <= \
        t * r["forward_last_log_se"], r
    assert r["theory_forward_last"] == pytest.approx(r["q_star"], rel=0.01)
    # selu: gain 1 (lecun_normal) keeps q = 1; calculate_gain's 3/4 shrinks it (toward q* ≪ 1)
    r1 = pick(rows, scheme="lecun_normal", act="selu")
    assert abs(math.log(r1["forward_rate"])) <= t * r1["forward_se"], r1
    r34 = pick(rows, scheme="kaiming", act="selu")
    assert r34["gain"] == pytest.approx(0.75)
    assert math.log(r34["forward_rate"]) < -t * r34["forward_se"], r34
    assert abs(math.log(r34["forward_last"] / r34["theory_forward_last"])) <= \
        t * r34["forward_last_log_se"], r34


def test_he2015(run_cli, tmp_path):
    rows = sweep(run_cli, tmp_path, "he2015", *TINY)
    assert len(rows) == 4  # the command line's depth replaces the sweep's 22,30
    t = t_quantile(m=4)
    for r in rows:
        a = r["negative_slope"]
        paper = (1 + a * a) / 2 if r["scheme"] == "xavier" else 1.0
        expected = math.log(paper) + r["bias_log_rate"]
        assert abs(math.log(r["forward_rate"]) - expected) <= t * r["forward_se"], r
        if r["scheme"] == "kaiming":
            assert r["gain"] == pytest.approx(math.sqrt(2 / (1 + a * a)))


def test_glorot2010(run_cli, tmp_path):
    rows = sweep(run_cli, tmp_path, "glorot2010", "width=64", "batch=8", f"replicates={R}")
    assert len(rows) == 4
    t = t_quantile(m=6)
    for r in rows:  # B^1/B^L: back-propagated gradient at the input side over the output side
        log_ratio = math.log(r["backward_first_over_last"])
        se = r["backward_first_over_last_log_se"]
        assert abs(log_ratio - math.log(r["theory_backward_first_over_last"])) <= t * se, r
    for q0 in (0.1, 1.0):
        std = pick(rows, scheme="torch_default", input_var=q0)
        norm = pick(rows, scheme="xavier_uniform", input_var=q0)
        # standard init: gradients shrink toward the input, by more than 10x vs normalized
        gap = math.log(norm["backward_first_over_last"] / std["backward_first_over_last"])
        se = math.hypot(norm["backward_first_over_last_log_se"],
                        std["backward_first_over_last_log_se"])
        assert gap - t * se > math.log(10), (std, norm)


def test_hanin2019(run_cli, tmp_path):
    """Var ln F^L (one input) matches the exact product-of-factors variance; equal β gives equal
    spread at depths 4 and 8, and at equal depth halving the width raises it."""
    rows = sweep(run_cli, tmp_path, "hanin2019", "depth=4,8", "width=32,64", "replicates=400")
    assert len(rows) == 4
    z = float(stats.norm.ppf(1 - ALPHA / (2 * 6)))  # 6 claims; se from the 4th moment, R = 400
    for r in rows:
        assert abs(r["var_log"] - r["theory"]) <= z * r["var_log_se"], r
    v = {(r["depth"], r["width"]): (r["var_log"], r["var_log_se"]) for r in rows}
    (a, sa), (b, sb) = v[4, 32], v[8, 64]  # β = 1/8 both
    assert abs(a - b) <= z * math.hypot(sa, sb), v
    (c, sc) = v[8, 32]  # β = 1/4: same depth as (8, 64), twice the β
    assert c - b > z * math.hypot(sb, sc), v


def test_order_chaos(run_cli, tmp_path):
    """tanh, σ_b² = 0.05: ordered (σ_w² = 1.2) and chaotic (σ_w² = 4). The forward moment
    reaches q*, the input correlation moves toward c* (up to 1 when ordered, down to c* < c_0
    when chaotic) at the mean-field rate, and chaotic gradients grow at the mean-field rate."""
    rows = sweep(run_cli, tmp_path, "order_chaos", "scheme.sigma_w2=1.2,4", "depth=15",
                 "width=128", "batch=12", "replicates=6")
    assert len(rows) == 2
    t = t_quantile(m=7, replicates=6)
    for r in rows:
        assert abs(math.log(r["forward_last"] / r["q_star"])) <= t * r["forward_last_log_se"], r
        assert abs(r["decay_slope"] - r["theory_decay_slope"]) <= t * r["decay_slope_se"], r
        assert r["window"][1] - r["window"][0] >= 5
    order, chaos = sorted(rows, key=lambda r: r["sigma_w2"])
    assert order["corr_last"] - t * order["corr_last_se"] > 0.5  # c_0 = 0.5 → c* = 1
    assert chaos["corr_last"] + t * chaos["corr_last_se"] < 0.5  # c_0 = 0.5 → c* < c_0
    assert abs(math.log(chaos["backward_growth"] / chaos["theory_backward_growth"])) <= \
        t * chaos["backward_log_se"], chaos


def test_pennington2017(run_cli, tmp_path):
    """The Jacobian's relative spectral variance grows per layer at μ_2/μ_1² − 1 − s_1: relu 2
    (Gaussian) and 1 (orthogonal), critical tanh at q* = 0.02: 1.003 and 0.003 (isometry).

    The measured slope carries a finite-width bias that falls like 1/n (measured at depth 10,
    400+ replicates: orthogonal relu +0.076, +0.038, +0.022 at widths 64, 128, 256), so each
    claim is checked on the Richardson extrapolation 2·s(2n) − s(n) of widths n = 128 and 2n,
    which removes the 1/n term; its se is √(4 se(2n)² + se(n)²)."""
    R16 = 16
    rows = sweep(run_cli, tmp_path, "pennington2017", "depth=10", "width=128,256", "batch=4",
                 f"replicates={R16}")
    assert len(rows) == 8
    t = t_quantile(m=6, replicates=R16)
    slope = {}
    for key in {(r["act"], r["scheme"]) for r in rows}:
        n, n2 = sorted((r for r in rows if (r["act"], r["scheme"]) == key),
                       key=lambda r: r["width"])
        assert n2["width"] == 2 * n["width"]
        s = 2 * n2["slope"] - n["slope"]
        se = math.hypot(2 * n2["slope_se"], n["slope_se"])
        assert n["theory_slope"] == pytest.approx(n["paper_slope"], rel=1e-6)  # starts at q*
        assert abs(s - n["paper_slope"]) <= t * se, (key, s, se, n["paper_slope"])
        slope[key] = (s, se, n)
    # orthogonal minus Gaussian is −s_1 = 1 per layer for both activations (Gaussian's
    # Marchenko–Pastur spread), and orthogonal tanh is near-isometric: far below orthogonal relu
    for act in ("tanh", "relu"):
        (so, seo, _), (sg, seg, _) = slope[act, "orthogonal"], slope[act, "kaiming_normal"]
        assert abs(sg - so - 1.0) <= t * math.hypot(seo, seg), (act, sg, so)
    (st, set_, rt), (sr, ser, _) = slope["tanh", "orthogonal"], slope["relu", "orthogonal"]
    assert st + t * set_ < 0.01 < sr - t * ser
    # λ/m_1 near 1 at layer 10: theory's sd of λ/m_1 is √v = √(9 · 0.00275) ≈ 0.16, so the
    # 5–95% range should be about 0.74–1.26; 0.5 and 2 are at least three such sds from 1
    assert rt["spectrum_q05"] > 0.5 and rt["spectrum_q95"] < 2.0


def test_rate_recovers_a_geometric_factor_per_replicate():
    import numpy as np

    from harness.papers import rate

    layers = np.arange(1, 9)
    values = np.array([[2.0], [0.5], [1.0]]) * 0.3 ** layers[None, :]
    b, se = rate(values)
    assert b == pytest.approx(math.log(0.3), rel=1e-12) and se == pytest.approx(0.0, abs=1e-12)


def test_relu_layer_log_variance_matches_simulation():
    """Var ln B, B = Σ_i relu(g_i)²/(n/2) over n iid N(0, 1): the exact formula vs 20000 draws,
    within z·se of a sample variance (se from the 4th moment), ALPHA two-sided."""
    import numpy as np

    from harness.theory.hanin import layer_log_variance

    rng = np.random.default_rng(0)
    for n in (8, 32):
        g = rng.standard_normal((20000, n))
        with np.errstate(divide="ignore"):  # no active unit (2^−n): conditioned away, as in theory
            x = np.log((np.maximum(g, 0) ** 2).sum(1) / (n / 2))
        x = x[np.isfinite(x)]
        v = x.var(ddof=1)
        se = math.sqrt((((x - x.mean()) ** 4).mean() - v * v) / len(x))
        z = float(stats.norm.ppf(1 - ALPHA / 4))
        assert abs(v - layer_log_variance(n)) <= z * se, (n, v, layer_log_variance(n), se)
    # Hanin & Nica's leading order 5/n, approached as n grows (n·Var = 5.68, 5.15, 5.04 at
    # n = 32, 128, 512: a 1/n correction)
    assert 512 * layer_log_variance(512) == pytest.approx(5.0, rel=0.02)


def test_papers_rejects_a_folder_without_runs(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        papers_main(["he2015", str(tmp_path)])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.count("\n") == 1
    assert err.startswith("error: no metrics.parquet")


@pytest.mark.slow
def test_nlo(run_cli, tmp_path):
    """experiment=nlo at small size (tanh at depth 10, widths 32 and 64, 1200 networks × 2
    inputs): the NLO ratio within Bonferroni's t·se of 1 in both runs, the mean-field one below
    1 by more than t·se at width 32 (m = 3 claims; 300 networks at depth 8 gave z = −2.5 for
    mean-field, too few)."""
    rows = sweep(run_cli, tmp_path, "nlo", "act=tanh", "depth=10", "width=32,64",
                 "replicates=1200", "batch=2")
    assert len(rows) == 2
    t = t_quantile(m=3, replicates=1200)
    for r in rows:
        assert abs(r["z_nlo"]) <= t, r
    assert pick(rows, act="tanh", width=32)["z_meanfield"] < -t
