"""The layers of docs/architecture.md, read from the source: no import cycle, no import a layer may
not make, no module over 400 lines, no public function that hides its own module.

The import graph comes from ``ast`` (nothing is imported): every ``import`` and ``from ... import``
of every module of ``toymodel/``, ``kernels/`` (installed as ``toymodel.kernels``) and
``figures/`` (``toymodel.figures``), at module level or inside functions, relative imports
resolved, plus ``importlib.import_module("literal")``. ``from pkg import name`` counts as an
import of ``pkg.name`` when that is a module, else of ``pkg``.
"""
from __future__ import annotations

import ast
import fnmatch
import importlib
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAX_LINES = 400

# -- the layers (docs/architecture.md): patterns of module names, first match wins --------------------
LAYERS = {
    "cli": ["toymodel.cli", "toymodel._cli_*", "toymodel.__main__"],
    "figures": ["toymodel.figures", "toymodel.figures.*"],
    "bridge": ["toymodel.bridge", "toymodel.bridge.*"],
    "api": ["toymodel"],
    # runs batches of trajectories through the backend
    "batch": ["toymodel.scan", "toymodel._scan_*", "toymodel.census", "toymodel.thresholds"],
    # storage: generic, it never imports the scan (it is handed the plan)
    "store": ["toymodel._store", "toymodel._store_*"],
    # the cluster executor: generic, it is handed the work function (the toy scan's
    # compute_chunk, the network scan's run_task), so both engines share it; its own layer lets
    # the bridge use it without reaching the zarr store
    "executor": ["toymodel.distributed"],
    "backend": ["toymodel.backend"],
    "kernels": ["toymodel.kernels", "toymodel.kernels.*"],
    # the math and its utilities; a new module of toymodel/ not listed above lands here
    "math": ["toymodel.*"],
}
#: what each layer may import (itself included); nothing imports the CLI, and the kernels are
#: reached only through the backend.
MAY_IMPORT = {
    "kernels": {"kernels"},
    "math": {"math"},
    "backend": {"backend", "math", "kernels"},
    "store": {"store", "math"},
    "executor": {"executor", "math"},
    "batch": {"batch", "store", "executor", "backend", "math"},
    "api": {"api", "batch", "math"},
    "bridge": {"bridge", "executor", "math"},
    "figures": {"figures", "api", "batch", "store", "executor", "backend", "math", "bridge"},
    "cli": {"cli", "figures", "api", "bridge", "batch", "store", "executor", "backend", "math"},
}
#: known violations in modules other work is changing right now, each to be removed with its fix;
#: an entry that no longer occurs fails `test_known_violations_still_occur` (remove it then).
KNOWN_VIOLATIONS: set = set()
#: modules over MAX_LINES in other work, with the length they may not exceed until split
KNOWN_LONG: dict = {}


def _package_dirs() -> dict:
    """``{package: folder}`` from pyproject's ``[tool.setuptools.package-dir]``."""
    conf = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return {pkg: ROOT / folder for pkg, folder in conf["tool"]["setuptools"]["package-dir"].items()}


def _modules() -> dict:
    """``{module name: (path, is_package)}`` for every ``.py`` file of the installed packages."""
    dirs = _package_dirs()
    out = {}
    for pkg, folder in dirs.items():
        for path in sorted(folder.rglob("*.py")):
            if "__pycache__" in path.parts:
                continue
            parts = list(path.relative_to(folder).with_suffix("").parts)
            is_pkg = parts[-1] == "__init__"
            if is_pkg:
                parts = parts[:-1]
            out[".".join([pkg, *parts])] = (path, is_pkg)
    return out


MODULES = _modules()


def _targets(name: str, is_pkg: bool, node) -> list:
    """The known modules one import node names."""
    if isinstance(node, ast.Import):
        return [_known(a.name) for a in node.names]
    if node.level:
        base = name if is_pkg else name.rpartition(".")[0]
        for _ in range(node.level - 1):
            base = base.rpartition(".")[0]
        mod = f"{base}.{node.module}" if node.module else base
    else:
        mod = node.module
    return [f"{mod}.{a.name}" if f"{mod}.{a.name}" in MODULES else _known(mod) for a in node.names]


def _known(mod: str):
    """``mod`` or its nearest enclosing known module (``None`` outside the project)."""
    while mod and mod not in MODULES:
        mod = mod.rpartition(".")[0]
    return mod or None


