"""The layers of docs/architecture.md hold: the import-linter contract in
pyproject.toml is kept, no module imports itself back through others (type-only
imports included), and only the application layer touches the global reactor."""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

import grimp

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "edgeproxy"


def test_import_linter_contract_is_kept() -> None:
    # The command, as CI and a developer run it (it reads pyproject.toml).
    lint_imports = pathlib.Path(sys.executable).parent / "lint-imports"
    result = subprocess.run(
        [str(lint_imports), "--no-cache"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def _cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for imported in sorted(graph.find_modules_directly_imported_by(module)):
            if imported not in index:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in on_stack:
                low[module] = min(low[module], index[imported])
        if low[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == module:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    return found


def test_no_module_imports_itself_back() -> None:
    graph = grimp.build_graph("edgeproxy", exclude_type_checking_imports=False)
    assert _cycles(graph) == []


def test_cycle_finder_finds_a_cycle() -> None:
    graph = grimp.ImportGraph()
    for name in ("p", "p.a", "p.b", "p.c"):
        graph.add_module(name)
    graph.add_import(importer="p.a", imported="p.b")
    graph.add_import(importer="p.b", imported="p.a")
    graph.add_import(importer="p.c", imported="p.a")
    assert _cycles(graph) == [["p.a", "p.b"]]


def _imports_global_reactor(path: pathlib.Path) -> bool:
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module == "twisted.internet":
            if any(alias.name == "reactor" for alias in node.names):
                return True
        elif isinstance(node, ast.Import):
            if any(alias.name == "twisted.internet.reactor" for alias in node.names):
                return True
    return False


def test_only_the_application_layer_touches_the_global_reactor() -> None:
    offenders = [
        str(path.relative_to(ROOT))
        for path in sorted(PACKAGE.rglob("*.py"))
        if path.parent.name != "app" and _imports_global_reactor(path)
    ]
    assert offenders == []
    assert _imports_global_reactor(PACKAGE / "app" / "tap.py")


def test_every_layer_says_what_it_may_import() -> None:
    layers = sorted(p for p in PACKAGE.iterdir() if (p / "__init__.py").exists())
    assert [p.name for p in layers] == [
        "app",
        "cache",
        "cluster",
        "config",
        "core",
        "net",
        "ops",
        "proxy",
        "ratelimit",
        "tls",
        "upstream",
    ]
    for layer in layers:
        doc = ast.get_docstring(ast.parse((layer / "__init__.py").read_text()))
        assert doc is not None and "import" in doc.lower(), layer.name
