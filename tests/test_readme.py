"""Every `python -m harness…` command in README.md runs, at reduced size.

The commands are read from the README's ```bash blocks: each line (joined over `\\`
continuations, `#` comments dropped) is split at `&&`, and every part that starts with
`python -m harness` is a command, so the quick-start lines (`… && python -m harness.run …`)
count too. Each runs in-process through its module's `main(argv)` in one temporary working
directory, so the README's relative paths (`results/sweeps/demo`) resolve there and a command
that reads a folder (report, papers, phase) finds the one the README's own sweep command wrote
(run first if needed).

Size: every `harness.run` command gets small values for the size keys it names and the ones it
does not (depth 3, width 8, batch 4, replicates 2, image 5; a swept key keeps its number of
values), `plot=false progress=false`; a named experiment's own swept keys keep their first two
values; `harness.bench` gets `--quick --repeat 1 --no-naive` (tests/test_bench.py checks the naive
loop); `harness.probe` gets 32×32 images, batch 2, 2 replicates (`PROBE_SMALL`), and is skipped
where the models extra is not installed. Everything else (keys, values, groups,
experiments, paths, flags) is the README's, so a renamed key, group, flag or module fails here.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import shlex
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from harness.cli.experiments import names as experiment_names

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
EXPERIMENTS = REPO / "harness" / "experiments"

SMALL = {"depth": 3, "width": 8, "batch": 4, "replicates": 2, "image": 5}
QUIET = ["plot=false", "progress=false"]
BENCH_SMALL = ["--quick", "--repeat", "1", "--no-naive"]
#: the modules whose README commands this test runs, each through its main(argv)
MODULES = ("harness.run", "harness.report", "harness.papers", "harness.phase", "harness.gains",
           "harness.bench", "harness.probe")
#: harness.probe's README commands at reduced size (the image presets at 32×32)
PROBE_SMALL = {"input_shape": "[3,32,32]", "batch": "2", "replicates": "2"}
HAS_MODELS = importlib.util.find_spec("torchvision") is not None


def readme_commands(text: str) -> list[list[str]]:
    """The `python -m harness…` commands of the ```bash blocks of `text`, as argv lists."""
    commands = []
    for block in re.findall(r"^```(?:bash|sh)\n(.*?)^```", text, flags=re.S | re.M):
        for line in block.replace("\\\n", " ").splitlines():
            for part in line.split("&&"):
                words = shlex.split(part, comments=True)
                if words[:2] == ["python", "-m"] and len(words) > 2 and words[2].startswith("harness"):
                    commands.append(words[2:])
    return commands


def _values(token: str) -> tuple[str, list[str]]:
    key, _, value = token.partition("=")
    return key, value.split(",")


def reduce_run(args: list[str]) -> list[str]:
    """`harness.run` arguments at reduced size (see the module docstring)."""
    given = {_values(a)[0] for a in args if "=" in a and not a.startswith("-")}
    fixed_depth = "widths" in given  # an explicit widths list fixes depth and width
    small = {k: v for k, v in SMALL.items() if not (fixed_depth and k in ("depth", "width"))}
    out = []
    for a in args:
        key, values = _values(a) if "=" in a and not a.startswith("-") else (None, [])
        if key in small:
            a = f"{key}=" + ",".join(str(small[key] + i) for i in range(len(values)))
        elif key == "jacobian":  # at most one Jacobian per input of the smaller batch
            a = f"jacobian={min(int(values[0]), SMALL['batch'])}"
        elif key == "experiment":
            out += _experiment_grid(values[0], given)
        out.append(a)
    out += [f"{k}={v}" for k, v in small.items() if k not in given]
    return out + [q for q in QUIET if q.split("=")[0] not in given]


def _experiment_grid(name: str, given: set[str]) -> list[str]:
    """A named experiment's own swept keys, cut to their first two values (the command line
    wins over the experiment's sweeper params); keys the command or SMALL sets are left alone."""
    path = EXPERIMENTS / f"{name}.yaml"
    if name not in experiment_names() or not path.exists():
        return []  # an unknown experiment: harness.run itself must reject it
    params = OmegaConf.select(OmegaConf.load(path), "hydra.sweeper.params") or {}
    return [f"{k}=" + ",".join(str(v).split(",")[:2]) for k, v in params.items()
            if k not in given and k not in SMALL]


def reduced(argv: list[str]) -> tuple[str, list[str]]:
    module, args = argv[0], argv[1:]
    if module == "harness.run":
        return module, reduce_run(args)
    if module == "harness.bench":
        return module, args + [a for a in BENCH_SMALL if a not in args]
    if module == "harness.probe":
        given = {a.split("=", 1)[0] for a in args if "=" in a}
        return module, (args + [f"{k}={v}" for k, v in PROBE_SMALL.items() if k not in given]
                        + [q for q in QUIET if q.split("=")[0] not in given])
    return module, args


def sweep_dir(argv: list[str]) -> str | None:
    return next((a.split("=", 1)[1] for a in argv if a.startswith("hydra.sweep.dir=")), None)


COMMANDS = readme_commands(README.read_text(encoding="utf-8"))
#: folder → the README command that writes it (a sweep into hydra.sweep.dir=…)
PRODUCERS = {d: c for c in COMMANDS if (d := sweep_dir(c))}


def call_main(module: str, args: list[str], monkeypatch) -> int:
    """Run `python -m module args…` in-process; its exit code (0 when main returns)."""
    monkeypatch.setattr(sys, "argv", [module, *args])
    main = importlib.import_module(module).main  # the module, even where harness.run is also a function
    try:
        main(args)
    except SystemExit as e:
        return 0 if e.code is None else int(e.code) if isinstance(e.code, int) else 1
    return 0


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("readme")


def run_readme_command(argv: list[str], workdir: Path, monkeypatch, capsys, done: set[str]) -> None:
    monkeypatch.chdir(workdir)
    module, args = reduced(argv)
    for a in args:  # a folder the command reads: the README's own command writes it first
        if a in PRODUCERS and not (workdir / a).exists() and a not in done:
            done.add(a)
            run_readme_command(PRODUCERS[a], workdir, monkeypatch, capsys, done)
    code = call_main(module, args, monkeypatch)
    out = capsys.readouterr()
    assert code == 0, (f"README command failed (exit {code}): python -m {' '.join(argv)}\n"
                       f"ran as: python -m {module} {' '.join(args)}\n{out.err[-3000:]}")


@pytest.mark.parametrize("argv", COMMANDS, ids=[" ".join(c)[:80] for c in COMMANDS])
def test_readme_command_runs(argv, workdir, monkeypatch, capsys):
    if argv[0] == "harness.probe" and not HAS_MODELS:
        pytest.skip("harness.probe's presets need the models extra: pip install -e '.[models]'")
    run_readme_command(argv, workdir, monkeypatch, capsys, set())


def test_readme_commands_are_found():
    """The parser sees the quick start's main job and at least one command of every module, so
    this file cannot pass by finding nothing."""
    quick = re.search(r"## Quick start\n(.*?)\n## ", README.read_text(encoding="utf-8"), flags=re.S)
    assert quick, "README has no '## Quick start' section"
    assert any(c[0] == "harness.run" for c in readme_commands(quick.group(1))), \
        "the quick start's main-job command was not found"
    assert {c[0] for c in COMMANDS} == set(MODULES)


def test_a_broken_command_fails(workdir, monkeypatch, capsys):
    """The check can fail: a renamed key makes harness.run exit non-zero."""
    monkeypatch.chdir(workdir)
    module, args = reduced(["harness.run", "activation=tanh"])
    assert call_main(module, args, monkeypatch) != 0
    assert "error:" in capsys.readouterr().err


DOCS = [README, REPO / "results" / "README.md", EXPERIMENTS / "README.md",
        *sorted((REPO / "docs").glob("*.md"))]


def _anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation but '-' and '_' dropped, spaces to '-'."""
    heads = re.findall(r"^#+\s+(.*?)\s*$", page.read_text(encoding="utf-8"), flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in heads}


@pytest.mark.parametrize("page", DOCS, ids=[str(p.relative_to(REPO)) for p in DOCS])
def test_doc_links_resolve(page):
    """Every relative link of the README and docs/ points at a file of the repository (and, for
    a Markdown page, at one of its headings); only papers and upstream docs may be external."""
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
    broken = []
    for link in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+://", link):
            continue
        path, _, anchor = link.partition("#")
        target = (page.parent / path).resolve() if path else page.resolve()
        inside = target.is_relative_to(REPO)
        if not inside or not target.exists() or (
                anchor and target.suffix == ".md" and anchor not in _anchors(target)):
            broken.append(link)
    assert not broken, f"{page.relative_to(REPO)}: broken links {broken}"


def test_nothing_points_outside_the_repository():
    """No file of the repository cites a document that a clone does not have."""
    outside = re.compile(r"\.\./shared|THEORY\.md")
    hits = [str(p.relative_to(REPO)) for p in REPO.rglob("*")
            if p.suffix in {".py", ".md", ".yaml", ".toml", ".txt", ".cfg"} and p.is_file()
            and not any(part.startswith(".") or part.endswith(".egg-info") or part == "results"
                        for part in p.relative_to(REPO).parts)
            and outside.search(p.read_text(encoding="utf-8", errors="replace"))
            and p != Path(__file__).resolve()]
    assert not hits, f"files citing a folder outside the repository (shared/) or THEORY.md: {hits}"
