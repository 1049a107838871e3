"""The package's modules import one another one way: no module imports a module that imports it back."""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import REPO

PACKAGE = REPO / "charrnn"


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking_block(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")
    )


def _imported_names(tree: ast.AST) -> set[str]:
    """Every module name an import statement anywhere in `tree` names (inside functions too).

    Imports under `if TYPE_CHECKING:` are left out: they never run, so they are no dependency.
    """
    names: set[str] = set()
    pending = [tree]
    while pending:
        node = pending.pop()
        if _is_type_checking_block(node):
            continue
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            # `from charrnn.data import subword` names the module charrnn.data.subword
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
        pending.extend(ast.iter_child_nodes(node))
    return names


def import_graph() -> dict[str, set[str]]:
    """Each module of the package -> the package's modules it imports."""
    paths = {_module_name(path): path for path in PACKAGE.rglob("*.py")}
    return {
        name: {
            imported
            for imported in _imported_names(ast.parse(path.read_text(encoding="utf-8")))
            if imported in paths and imported != name
        }
        for name, path in paths.items()
    }


def import_circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The groups of two or more modules that reach one another through imports (Tarjan's algorithm)."""
    order: dict[str, int] = {}
    lowest: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

    def visit(module: str) -> None:
        order[module] = lowest[module] = len(order)
        stack.append(module)
        on_stack.add(module)
        for imported in sorted(graph[module]):
            if imported not in order:
                visit(imported)
                lowest[module] = min(lowest[module], lowest[imported])
            elif imported in on_stack:
                lowest[module] = min(lowest[module], order[imported])
        if lowest[module] == order[module]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == module:
                    break
            if len(group) > 1:
                circles.append(sorted(group))

    for module in sorted(graph):
        if module not in order:
            visit(module)
    return circles


def test_the_circle_finder_finds_a_circle_of_three_and_ignores_a_one_way_chain():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert import_circles(graph) == [["a", "b", "c"]]
    assert import_circles({"a": {"b"}, "b": set()}) == []


def test_imports_are_read_inside_functions_but_not_under_type_checking():
    tree = ast.parse(
        "import charrnn.config\n"
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from charrnn.model import CharRNN\n"
        "def later():\n    from charrnn.data import subword\n"
    )
    names = _imported_names(tree)
    assert {"charrnn.config", "charrnn.data", "charrnn.data.subword"} <= names
    assert "charrnn.model" not in names


def test_the_tokenizer_modules_depend_one_way():
    graph = import_graph()
    assert "charrnn.data.tokenizers" not in graph["charrnn.data.subword"]
    assert "charrnn.data.tokenizers" not in graph["charrnn.data.tokenizer_interface"]
    assert "charrnn.data.subword" not in graph["charrnn.data.tokenizer_interface"]


def test_no_module_of_the_package_imports_one_that_imports_it_back():
    assert import_circles(import_graph()) == []
