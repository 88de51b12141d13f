"""Shared fixtures: a small composed config and a subprocess runner for the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness.cli import compose_config, precheck
from harness.core.spec import Spec

REPO = Path(__file__).resolve().parent.parent


def small_spec(*overrides: str) -> Spec:
    """A Spec composed exactly as the CLI would, from overrides."""
    return Spec.from_config(compose_config(list(overrides)))


@pytest.fixture
def run_cli(tmp_path):
    """Run `python -m harness.<module> args...` in a fresh working directory."""

    def _run(*args: str, module: str = "harness.run", cwd: Path | None = None):
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "MPLBACKEND": "Agg"}
        return subprocess.run(
            [sys.executable, "-m", module, *args],
            cwd=cwd or tmp_path, env=env, capture_output=True, text=True, timeout=300,
        )

    return _run


def expect_one_line_error(args: list[str], message: str, capsys) -> None:
    """The CLI precheck rejects `args`: exit 2, exactly one stderr line 'error: …' containing
    `message` (the harness's bad-input contract)."""
    with pytest.raises(SystemExit) as exc:
        precheck(args)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    assert message in err
