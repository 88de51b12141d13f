"""Start-up: what a trivial command-line run imports (issue 15's start-up target).

A fresh interpreter imports `harness.run` and makes two trivial runs through `harness.run.main`:
one with plot=false, one with its figure. The heavy libraries a run does not use must stay out of
`sys.modules`: scipy (~0.5 s to import; only a norm's ε correction and a truncated-normal
kurtosis need it), matplotlib (~0.3 s; only a figure), and the launchers' joblib and submitit
(only a --multirun sweep). The run with its figure must load matplotlib, so the check can see
an import when there is one.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

HEAVY = ("matplotlib", "scipy", "joblib", "submitit")
TRIVIAL = ["depth=1", "width=64", "batch=1", "replicates=1", "progress=false"]


def test_a_trivial_run_imports_only_what_it_uses(tmp_path):
    script = textwrap.dedent(f"""
        import json, sys
        import harness.run

        def loaded():
            return sorted({{m.split(".")[0] for m in sys.modules}} & set({HEAVY!r}))

        seen = {{"import harness.run": loaded()}}
        harness.run.main([*{TRIVIAL!r}, "plot=false", "hydra.run.dir={tmp_path / 'quiet'}"])
        seen["plot=false"] = loaded()
        harness.run.main([*{TRIVIAL!r}, "hydra.run.dir={tmp_path / 'figure'}"])
        seen["plot=auto"] = loaded()
        print("SEEN", json.dumps(seen))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    line = next(ln for ln in done.stdout.splitlines() if ln.startswith("SEEN "))
    seen = json.loads(line.removeprefix("SEEN "))
    assert seen["import harness.run"] == [], seen
    assert seen["plot=false"] == [], seen
    assert not (tmp_path / "quiet" / "variance.png").exists()
    assert seen["plot=auto"] == ["matplotlib"], seen  # the figure's import, and nothing else
    assert (tmp_path / "figure" / "variance.png").stat().st_size > 0


def test_primary_keys_are_known_keys():
    """The check of unknown keys skips composing the default config when every key of the run's
    config is one conf/config.yaml sets or one of its default groups; that is safe only if those
    keys are all keys of the composed default config."""
    from harness import cli

    primary, known = cli.primary_keys(), set(cli.known_keys())
    assert primary <= known, primary - known
    assert {"scheme", "act", "norm"} <= primary  # the default groups are read from the defaults list
