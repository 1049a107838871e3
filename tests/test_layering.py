"""The packages depend on each other one way (docs/architecture.md): a module imports only from its
own layer or the layers below it, and only cli/ talks to the terminal (click and Rich)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from conftest import REPO

PACKAGE = REPO / "charrnn"

# Lowest first. A module may import from its own layer and any layer before it.
LAYERS = [
    {"config", "errors", "events", "model", "hardware", "distributed", "loss", "atomic"},
    {"data"},
    {"store"},
    {"export"},
    {"generate", "inspect"},
    {"training"},
    {"api", "__init__"},
    {"serve"},
    {"cli", "__main__"},
]


def _layer_of(top_level_name: str) -> int:
    for number, names in enumerate(LAYERS):
        if top_level_name in names:
            return number
    raise AssertionError(f"charrnn.{top_level_name} is in no layer of this test: add it to LAYERS")


def _unit(path: Path) -> str:
    """The top-level name a module belongs to: its package folder, or the module itself."""
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return parts[0]


def _imports(path: Path) -> list[tuple[int, str]]:
    """Every module a file imports (at the top or inside a function), absolute, with its line."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                raise AssertionError(
                    f"{path}:{node.lineno}: relative import (the package imports absolutely)"
                )
            module = node.module or ""
            if module == "charrnn":  # from charrnn import events: each name is a module or an attribute
                found += [(node.lineno, f"charrnn.{alias.name}") for alias in node.names]
            else:
                found.append((node.lineno, module))
    return found


SOURCES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", SOURCES, ids=lambda path: str(path.relative_to(PACKAGE)))
def test_a_module_imports_only_its_own_layer_and_those_below(path):
    own = _layer_of(_unit(path))
    upward = []
    for line, module in _imports(path):
        parts = module.split(".")
        if parts[0] != "charrnn" or len(parts) < 2 or parts[1] == "__version__":
            continue
        if _layer_of(parts[1]) > own:
            upward.append(f"line {line}: {module}")
    assert not upward, f"{path.relative_to(REPO)} imports from a higher layer: {'; '.join(upward)}"


@pytest.mark.parametrize("path", SOURCES, ids=lambda path: str(path.relative_to(PACKAGE)))
def test_only_the_command_line_uses_click_and_rich(path):
    if _unit(path) in {"cli", "__main__"}:
        return
    terminal = [
        f"line {line}: {module}"
        for line, module in _imports(path)
        if module.split(".")[0] in {"click", "rich"}
    ]
    assert not terminal, f"{path.relative_to(REPO)} imports the terminal's libraries: {'; '.join(terminal)}"


def test_the_layers_name_every_package_and_shared_module():
    units = {_unit(path) for path in SOURCES}
    named = set().union(*LAYERS)
    assert units <= named
    assert {"data", "store", "generate", "inspect", "training", "cli"} <= units
