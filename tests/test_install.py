"""A real (non-editable) install works from anywhere: the configs and experiments ship inside the
package, and every entry point runs with only the declared dependencies' modules.

The project is copied (pyproject.toml, README.md, harness/) and installed with `pip install
--no-deps --no-build-isolation --target SITE` (the dependencies come from the running venv), then
each entry point runs as a subprocess from an unrelated working directory with PYTHONPATH=SITE;
the process is what is under test here.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from harness.outputs.results import METADATA, METRICS

REPO = Path(__file__).resolve().parent.parent
#: the smallest run that still has a backward pass and a spread over replicates
TINY = ["depth=2", "width=4", "replicates=3", "progress=false"]


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The project, built and installed into a fresh target directory (no repository on the path)."""
    root = tmp_path_factory.mktemp("install")
    src = root / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    shutil.copytree(REPO / "harness", src / "harness",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    target = root / "site"
    res = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--no-input", "--disable-pip-version-check", "--target", str(target), str(src)],
        capture_output=True, text=True, timeout=300, cwd=root)
    assert res.returncode == 0, res.stdout + res.stderr
    return target


def _run(site: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(site), "MPLBACKEND": "Agg", "PYTHONUNBUFFERED": "1"}
    res = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, f"{' '.join(args)}:\n{res.stdout}\n{res.stderr}"
    return res


def test_installed_package_runs_every_entry_point(site, tmp_path):
    work = tmp_path / "elsewhere"
    work.mkdir()
    run_dir = work / "run"
    _run(site, work, "-m", "harness.run", *TINY, "plot=false", f"hydra.run.dir={run_dir}")
    assert (run_dir / METRICS).is_file() and (run_dir / METADATA).is_file()
    assert not (run_dir / "variance.png").exists()
    # `python -m` puts the module's file in sys.argv[0], which metadata.json records: the run
    # came from the installed copy (its conf/ beside it), not from the repository
    ran = Path(json.loads((run_dir / METADATA).read_text())["command"][1]).resolve()
    assert ran == site.resolve() / "harness" / "run.py", ran

    # a named experiment (a --multirun sweep, shrunk to one tiny job by the command line)
    sweep_dir = work / "sweep"
    _run(site, work, "-m", "harness.run", "experiment=hanin2019", *TINY, f"hydra.sweep.dir={sweep_dir}")
    jobs = list(sweep_dir.glob(f"*/{METRICS}"))
    assert len(jobs) == 1
    spec = json.loads((jobs[0].parent / METADATA).read_text())["spec"]
    assert (spec["act"], spec["batch"], spec["depth"]) == ("relu", 1, 2)  # the experiment's, then ours

    _run(site, work, "-m", "harness.papers", "hanin2019", str(sweep_dir))  # scipy, at run time
    numbers = json.loads((sweep_dir / "hanin2019.json").read_text())
    assert len(numbers) == 1 and (sweep_dir / "hanin2019.png").is_file()

    _run(site, work, "-m", "harness.report", str(sweep_dir))
    assert (sweep_dir / "report" / "report.html").is_file()
    assert sorted(p.name for p in work.iterdir()) == ["run", "sweep"]  # nothing else written here


def test_installed_package_runs_the_probe(site, tmp_path):
    """harness.probe's configs (harness/probe/conf) ship in the package and its search path finds
    the harness's schemes (harness/conf): a tiny nn.Linear probed under kaiming from elsewhere."""
    work = tmp_path / "elsewhere"
    work.mkdir()
    _run(site, work, "-m", "harness.probe", "model._target_=torch.nn.Linear", "+model.in_features=4",
         "+model.out_features=2", "input_shape=[4]", "batch=2", "replicates=2", "scheme=kaiming",
         "progress=false", "plot=false", f"hydra.run.dir={work / 'probe'}")
    meta = json.loads((work / "probe" / METADATA).read_text())
    assert meta["spec"]["scheme"] == "kaiming" and meta["probe"]["path"] == "vmap"
    assert sorted(p.name for p in work.iterdir()) == ["probe"]
