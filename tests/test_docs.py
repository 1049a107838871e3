"""The README's module map (section "Development") names every module of the package."""

from __future__ import annotations

import re

from conftest import REPO


def _module_map() -> str:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Development") :]
    opening = section.index("```")
    return section[opening : section.index("```", opening + 3)]


def test_the_module_map_names_every_module():
    module_map = _module_map()
    modules = [path.name for path in (REPO / "charrnn").glob("*.py") if not path.name.startswith("__")]
    missing = [name for name in sorted(modules) if not re.search(rf"\b{re.escape(name)}\b", module_map)]
    assert not missing, f"README's module map does not name: {', '.join(missing)}"
