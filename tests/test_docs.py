"""The README and docs/ stay true: every module on the architecture page, the command reference
as the script writes it now, links that resolve, a short README whose Python is the API page's."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from conftest import REPO

DOCS = REPO / "docs"
PAGES = [REPO / "README.md", *sorted(DOCS.rglob("*.md"))]
# [text](target) and ![alt](target); a target ends at the first space or closing bracket.
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def _modules_and_packages() -> list[str]:
    """Every module under charrnn/ (recursively) as a path relative to it, and every subpackage as `name/`."""
    package = REPO / "charrnn"
    names = [
        path.relative_to(package).as_posix()
        for path in package.rglob("*.py")
        if path.name != "__init__.py" or path.parent == package
    ]
    names += [path.parent.relative_to(package).as_posix() + "/" for path in package.rglob("*/__init__.py")]
    return sorted(names)


def test_the_architecture_page_names_every_module():
    page = (DOCS / "architecture.md").read_text(encoding="utf-8")
    missing = [name for name in _modules_and_packages() if f"`{name}`" not in page]
    assert not missing, f"docs/architecture.md does not name: {', '.join(missing)}"


def test_the_command_reference_is_what_the_script_writes_now():
    result = subprocess.run(
        [sys.executable, str(REPO / "tools" / "command_reference.py"), "--check"],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr
    page = (DOCS / "commands.md").read_text(encoding="utf-8")
    from charrnn.cli import cli

    assert all(f"## charrnn {name}\n" in page for name in cli.commands)


def _anchors(page: Path) -> set[str]:
    """The anchors GitHub gives a page's headings: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
    headings = re.findall(r"^#+ (.+)$", text, flags=re.M)
    return {re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-") for heading in headings}


def _broken_links(page: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
    broken = []
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
            continue
        path_part, _, anchor = target.partition("#")
        destination = (page.parent / path_part).resolve() if path_part else page
        if not destination.exists() or (
            anchor and destination.suffix == ".md" and anchor not in _anchors(destination)
        ):
            broken.append(target)
    return broken


def test_every_relative_link_of_the_readme_and_docs_resolves():
    broken = {page.relative_to(REPO).as_posix(): links for page in PAGES if (links := _broken_links(page))}
    assert not broken, f"links to missing files or headings: {broken}"


def test_the_link_check_finds_a_missing_file_and_a_missing_heading(tmp_path):
    page = tmp_path / "page.md"
    (tmp_path / "there.md").write_text("# Here\n", encoding="utf-8")
    page.write_text(
        "# Top\n[a](there.md) [b](there.md#here) [c](#top)\n"
        "[d](gone.md) [e](there.md#nowhere) [f](gone.md#x)\n",
        encoding="utf-8",
    )
    assert _broken_links(page) == ["gone.md", "there.md#nowhere", "gone.md#x"]


def test_the_readme_is_a_short_first_page():
    lines = (REPO / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 350


def test_the_readme_python_examples_are_those_of_the_api_page():
    """tests/test_api.py runs the API page's examples; the README shows some of them verbatim."""
    readme_blocks = re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(encoding="utf-8"), re.S)
    api_page = (DOCS / "python-api.md").read_text(encoding="utf-8")
    assert readme_blocks
    assert all(block in api_page for block in readme_blocks)


def test_every_experiment_note_is_dated_and_says_it_is_a_record():
    notes = sorted((DOCS / "experiments").glob("*.md"))
    notes = [note for note in notes if note.name != "README.md"]
    assert notes
    index = (DOCS / "experiments" / "README.md").read_text(encoding="utf-8")
    for note in notes:
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}-[a-z0-9-]+\.md", note.name), note.name
        assert "> A record of " + note.name[:10] in note.read_text(encoding="utf-8"), note.name
        assert f"]({note.name})" in index, note.name


def _tables_that_swallow_a_line(text: str) -> list[str]:
    """Lines of text that follow a table row with no blank line between: markdown renders them as rows."""
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    lines = text.splitlines()
    return [
        after
        for row, after in zip(lines, lines[1:], strict=False)
        if row.strip().startswith("|") and after.strip() and not after.strip().startswith("|")
    ]


def test_no_table_swallows_the_paragraph_after_it():
    swallowed = {
        page.relative_to(REPO).as_posix(): lines
        for page in PAGES
        if (lines := _tables_that_swallow_a_line(page.read_text(encoding="utf-8")))
    }
    assert not swallowed, f"a table row runs into the next line: {swallowed}"
    assert _tables_that_swallow_a_line("| a |\n|---|\n| 1 |\nThe next paragraph.\n") == [
        "The next paragraph."
    ]
