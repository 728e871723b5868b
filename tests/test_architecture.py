"""The house's shape: lion_core has no import cycles, few top-level entries, and the README's
layout section names every package that is there."""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CORE = REPO / "lion_core"


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The lion_core modules a file imports, anywhere in it (module level or inside a function),
    except under `if TYPE_CHECKING:`. As import-linter counts them: `from a import b` is an edge
    to the module a.b when there is one, else to a; a package's own __init__ is not an edge."""
    tree = ast.parse(path.read_text())
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for child in node.body for n in ast.walk(child))
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in modules else node.module)
    return (found & modules) - {module_name(path)}


def import_graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in CORE.rglob("*.py")}
    modules = set(files)
    return {name: imports_of(path, modules) for name, path in files.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_lion_core_has_no_import_cycle():
    found = cycles(import_graph())
    assert not found, "import cycles in lion_core: " + "; ".join(" <-> ".join(c) for c in found)


def test_lion_core_keeps_no_prefect_import():
    graph_files = list(CORE.rglob("*.py"))
    offenders = [
        str(p.relative_to(REPO))
        for p in graph_files
        if re.search(r"^\s*(from|import) prefect\b", p.read_text(), re.M)
    ]
    assert not offenders, f"lion_core must not import Prefect: {offenders}"


def top_level_entries() -> set[str]:
    return {
        p.name
        for p in CORE.iterdir()
        if p.name != "__pycache__" and (p.suffix == ".py" or (p / "__init__.py").exists())
    }


def test_lion_core_has_few_top_level_entries():
    entries = top_level_entries() - {"__init__.py", "errors.py"}
    assert len(entries) <= 10, sorted(entries)


def test_readme_layout_lists_every_package():
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Layout", 1)[1].split("\n## ", 1)[0]
    # lion_core's entries are the lines indented by two spaces, before tasks/
    core = section.split("lion_core/", 1)[1].split("\ntasks/", 1)[0]
    listed = {name for name, _ in re.findall(r"^  (\w+)(/|\.py) ", core, re.M)}
    packages = {name.removesuffix(".py") for name in top_level_entries()} - {"__init__"}
    assert packages == listed, (
        "README's layout section and lion_core differ: "
        f"missing {sorted(packages - listed)}, stale {sorted(listed - packages)}"
    )
