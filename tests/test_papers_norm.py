"""Paper reproductions with normalization layers (De & Smith 2020, Xiong et al. 2020): each
experiment's sweep run through the CLI at reduced size, drawn by `harness.papers`, and its claims
asserted on the measured numbers.

Two-sided claims pass when |measured − expected| ≤ t·se, t the Student quantile at family-wise
ALPHA over the test's m claims (Bonferroni) on R − 1 degrees of freedom (se over replicates);
one-sided claims need the estimate beyond its bound by t·se.
"""

from __future__ import annotations

import json
import math

from scipy import stats

from harness.papers import main as papers_main

ALPHA = 0.01
R = 8


def t_quantile(m: int) -> float:
    return float(stats.t.ppf(1 - ALPHA / (2 * m), R - 1))


def sweep(run_cli, tmp_path, name: str, *overrides: str) -> dict[str, dict]:
    out = tmp_path / name
    res = run_cli(f"experiment={name}", *overrides, f"hydra.sweep.dir={out}", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    papers_main([name, str(out)])
    assert (out / f"{name}.png").stat().st_size > 10_000
    return json.loads((out / f"{name}.json").read_text())


def test_de_smith2020(run_cli, tmp_path):
    rows = sweep(run_cli, tmp_path, "de_smith2020", "depth=12", "width=64", "batch=8",
                 f"replicates={R}")
    assert len(rows) == 4
    t = t_quantile(m=5)
    bn = rows["norm=batchnorm, α=1"]
    # BN pre-norm: the stream grows by α²B = 1 per block (kaiming relu: 2·V_relu(1) = 1) ...
    assert abs(bn["linear_slope"] - bn["theory_linear_slope"]) <= t * bn["linear_slope_se"], bn
    assert abs(bn["theory_linear_slope"] - 1.0) < 0.01
    # ... so the branch's share at the last block is 1/(L + 1)
    assert abs(bn["share_last"] - bn["one_over_L_plus_1"]) <= t * bn["share_last_se"], bn
    plain = rows["norm=none, α=1"]
    # unnormalized: the stream doubles per block (log2 rate 1; at width 64 a little below)
    assert plain["log2_rate"] - t * plain["log2_rate_se"] > 0.8
    assert abs(plain["theory_log2_rate"] - 1.0) < 1e-9
    assert bn["log2_rate"] + t * bn["log2_rate_se"] < 0.5
    # SkipInit: every block is the identity, the stream stays at the input's moment (≈ 1)
    skip = rows["SkipInit (α=0), norm=none"]
    assert abs(skip["forward_last"] - 1.0) <= t * skip["forward_last_se"] + 1e-6, skip
    assert skip["share_last"] == 0.0  # α = 0: the branch's share is 0·B exactly


def test_xiong2020(run_cli, tmp_path):
    rows = sweep(run_cli, tmp_path, "xiong2020", "depth=4,8,16", "width=64", "batch=8",
                 f"replicates={R}")
    assert len(rows) == 6
    post = [r for r in rows.values() if r["position"] == "post"]
    pre = [r for r in rows.values() if r["position"] == "pre"]
    t = t_quantile(m=2)
    deep_post = max(post, key=lambda r: r["depth"])
    deep_pre = max(pre, key=lambda r: r["depth"])
    # the deepest post-LN: the last block's gradient is larger than the first's
    assert math.log(deep_post["last_over_first"]) - t * deep_post["last_over_first_log_se"] > 0
    # the deepest pre-LN: well behaved, no larger at the output than at the input
    assert math.log(deep_pre["last_over_first"]) + t * deep_pre["last_over_first_log_se"] < 0
    # depth scaling of the last block's gradient: post-LN flat, pre-LN (final LayerNorm) ~ 1/L
    assert abs(post[0]["depth_exponent"]) < 0.3 and abs(post[0]["theory_depth_exponent"]) < 1e-9
    assert pre[0]["depth_exponent"] < -0.6 and pre[0]["theory_depth_exponent"] < -0.8
