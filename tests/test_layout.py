"""The house rules: no import circle between project modules or packages, and each package keeps to its concern."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("utils", "models", "deploy", "latency", "nas", "data", "engine")
#: Which project packages each package may import: a DAG, utils <- data <- models <- deploy <- latency <- nas, engine
#: beside latency.
ALLOWED = {
    "utils": set(),
    "data": {"utils"},
    "models": {"utils", "data"},
    "deploy": {"utils", "models", "data"},
    "latency": {"utils", "models", "deploy"},
    "engine": {"utils", "models", "data", "deploy"},
    "nas": {"utils", "models", "latency", "engine", "data", "deploy"},
}


def _imports(path: Path) -> set[str]:
    """Project modules imported anywhere in ``path`` (module level or inside functions)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        found.update(n for n in names if n.split(".")[0] in PACKAGES)
    return found


def _graph() -> dict[str, set[str]]:
    modules = {".".join(p.relative_to(ROOT).with_suffix("").parts): p for pkg in PACKAGES
               for p in (ROOT / pkg).glob("*.py")}
    graph = {}
    for name, path in modules.items():
        targets = set()
        for imported in _imports(path):
            while imported and imported not in modules and f"{imported}.__init__" not in modules:
                imported = imported.rpartition(".")[0]
            if imported in modules and imported != name:
                targets.add(imported)
        graph[name] = targets
    return graph


def test_no_import_circle_between_modules():
    graph = _graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in graph[node]:
            if state.get(nxt) == 1:
                raise AssertionError("import circle: " + " -> ".join(stack[stack.index(nxt):] + [nxt]))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


def test_packages_import_only_what_they_stand_on():
    for module, targets in _graph().items():
        package = module.split(".")[0]
        for target in targets:
            other = target.split(".")[0]
            assert other == package or other in ALLOWED[package], f"{module} imports {target}"


def test_nas_holds_only_the_search():
    assert sorted(p.stem for p in (ROOT / "nas").glob("*.py")) == [
        "__init__", "derive", "distill", "inherited", "latency_loss", "mixed_edge", "recalibrate", "sandwich",
        "searcher", "supernet"]
