"""Shared fixtures: a small composed config and an in-process runner for the command-line entry
points; and how the suite runs in parallel (pytest-xdist, `-n logical` in pyproject's addopts):
torch threads per worker, and tests that share a module-scoped fixture kept on one worker."""

from __future__ import annotations

import contextlib
import gc
import importlib
import io
import logging
import os
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from harness.cli import compose_config, precheck, sweep
from harness.core.spec import Spec
from harness.outputs.plots import plt  # the Agg backend, as MPLBACKEND=Agg gave the subprocesses

REPO = Path(__file__).resolve().parent.parent
#: the most pytest-xdist workers `-n logical` starts (each imports torch and the harness)
MAX_WORKERS = 8


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        return os.cpu_count() or 1


@pytest.hookimpl(optionalhook=True)  # an xdist hook: no error where xdist is not loaded
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """`-n logical`/`-n auto`: one worker per core this process may use, at most MAX_WORKERS."""
    return max(1, min(_cores(), MAX_WORKERS))


def pytest_configure(config: pytest.Config) -> None:
    """In an xdist worker: torch threads = cores // workers (at least 1), here and, through
    OMP_NUM_THREADS unless it is set, in the processes tests start, so that the workers do not
    oversubscribe the cores. (Measured on 2 busy cores: a batched svdvals took 13× the CPU time
    at 2 threads as at 1, its threads spinning while the other worker held the second core.)"""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0") or 0)
    if os.environ.get("PYTEST_XDIST_WORKER") and workers > 0:
        n = max(1, _cores() // workers)
        torch.set_num_threads(n)
        os.environ.setdefault("OMP_NUM_THREADS", str(n))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests that use a module-scoped fixture of this suite (a sweep, an installed copy, the
    README's working directory) go to one xdist worker (`--dist loadgroup`: group = the fixture's
    file), so the fixture is built once; every other test is scheduled on its own."""
    for item in items:
        info = getattr(item, "_fixtureinfo", None)
        if info is None:
            continue
        files = sorted({d[-1].baseid for name in info.names_closure
                        if (d := info.name2fixturedefs.get(name)) and d[-1].scope != "function"
                        and d[-1].baseid.startswith("tests")})
        if files:
            item.add_marker(pytest.mark.xdist_group(files[0]))


def small_spec(*overrides: str) -> Spec:
    """A Spec composed exactly as the CLI would, from overrides."""
    return Spec.from_config(compose_config(list(overrides)))


@dataclass(frozen=True)
class CliResult:
    """What a command-line call left behind: the fields of subprocess.CompletedProcess the tests use."""

    args: list[str]
    returncode: int
    stdout: str
    stderr: str


@contextlib.contextmanager
def restored_process_state():
    """Undo what one in-process CLI call changes in this process: sys.argv, the working directory,
    environment variables, torch's thread count, the root logger's handlers and level (Hydra's job
    logging adds a console handler and a FileHandler on the run's log file), open matplotlib
    figures, and the sweep module's record of the last and current sweep (harness.run.main reads
    `sweep.last_summary` for its exit code, so a failed sweep must not leak into the next call)."""
    argv, cwd, env = sys.argv, os.getcwd(), dict(os.environ)
    threads = torch.get_num_threads()
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    figures = set(plt.get_fignums())
    summary, current = sweep.last_summary, sweep.current
    sweep.last_summary = sweep.current = None
    try:
        yield
    finally:
        sys.argv = argv
        os.chdir(cwd)
        if os.environ != env:
            os.environ.clear()
            os.environ.update(env)
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        for h in root.handlers:
            if h not in handlers:
                h.close()
        root.handlers[:] = handlers
        root.setLevel(level)
        for n in set(plt.get_fignums()) - figures:
            plt.close(n)
        sweep.last_summary, sweep.current = summary, current
        gc.unfreeze()  # run as __main__, harness.run freezes the process's objects (a CLI's)


def run_module(module: str, *args: str, cwd: Path) -> CliResult:
    """`python -m MODULE args...` in `cwd`, in this process: MODULE's `main(argv)` with stdout and
    stderr captured, the exit code taken from SystemExit as the interpreter would (None -> 0, a
    message -> 1 and the message on stderr), an uncaught exception's traceback on stderr with
    exit code 1; the process state it touched is restored afterwards.

    The interpreter's start-up itself is covered by tests that keep a real subprocess (see
    test_sweep.py) and by test_cli.py's check that each `python -m` entry reaches its main.
    """
    main = importlib.import_module(module).main
    out, err = io.StringIO(), io.StringIO()
    with restored_process_state(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        os.chdir(cwd)
        sys.argv = [str(Path(sys.modules[module].__file__)), *args]
        try:
            main(list(args))
            code = 0
        except SystemExit as e:
            if e.code is None or isinstance(e.code, int):
                code = e.code or 0
            else:
                print(e.code, file=sys.stderr)
                code = 1
        except Exception:  # noqa: BLE001 - as the interpreter would: traceback on stderr, exit 1
            traceback.print_exc()
            code = 1
    return CliResult([module, *args], code, out.getvalue(), err.getvalue())


@pytest.fixture
def run_cli(tmp_path):
    """Run `python -m harness.<module> args...` (in-process) in a fresh working directory."""

    def _run(*args: str, module: str = "harness.run", cwd: Path | None = None) -> CliResult:
        return run_module(module, *args, cwd=cwd or tmp_path)

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