def _graph() -> dict:
    graph = {}
    for name, (path, is_pkg) in MODULES.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                deps.update(t for t in _targets(name, is_pkg, node) if t)
            elif (isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "import_module"
                  and node.args and isinstance(node.args[0], ast.Constant)
                  and isinstance(node.args[0].value, str)):
                deps.add(_known(node.args[0].value))
        deps.discard(None)
        deps.discard(name)
        graph[name] = deps
    return graph


GRAPH = _graph()


def layer(module: str) -> str:
    for name, patterns in LAYERS.items():
        if any(fnmatch.fnmatchcase(module, p) for p in patterns):
            return name
    raise AssertionError(f"{module} is in no layer of LAYERS")


def _forbidden() -> set:
    return {(m, d) for m, deps in GRAPH.items() for d in deps
            if layer(d) not in MAY_IMPORT[layer(m)]}


def test_the_graph_sees_the_project():
    assert {"toymodel", "toymodel.scan", "toymodel.kernels.numba_cpu", "toymodel.figures._common",
            "toymodel.bridge.training"} <= set(MODULES)
    # relative, absolute, in-function and importlib imports are all edges
    assert "toymodel._scan_chunk" in GRAPH["toymodel._scan_plan"]       # from ._scan_chunk import
    assert "toymodel.kernels.numba_cpu" in GRAPH["toymodel.backend"]    # inside a function
    assert "toymodel.figures" in GRAPH["toymodel._cli_figures"]         # importlib.import_module
    assert "toymodel.bridge._operators" in GRAPH["toymodel.bridge.gradstats"]


def test_no_import_cycle():
    state, cycles = {}, []

    def visit(m, stack):
        state[m] = "open"
        stack.append(m)
        for d in sorted(GRAPH[m]):
            if state.get(d) == "open":
                cycles.append(stack[stack.index(d):] + [d])
            elif d not in state:
                visit(d, stack)
        stack.pop()
        state[m] = "done"

    for m in sorted(GRAPH):
        if m not in state:
            visit(m, [])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_every_import_respects_the_layers():
    bad = sorted(_forbidden() - KNOWN_VIOLATIONS)
    lines = [f"{m} ({layer(m)}) imports {d} ({layer(d)}); {layer(m)} may import "
             f"{sorted(MAY_IMPORT[layer(m)])}" for m, d in bad]
    assert not bad, "forbidden imports (docs/architecture.md):\n" + "\n".join(lines)


def test_known_violations_still_occur():
    stale = sorted(KNOWN_VIOLATIONS - _forbidden())
    assert not stale, f"fixed: remove {stale} from KNOWN_VIOLATIONS"


def test_executors_never_import_the_scan():
    for m in ("toymodel.distributed", "toymodel._store", "toymodel._store_files",
              "toymodel._store_markers"):
        assert not {d for d in GRAPH[m] if layer(d) in ("batch", "bridge")}, m


@pytest.mark.parametrize("folder", ["toymodel", "kernels", "figures"])
def test_no_module_over_400_lines(folder):
    long = {}
    for path in sorted((ROOT / folder).rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        n = len(path.read_text().splitlines())
        rel = path.relative_to(ROOT).as_posix()
        if n > KNOWN_LONG.get(rel, MAX_LINES):
            long[rel] = n
    assert not long, f"modules over {MAX_LINES} lines (split them by concern): {long}"


def test_known_long_modules_are_still_long():
    short = [rel for rel in KNOWN_LONG
             if not (ROOT / rel).exists() or len((ROOT / rel).read_text().splitlines()) <= MAX_LINES]
    assert not short, f"now within {MAX_LINES} lines: remove {short} from KNOWN_LONG"


@pytest.mark.parametrize("package", ["toymodel", "toymodel.bridge"])
def test_no_public_function_hides_its_own_module(package):
    """``toymodel.scan`` is a function: it is defined elsewhere (``toymodel._scan_run``), and the
    module it hides defines nothing, so every implementation module is reachable by its dotted
    name (``monkeypatch.setattr("toymodel._scan_run.compute_chunk", ...)``)."""
    if package == "toymodel.bridge":
        pytest.importorskip("torch")
    pkg = importlib.import_module(package)
    for attr in getattr(pkg, "__all__", []):
        sub = f"{package}.{attr}"
        if sub not in MODULES:
            continue
        obj = getattr(pkg, attr)
        if getattr(obj, "__name__", None) == sub:  # the module itself
            continue
        assert getattr(obj, "__module__", None) != sub, f"{sub}: the function hides its own module"
        tree = ast.parse(MODULES[sub][0].read_text())
        defined = [n.name for n in tree.body
                   if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]
        assert not defined, f"{sub} is hidden by {package}.{attr} but defines {defined}"
