"""The import rules of docs/architecture.md, read from the source (TYPE_CHECKING imports count).

format ← storage ← hub ← http ← app/cli, and format ← client; no module cycles.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OURS = ("mpack", "storage", "app")

# package prefix → the packages of ours it may import (besides itself)
ALLOWED: dict[str, tuple[str, ...]] = {
    "mpack.format": (),
    "storage": ("mpack.format",),
    "mpack.hub": ("mpack.format", "storage"),
    "mpack.client": ("mpack.format",),
    "mpack.http": ("mpack.format", "storage", "mpack.hub", "app"),
}


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _targets(node: ast.AST, known: set[str]) -> set[str]:
    if isinstance(node, ast.Import):
        return {alias.name for alias in node.names}
    if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
        found = set()
        for alias in node.names:
            sub = f"{node.module}.{alias.name}"
            found.add(sub if sub in known else node.module)
        return found
    return set()


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """module → modules of ours it imports, anywhere in the file (function bodies and TYPE_CHECKING too)."""
    files = [p for top in ("mpack", "storage") for p in (root / top).rglob("*.py")] + [root / "app.py"]
    known = {module_name(p, root) for p in files}
    graph: dict[str, set[str]] = {}
    for path in files:
        tree = ast.parse(path.read_text(), filename=str(path))
        imported = set().union(*(_targets(node, known) for node in ast.walk(tree)))
        name = module_name(path, root)
        graph[name] = {m for m in imported if m.split(".")[0] in OURS and m != name}
    return graph


def _package(module: str) -> str | None:
    return next((p for p in ALLOWED if module == p or module.startswith(p + ".")), None)


def rule_violations(graph: dict[str, set[str]]) -> list[str]:
    found = []
    for module, imports in sorted(graph.items()):
        package = _package(module)
        if package is None:
            continue
        for target in sorted(imports):
            target_package = _package(target) or target
            if target_package != package and target_package not in ALLOWED[package]:
                found.append(f"{module} imports {target} ({package} may import only {ALLOWED[package] or 'itself'})")
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_tree_follows_the_import_rules():
    assert rule_violations(import_graph()) == []


def test_the_tree_has_no_import_cycles():
    assert cycles(import_graph()) == []


def test_every_rule_package_exists():
    graph = import_graph()
    for package in ALLOWED:
        assert any(m == package or m.startswith(package + ".") for m in graph), package


def test_a_format_module_importing_the_hub_is_a_violation():
    crafted = {"mpack.format.reader": {"mpack.hub.models"}, "mpack.hub.models": set()}
    assert rule_violations(crafted) == [
        "mpack.format.reader imports mpack.hub.models (mpack.format may import only itself)"]


def test_the_client_importing_http_or_hub_is_a_violation():
    crafted = {"mpack.client.sync": {"mpack.http.media", "mpack.hub.fetch", "mpack.format.ids"}}
    assert len(rule_violations(crafted)) == 2


def test_the_hub_importing_http_is_a_violation():
    assert rule_violations({"mpack.hub.push": {"mpack.http.errors"}}) != []


def test_storage_importing_the_hub_is_a_violation():
    assert rule_violations({"storage.local": {"mpack.hub.errors"}}) != []


def test_a_cycle_through_type_checking_imports_is_found(tmp_path):
    pkg = tmp_path / "mpack" / "hub"
    pkg.mkdir(parents=True)
    (tmp_path / "storage").mkdir()
    (tmp_path / "app.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "services.py").write_text("from mpack.hub import pool\n")
    (pkg / "pool.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from mpack.hub.services import Hub\n")
    assert cycles(import_graph(tmp_path)) == [["mpack.hub.pool", "mpack.hub.services"]]


def documented_modules(doc: str) -> set[str]:
    """``package/module.py`` paths named under the package headings of docs/architecture.md."""
    named, package = set(), None
    for line in doc.splitlines():
        if line.startswith("**`") and "/`**" in line:
            package = line.split("`")[1].rstrip("/")
        elif package and line.startswith("- `") and line.count("`") >= 2:
            named.add(f"{package}/{line.split('`')[1]}")
        elif not line.strip():
            continue
        elif not line.startswith("- "):
            package = None
    return named


def test_architecture_doc_names_every_module():
    doc = (ROOT / "docs" / "architecture.md").read_text()
    modules = {str(p.relative_to(ROOT)) for top in ("mpack", "storage") for p in (ROOT / top).rglob("*.py")
               if p.name != "__init__.py" and p.parent != ROOT / "mpack"}
    assert modules - documented_modules(doc) == set()
