"""The import rules of DESIGN.md, read from the source (like an import-linter contract).

Every ``import`` / ``from ... import`` of every module under ``src/hydranet`` is read with ``ast``,
module level and inside functions alike; only the imports under ``if TYPE_CHECKING:`` are left out
(they never run: they exist for annotations, and a callback module may name the Trainer it is called
by without importing it). Relative imports do not occur in the package (a test below checks it).
Imports inside functions count for cycles too; :data:`DEFERRED_CYCLES` lists the exceptions, each with
its reason.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "hydranet"

# Everyone may import these; they import nothing of hydranet.
BOTTOM = {"hydranet.tasks", "hydranet._checks", "hydranet.runtime", "hydranet._version"}

# Cycles allowed through an import inside a function (never at module level), each with its reason.
DEFERRED_CYCLES: set[tuple[str, str]] = set()


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST, names: set[str]) -> tuple[set[str], set[str]]:
    """The hydranet modules ``tree`` imports (``from hydranet.x import y`` counts as ``hydranet.x.y``
    when that is a module, else as ``hydranet.x``), skipping ``if TYPE_CHECKING:`` blocks; and those of
    them imported only inside functions."""
    top: set[str] = set()
    inner: set[str] = set()

    def visit(node: ast.AST, deferred: bool) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child, deferred)
            return
        found = inner if deferred else top
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.split(".")[0] == "hydranet")
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "hydranet":
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                found.add(full if full in names else node.module)
        deferred = deferred or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        for child in ast.iter_child_nodes(node):
            visit(child, deferred)

    visit(tree, False)
    return top | inner, inner - top


def _graph() -> dict[str, set[str]]:
    paths = sorted(PACKAGE.rglob("*.py"))
    names = {_module_name(p) for p in paths}
    graph, deferred = {}, {}
    for path in paths:
        name = _module_name(path)
        # An edge is what the file names (importing hydranet.x.y also runs the package hydranet.x, but
        # that is Python's doing, not an arrow of this file).
        every, inner = _imports(ast.parse(path.read_text()), names)
        graph[name] = every - {name}
        deferred[name] = inner - {name}
    return graph, deferred


GRAPH, DEFERRED = _graph()


def _layer(module: str) -> str:
    """``hydranet.data.readers.folders`` -> ``data``; ``hydranet.tasks`` -> ``tasks``; the package -> ``""``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _violations(sources: set[str], allowed: set[str]) -> list[str]:
    """``module -> import`` pairs of modules in layers ``sources`` that import a layer outside ``allowed``."""
    bad = []
    for module, imported in GRAPH.items():
        if _layer(module) not in sources:
            continue
        for target in imported:
            if target in BOTTOM or _layer(target) == _layer(module) or _layer(target) in allowed:
                continue
            bad.append(f"{module} -> {target}")
    return sorted(bad)


def test_the_graph_is_read():
    # the rules below are only as good as the reading: known arrows must be found
    assert "hydranet.train.step" in GRAPH["hydranet.train.trainer"]
    assert "hydranet.tasks" in GRAPH["hydranet.losses"]
    assert "hydranet.cli.commands" in GRAPH["hydranet.cli.main"]  # imported inside a function
    assert "hydranet.train.trainer" not in GRAPH["hydranet.train.callbacks"]  # TYPE_CHECKING only


def test_the_bottom_layer_imports_nothing_of_hydranet():
    for module in BOTTOM:
        assert GRAPH[module] <= {"hydranet._checks", "hydranet._version"} - {module}, (module, GRAPH[module])


def test_nothing_imports_cli():
    assert [f"{m} -> {t}" for m, ts in GRAPH.items() if _layer(m) != "cli" for t in ts if _layer(t) == "cli"] == []


@pytest.mark.parametrize("layer", ["data", "models", "balancing", "metrics"])
def test_the_lower_layers_import_only_the_bottom(layer):
    assert _violations({layer}, set()) == []


def test_losses_import_tasks_only():
    assert GRAPH["hydranet.losses"] <= {"hydranet.tasks", "hydranet._checks"}, GRAPH["hydranet.losses"]


def test_report_imports_metrics_only():
    assert _violations({"report"}, {"metrics"}) == []


def test_train_imports_what_it_may():
    # knows models by their contract, not by import; never the CLI
    assert _violations({"train"}, {"data", "losses", "balancing", "metrics", "report"}) == []


def test_lightning_imports_the_step_and_what_train_may():
    if "hydranet.lightning" not in GRAPH:
        pytest.skip("no lightning module yet")
    imported = GRAPH["hydranet.lightning"]
    assert {t for t in imported if _layer(t) == "train"} <= {"hydranet.train.step", "hydranet.train"}
    assert _violations({"lightning"}, {"data", "losses", "balancing", "metrics", "report", "train"}) == []


def test_no_import_cycles_between_files():
    """Depth-first search for a back edge; the error shows the cycle."""
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(module: str) -> None:
        state[module] = 1
        stack.append(module)
        for target in sorted(GRAPH.get(module, ())):
            if target not in GRAPH:
                continue
            if (module, target) in DEFERRED_CYCLES and target in DEFERRED[module]:
                continue
            if state.get(target) == 1:
                cycles.append(stack[stack.index(target):] + [target])
            elif target not in state:
                visit(target)
        stack.pop()
        state[module] = 2

    for module in sorted(GRAPH):
        if module not in state:
            visit(module)
    assert cycles == [], "\n".join(" -> ".join(c) for c in cycles)


def test_the_deferred_exceptions_are_still_needed():
    # an exception whose import became a module-level one, or disappeared, must leave the list
    assert all(target in DEFERRED.get(module, set()) for module, target in DEFERRED_CYCLES)


def test_no_relative_imports():
    relative = [
        str(p.relative_to(SRC))
        for p in PACKAGE.rglob("*.py")
        if any(isinstance(n, ast.ImportFrom) and n.level for n in ast.walk(ast.parse(p.read_text())))
    ]
    assert relative == []
