"""Static checks over every module of the package, from its source (ast, nothing imported):

- no import cycles inside `harness` (imports inside functions count: hiding a cycle in a function
  is still a cycle). Imports under `if TYPE_CHECKING:` are not counted: the interpreter never runs
  them, so they cannot form an import-order cycle (the architecture entries name `Spec` in their
  type hints that way, while `Spec` asks the architecture registry at run time);
- every third-party module the package imports, anywhere, is a declared runtime dependency in
  pyproject.toml's [project] dependencies ("every runtime import is a runtime dependency"): a
  plain `pip install .` must be enough for every entry point. An import guarded by
  `try: ... except ImportError` may instead come from an optional extra.
"""

from __future__ import annotations

import ast
import re
import sys
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "harness"


def module_name(path: Path) -> str:
    """harness/cli/__init__.py -> harness.cli; harness/cli/sweep.py -> harness.cli.sweep."""
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports(path: Path, name: str | None = None) -> Iterator[tuple[str, list[str], ast.AST]]:
    """(module, names, node) for every import statement in the file (module `name`, default
    from its path), at any depth, with relative imports made absolute; names are the `from` list
    ([] for `import x`)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    name = module_name(path) if name is None else name
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    type_only = {id(n) for block in ast.walk(tree) if _is_type_checking(block)
                 for stmt in block.body for n in ast.walk(stmt)}
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, [], node
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            yield base, [a.name for a in node.names], node


def _is_type_checking(node: ast.AST) -> bool:
    """`if TYPE_CHECKING:` or `if typing.TYPE_CHECKING:`."""
    if not isinstance(node, ast.If):
        return False
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def internal_targets(module: str, names: list[str]) -> set[str]:
    """The harness modules an import names: `from harness.outputs import plots` -> the module
    harness.outputs.plots; `from harness.cli import ArgumentParser` -> harness.cli. Importing a
    submodule also runs its parent packages' __init__; that implicit step is how packages work
    and is not counted (else every package would be in a cycle with its own modules)."""
    if module != "harness" and not module.startswith("harness."):
        return set()
    if not names:
        name = module
        while name not in MODULES and "." in name:
            name = name.rpartition(".")[0]
        return {name}
    return {f"{module}.{n}" if f"{module}.{n}" in MODULES else module for n in names}


def import_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for m, path in MODULES.items():
        for module, names, _ in imports(path):
            graph[m] |= internal_targets(module, names) - {m}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each as one
    closed path through it (a -> b -> ... -> a), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(_path(graph, set(comp)))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(out)


def _path(graph: dict[str, set[str]], comp: set[str]) -> list[str]:
    """A closed path from the component's first module back to it (breadth-first)."""
    start = min(comp)
    prev: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & comp):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(prev[path[-1]])
                    return [start, *reversed(path[:-1]), start] if len(path) > 1 else [start, v, start]
                if w not in prev:
                    prev[w] = v
                    nxt.append(w)
        frontier = nxt
    return sorted(comp)


def test_cycle_finder_finds_a_planted_cycle():
    """The checker itself can fail: a -> b -> c -> a is reported, d (outside it) is not."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set()}
    assert cycles(graph) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_function_level_and_relative_imports_are_seen(tmp_path):
    src = tmp_path / "m.py"
    src.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import harness.report\n"
                   "def f():\n    from harness.outputs import plots\n    import harness.sim.runner\n"
                   "    from . import lsuv\n    from ..core.spec import Spec\n")
    found = {t for module, names, _ in imports(src, "harness.sim.m")
             for t in internal_targets(module, names)}
    assert found == {"harness.outputs.plots", "harness.sim.runner", "harness.sim.lsuv",
                     "harness.core.spec"}


def test_no_import_cycles():
    found = cycles(import_graph())
    assert not found, "import cycles in harness/:\n" + "\n".join(" -> ".join(c) for c in found)


# ---- runtime dependencies ---------------------------------------------------------------------
def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_names(requirements: list[str]) -> set[str]:
    return {_normalize(re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", r.strip()).group()) for r in requirements}


def _pyproject() -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def _guarded(tree_parents: dict[ast.AST, ast.AST], node: ast.AST) -> bool:
    """Whether `node` sits in a `try:` body with an `except ImportError/ModuleNotFoundError`."""
    child, parent = node, tree_parents.get(node)
    while parent is not None:
        if isinstance(parent, ast.Try) and child in parent.body:
            for h in parent.handlers:
                caught = h.type.elts if isinstance(h.type, ast.Tuple) else [h.type]
                if any(isinstance(c, ast.Name) and c.id in ("ImportError", "ModuleNotFoundError")
                       for c in caught):
                    return True
        child, parent = parent, tree_parents.get(parent)
    return False


def third_party_imports() -> dict[str, tuple[bool, list[str]]]:
    """Top-level third-party module -> (every use guarded by except ImportError, where used)."""
    out: dict[str, tuple[bool, list[str]]] = {}
    for m, path in MODULES.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        parents = {c: p for p in ast.walk(tree) for c in ast.iter_child_nodes(p)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                tops = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                tops = [node.module.split(".")[0]]
            else:
                continue
            for top in tops:
                if top == "harness" or top in sys.stdlib_module_names or top == "__future__":
                    continue
                guarded, where = out.get(top, (True, []))
                out[top] = (guarded and _guarded(parents, node), [*where, f"{m}:{node.lineno}"])
    return out


def undeclared(found: dict[str, tuple[bool, list[str]]], runtime: set[str], extras: set[str]) -> list[str]:
    """One line per imported top-level module whose distribution is not declared: in the runtime
    dependencies, or (for an import guarded by except ImportError) in an optional extra."""
    dists = metadata.packages_distributions()
    problems = []
    for top, (guarded, where) in sorted(found.items()):
        names = {_normalize(d) for d in dists.get(top, [])}
        if not names:
            problems.append(f"{top} (imported at {where[0]}): no installed distribution provides it")
        elif not names & runtime and not (guarded and names & extras):
            need = "an optional extra or [project] dependencies" if guarded else "[project] dependencies"
            problems.append(f"{top} (imported at {', '.join(where[:3])}): {sorted(names)} not in {need}")
    return problems


def _declared() -> tuple[set[str], set[str]]:
    project = _pyproject()["project"]
    runtime = _requirement_names(project["dependencies"])
    extras = set().union(*(_requirement_names(r) for r in project.get("optional-dependencies", {}).values()))
    return runtime, extras


def test_every_runtime_import_is_a_declared_dependency():
    runtime, extras = _declared()
    problems = undeclared(third_party_imports(), runtime, extras)
    assert not problems, "undeclared runtime imports:\n" + "\n".join(problems)


def test_dependency_check_can_fail():
    """With a used distribution taken out of the declared ones, the check reports it; a guarded
    import is accepted from an extra, an unguarded one is not."""
    runtime, extras = _declared()
    found = third_party_imports()
    assert "torch" in found
    problems = undeclared({"torch": found["torch"]}, runtime - {"torch"}, extras)
    assert len(problems) == 1 and problems[0].startswith("torch ")
    assert undeclared({"torch": (True, ["x:1"])}, runtime - {"torch"}, {"torch"}) == []
    assert len(undeclared({"torch": (False, ["x:1"])}, runtime - {"torch"}, {"torch"})) == 1
