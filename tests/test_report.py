"""`python -m harness.report`: a self-contained HTML report of a small sweep, its tables and
figures, bad input; and (marker `browser`) the report rendered in headless Chromium."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from harness import report
from harness.cli import compose_config, sweep
from harness.report import compare
from harness.report import figures as report_plots
from harness.run import execute
from tests.conftest import CliResult, run_module

REPO = Path(__file__).resolve().parent.parent
SMALL = ["width=8", "batch=4", "replicates=3", "plot=false", "progress=false"]
GRID = [(d, a) for d in (2, 3) for a in ("relu", "tanh")]


def quiet_execute(cfg, out, command=None):
    return execute(cfg, out, command=command, echo=False)


@pytest.fixture(scope="module")
def small_sweep(tmp_path_factory) -> Path:
    """depth=2,3 × act=relu,tanh (× width=8,16 for depth 2 relu only), and depth=0 failing."""
    root = tmp_path_factory.mktemp("sweep")
    points = [[f"depth={d}", f"act={a}"] for d, a in GRID] + [["depth=0", "act=relu"]]
    for overrides in points:
        name = ",".join(sorted(overrides))
        sweep.run_job(compose_config([*overrides, *SMALL]), root / name, execute=quiet_execute,
                      overrides=overrides, command=" ".join(["python -m harness.run", *overrides, *SMALL]))
    return root


@pytest.fixture(scope="module")
def built(small_sweep) -> tuple[Path, CliResult]:
    """`python -m harness.report SWEEP`, run in this process (tests/conftest.py)."""
    res = run_module("harness.report", str(small_sweep), cwd=small_sweep)
    return small_sweep / "report" / "report.html", res


def test_report_is_self_contained_html_with_every_part(built, small_sweep):
    page, res = built
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == f"report: {page} (4 runs, 6 figures, 1 failed jobs listed)"
    text = page.read_text()
    pngs = sorted(p.name for p in page.parent.glob("fig-*.png"))
    assert len(pngs) == 6 and text.count("data:image/png;base64,") == 6
    assert all(name in text for name in pngs)
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", text)  # opens offline
    assert "<script" not in text and "<link" not in text
    # swept keys, the summary with the failed job's error, one reproduce command per run
    assert "act = relu, tanh; depth = 2, 3" in text
    assert "depth must be an integer ≥ 1; got 0" in text
    assert "4 done" in text and "1 failed" in text
    for d, a in GRID:
        assert f"python -m harness.run depth={d} act={a} width=8" in text
    # the heatmaps use the two swept keys
    assert "fig-heatmap-forward-mean-1.png" in pngs and "fig-heatmap-backward-log10-ratio-1.png" in pngs


def test_agreement_table_in_the_report_puts_disagreements_first(built):
    page, _ = built
    rows = re.findall(r"<tr( class='(?:bad|na)')?><td>(?:relu|tanh)</td>", page.read_text())
    flags = [bool(r) for r in rows]
    assert len(flags) == 4 and flags == sorted(flags, reverse=True)


def synthetic(theories: dict[str, float], R: int = 2, layers: int = 3) -> pd.DataFrame:
    """Runs whose replicates are theory·(1 ± 0.1) around mean 1: theory ≠ 1 disagrees."""
    rows = []
    for run, theory in theories.items():
        for q in ("forward", "backward"):
            for layer in range(1, layers + 1):
                for r in range(R):
                    rows.append({"run_dir": run, "act": run, "depth": layers, "layer": layer,
                                 "replicate": r, "quantity": q,
                                 "value": 1.0 + (0.1 if r % 2 else -0.1), "theory": theory})
    return pd.DataFrame(rows)


def test_agreement_flags_theory_outside_k_standard_errors():
    df = synthetic({"good": 1.0, "bad": 2.0, "close": 1.25})
    table = compare.agreement(df, k=3.0)  # s.e. = 0.1: 1.25 is within 3 s.e., 2.0 is not
    assert table["act"].tolist() == ["bad", "close", "good"]
    assert table["agree"].tolist() == ["no", "yes", "yes"]
    assert table.loc[0, "forward worst |log10 r|"] == f"{np.log10(2):.3f} (layer 1)"
    assert table.loc[0, "within 3 s.e."] == "0/6" and table.loc[2, "within 3 s.e."] == "6/6"
    assert table["in replicate range"].tolist() == ["0/6", "0/6", "6/6"]  # range 0.9..1.1
    assert compare.agreement(df, k=2.0)["agree"].tolist() == ["no", "no", "yes"]


def test_default_agreement_uses_bonferroni_over_the_runs_points():
    from scipy.stats import norm

    for m, alpha in ((6, 0.01), (199, 0.01), (40, 1e-3)):
        assert compare.bonferroni_k(m, alpha) == pytest.approx(norm.isf(alpha / (2 * m)), rel=1e-9)
    # 6 points, α = 0.01: k = Φ⁻¹(1 − 0.01/12) ≈ 3.14; s.e. = 0.1, so theory 1.33 (3.3 s.e. off)
    # fails and 1.30 (3.0 s.e.) passes
    df = synthetic({"off": 1.0 / 0.75, "edge": 1.30, "good": 1.0})
    table = compare.agreement(df).set_index("act")
    assert table.loc["off", "agree"] == "no" and table.loc["edge", "agree"] == "yes"
    assert table.loc["good", "k (s.e.)"] == pytest.approx(compare.bonferroni_k(6), abs=0.01)


def test_overflow_is_a_disagreement():
    df = synthetic({"inf": 1.0, "ok": 1.0})
    df.loc[(df["run_dir"] == "inf") & (df["layer"] == 3), "value"] = np.inf
    table = compare.agreement(df)
    assert table["act"].tolist() == ["inf", "ok"] and table.loc[0, "agree"] == "no (overflow)"


def test_swept_keys_leave_out_derived_columns(small_sweep):
    from harness import load

    df = load(small_sweep)
    assert compare.swept_keys(df) == ["act", "depth"]  # not widths, not gain
    assert compare.fixed_config(df)["width"] == 8
    two = df[df["act"] == "relu"]
    assert compare.swept_keys(two) == ["depth"]


def test_layouts_choose_lines_facets_and_heatmap_axes():
    assert report.variance_layout(["act", "scheme", "mode", "depth", "width"]) == (
        "depth", "act", "scheme", ["mode", "width"])
    assert report.variance_layout([]) == (None, None, None, [])
    assert report.heatmap_layout(["act", "scheme", "depth", "width"]) == (
        "depth", "width", "act", "scheme", [])
    assert report.heatmap_layout(["act", "seed"]) == ("act", "seed", None, None, [])
    assert report.heatmap_layout(["depth"]) is None


def test_heatmap_grid_has_one_panel_per_facet_and_marks_missing_cells():
    values = pd.DataFrame({"depth": [2, 3, 2], "width": [8, 8, 16], "act": ["relu", "relu", "tanh"],
                           "v": [1.0, np.inf, 0.1]})
    fig = report_plots.heatmap_grid(values, "v", x="depth", y="width", cols="act", log10=True)
    panels = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    assert len(panels) == 2
    texts = sorted(t.get_text() for t in panels[0].texts)
    assert texts == ["1", "inf", "–", "–"]  # relu: two results, two missing cells


def test_bad_path_is_one_line_exit_2(tmp_path, capsys):
    for args in ([str(tmp_path / "nope")], [str(tmp_path)], [str(tmp_path), "--k", "0"]):
        with pytest.raises(SystemExit) as exc:
            report.main(args)
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("error: "), err
    assert not (tmp_path / "report").exists()


@pytest.mark.browser
@pytest.mark.skipif(shutil.which("chromium") is None, reason="no chromium (apt-get install chromium)")
def test_report_renders_in_headless_chromium(built, tmp_path):
    page, _ = built
    shot = tmp_path / "shot.png"
    # a subprocess: the script drives a headless Chromium of its own
    res = subprocess.run([sys.executable, str(REPO / "scripts" / "screenshot_report.py"), str(page),
                          str(shot), "--height", "1600"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert shot.is_file() and "of pixels off the background" in res.stdout
