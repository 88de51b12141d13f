"""What a run reports beyond the per-layer table: criticality, the finite-width band, lsuv's
calibration, the correlation panel; in the console, metadata.json and the figure."""

from __future__ import annotations

import json
import math

import pytest

from harness.cli import compose_config
from harness.core.activations import get
from harness.run import execute
from harness.theory.criticality import analyze

SMALL = ["depth=6", "width=32", "batch=8", "replicates=4", "progress=false"]


def _run(tmp_path, capsys, *overrides):
    res = execute(compose_config([*SMALL, *overrides]), tmp_path)
    return res, capsys.readouterr().out, json.loads((tmp_path / "metadata.json").read_text())


def test_relu_he_run_reports_criticality_and_band(tmp_path, capsys):
    res, out, meta = _run(tmp_path, capsys, "act=relu", "scheme=kaiming")
    assert "criticality (σ_w² = 2, σ_b² = 0): q* = 2, χ_1 = 1 (edge of chaos)" in out
    assert "finite-width band (Hanin & Nica 2019, central 95%)" in out
    assert meta["criticality"]["phase"] == "critical" and meta["criticality"]["xi_q"] == "inf"
    band = meta["finite_width_band"]
    assert band["defined"] and len(band["lower"]) == 6 and 0 <= band["coverage"] <= 1
    assert (tmp_path / "variance.png").stat().st_size > 10_000
    assert set(res.frame["quantity"]) == {"forward", "activation", "backward", "weight_grad",
                                          "correlation"}


def test_meanfield_tanh_run_stores_the_criticality_of_its_sigmas(tmp_path, capsys):
    _, out, meta = _run(tmp_path, capsys, "act=tanh", "scheme=meanfield", "scheme.sigma_w2=3",
                        "scheme.sigma_b2=0.2")
    ref = analyze(get("tanh"), 3.0, 0.2, q_start=3.2)
    assert meta["criticality"]["chi_1"] == pytest.approx(ref.chi_1, rel=1e-12)
    assert meta["criticality"]["phase"] == "chaotic"
    assert meta["spec"]["bias_std"] == pytest.approx(math.sqrt(0.2))
    assert meta["spec"]["scheme_params"] == {"sigma_w2": 3.0, "sigma_b2": 0.2}
    # tanh has no Hanin & Nica band: the four-point vertex gives it one (harness.theory.nlo)
    assert "finite-width band (four-point vertex, 1/n, central 95%)" in out
    assert meta["finite_width_band"]["source"] == "four-point vertex, 1/n"


def test_lsuv_run_logs_its_calibration(tmp_path, capsys):
    _, out, meta = _run(tmp_path, capsys, "act=tanh", "scheme=lsuv", "bias_std=0.2")
    assert "lsuv: calibrated on a fresh batch of 8 inputs per network" in out
    info = meta["lsuv"]
    assert len(info["iterations_mean"]) == 6 and max(info["iterations_max"]) >= 1
    assert info["converged_fraction"] == 1.0 and info["tol"] == 0.1


def test_one_input_has_no_correlation(tmp_path, capsys):
    res, _, _ = _run(tmp_path, capsys, "batch=1")
    assert "correlation" not in set(res.frame["quantity"])
