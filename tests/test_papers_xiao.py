"""Xiao et al. 2018 (`harness.papers.xiao2018`, experiments/xiao2018.yaml) at reduced size.

Statistical claims use the spread over independent networks: a two-sided claim passes when
|measured − expected| ≤ t·se, a one-sided one when the difference exceeds t·se, with se = the
sample standard deviation over the R networks / √R and t the Student quantile at
1 − ALPHA/(2m) (two-sided) or 1 − ALPHA/m (one-sided) on R − 1 degrees of freedom (Bonferroni over
a test's m claims: family-wise false-positive rate ALPHA). Seeds are the experiment's (seed 0).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats

from harness.papers import main as papers_main
from harness.papers import xiao2018

ALPHA = 0.01
SCHEMES = ("delta_orthogonal", "kaiming_normal")


def t_quantile(m: int, networks: int, sided: int = 2) -> float:
    """Student t quantile for m claims at family-wise ALPHA on networks − 1 degrees of freedom."""
    return float(stats.t.ppf(1 - ALPHA / (sided * m), networks - 1))


@pytest.fixture(scope="module")
def retention():
    """P^l at depth 6 for both kernels: 8 networks × 8 inputs (28 pairs) × 64 positions."""
    return xiao2018.retention_table(SCHEMES, dict(depth=6, replicates=8, batch=8))


def test_correlation_pattern_follows_mean_field(retention):
    """Every P^l, l = 1..6, of both kernels within t·se of E P^l = ∏χ_c · mean_k≠0 ∏λ_k."""
    pts = retention[retention["layer"] > 0]
    t = t_quantile(m=len(pts), networks=8)
    z = (pts["retention"] - pts["theory"]).abs() / pts["retention_se"]
    assert (z <= t).all(), pts.assign(z=z).to_string()


@pytest.mark.parametrize("scheme", SCHEMES)
def test_mode_eigenvalues(scheme):
    """A's eigenvalues on the 8×8 torus: 1 for every mode (delta kernel), the 3×3 box's
    λ_(k1,k2) = λ_k1 λ_k2 with λ_k = (1 + 2cos(2πk/8))/3 (Gaussian: equal tap variances)."""
    lam = xiao2018.mode_eigenvalues(xiao2018.spec_for(scheme, ["depth=2"]))
    one = (1 + 2 * np.cos(2 * np.pi * np.arange(8) / 8)) / 3
    want = np.ones(64) if scheme == "delta_orthogonal" else np.outer(one, one).ravel()
    assert lam.shape == (2, 64)
    np.testing.assert_allclose(lam, np.broadcast_to(want, (2, 64)), rtol=0, atol=1e-12)


def test_delta_kernel_keeps_the_pattern_gaussian_loses_it(retention):
    """At layer 6 the delta kernel's P exceeds the Gaussian's by more than t·se of the difference
    (one-sided), and the Gaussian's P falls from layer 1 to layer 6 by more than t·se."""
    last = retention[retention["layer"] == 6].set_index("kernel")
    g1 = retention[(retention["layer"] == 1) & (retention["kernel"] == "Gaussian")].iloc[0]
    t = t_quantile(m=2, networks=8, sided=1)
    d, g = last.loc["delta-orthogonal"], last.loc["Gaussian"]
    assert d["retention"] - g["retention"] > t * math.hypot(d["retention_se"], g["retention_se"])
    assert g1["retention"] - g["retention"] > t * math.hypot(g1["retention_se"], g["retention_se"])


def test_delta_jacobian_is_concentrated_gaussian_is_not():
    """At depth 10 (16 channels, 4×4 images: 256-dim J) the Gaussian kernel's relative variance
    of λ exceeds the delta kernel's by more than t·se (one-sided); the delta kernel's layer-1
    Jacobian is σ_w times an orthogonal matrix (relative variance 0 up to rounding)."""
    rows = xiao2018.jacobian_table(SCHEMES, dict(depth=10, replicates=4, image=4))
    last = rows[rows["layer"] == 10].set_index("kernel")
    d, g = last.loc["delta-orthogonal"], last.loc["Gaussian"]
    t = t_quantile(m=1, networks=4, sided=1)
    assert g["rel_var"] - d["rel_var"] > t * math.hypot(d["rel_var_se"], g["rel_var_se"])
    first = rows[(rows["layer"] == 1) & (rows["kernel"] == "delta-orthogonal")].iloc[0]
    assert abs(first["rel_var"]) < 1e-5  # float32 rounding of 256 eigenvalues (~1e-7 each)


def test_runs_of_another_experiment_are_refused(run_cli, tmp_path):
    """A conv run with other settings is one line through the CLI, not a 1000-layer computation."""
    out = tmp_path / "other"
    res = run_cli("arch=conv", "depth=2", "width=4", "image=4", "batch=2", "replicates=2",
                  "plot=false", "progress=false", f"hydra.run.dir={out}", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    res = run_cli("xiao2018", str(out), module="harness.papers", cwd=tmp_path)
    assert res.returncode == 2
    assert "not an experiment=xiao2018 run" in res.stderr and not (out / "xiao2018.png").exists()


@pytest.mark.slow
def test_xiao2018_pipeline(run_cli, tmp_path, monkeypatch):
    """The sweep at depth 200 (8 networks × 4 inputs) and `python -m harness.papers xiao2018`.
    Mean field predicts the same flat lines for both kernels; what separates them at 16 channels
    is how far single networks wander: the delta-orthogonal networks' ln(F^L/q*) and
    ln(B^1/B^L) vary less across networks than the Gaussian ones' (one-sided F-tests of the
    variance ratio on (R − 1, R − 1) degrees of freedom, Bonferroni over the 2 claims)."""
    monkeypatch.setattr(xiao2018, "CORRELATION", dict(depth=20, replicates=4, batch=4))
    monkeypatch.setattr(xiao2018, "JACOBIAN", dict(depth=10, replicates=2, image=4))
    out = tmp_path / "xiao"
    networks = 8
    res = run_cli("experiment=xiao2018", "depth=200", f"replicates={networks}", "batch=4",
                  f"hydra.sweep.dir={out}", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    papers_main(["xiao2018", str(out)])
    assert (out / "xiao2018.png").stat().st_size > 10_000
    rows = json.loads((out / "xiao2018.json").read_text())
    (delta,) = [r for r in rows.values() if r.get("kernel") == "delta-orthogonal"]
    (gauss,) = [r for r in rows.values() if r.get("kernel") == "Gaussian"]
    f_crit = float(stats.f.ppf(1 - ALPHA / 2, networks - 1, networks - 1))
    for key in ("log_forward_last_over_theory", "log_backward_first_over_last"):
        # se = sd/√R for both, so the variance ratio is the ratio of the squared se's
        assert (gauss[key + "_se"] / delta[key + "_se"]) ** 2 > f_crit, (key, gauss, delta)
    assert np.isfinite(rows["Jacobian spectrum, Gaussian"]["rel_var_last"])
