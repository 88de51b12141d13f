"""Experiments (`experiment=NAME` from any working directory) and the phase diagram end to end.

The tiny phase diagram is a real claim, not a smoke test: its two σ_w² values lie far on either
side of the order/chaos boundary, and each grid point's measured gradient growth must be on
the theory's side of 1 (ordered: < 1, chaotic: > 1).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from harness.cli import compose_config, groups
from harness.cli.experiments import names
from harness.core import activations
from harness.phase import boundary, gradient_growth
from harness.phase import main as phase_main


def test_experiment_composes_from_the_package(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing relative to the working directory
    cfg = compose_config(["experiment=phase_diagram", "depth=7"])
    assert cfg.act.name == "tanh" and cfg.scheme.name == "meanfield"
    assert cfg.depth == 7 and cfg.width == 128  # the command line wins over the experiment
    assert "phase_diagram" in names() and groups()["experiment"] == names()
    assert compose_config([]).get("experiment") is None


def test_boundary_is_where_chi_1_is_one():
    from harness.theory.criticality import analyze

    act = activations.get("tanh")
    curve = boundary(act, np.array([0.05, 0.5, 2.0]))
    for r in curve.itertuples():
        c = analyze(act, r.sigma_w2, r.sigma_b2, q_start=r.q_star)
        assert c.q_star == pytest.approx(r.q_star, rel=1e-8)
        assert c.chi_1 == pytest.approx(1.0, rel=1e-8)


def test_gradient_growth_recovers_a_geometric_rate():
    layers = np.arange(1, 11)
    backward = np.exp(-np.log(1.3) * layers)[None, :] * np.array([[1.0], [2.0], [0.5]])
    assert gradient_growth(backward) == pytest.approx(1.3, rel=1e-12)


def test_tiny_phase_diagram_end_to_end(run_cli, tmp_path):
    """Through the CLI, from a directory outside the checkout."""
    sweep = tmp_path / "sweep"
    res = run_cli("experiment=phase_diagram", "scheme.sigma_w2=0.5,3", "scheme.sigma_b2=0,0.2",
                  "depth=8", "width=48", "batch=8", "replicates=2", f"hydra.sweep.dir={sweep}",
                  cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert len(list(sweep.glob("*/metrics.parquet"))) == 4
    res = run_cli(str(sweep), module="harness.phase", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert (sweep / "phase_diagram.png").stat().st_size > 10_000
    points = pd.read_parquet(sweep / "phase_diagram.parquet")
    assert len(points) == 4
    for p in points.itertuples():
        assert (p.chi_1 > 1) == (p.sigma_w2 == 3)  # theory: 0.5 ordered, 3 chaotic
        assert (p.growth > 1) == (p.chi_1 > 1), (p.sigma_w2, p.sigma_b2, p.growth, p.chi_1)


def test_phase_rejects_a_folder_without_runs(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        phase_main([str(tmp_path)])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.count("\n") == 1
    assert err.startswith("error: no metrics.parquet")
