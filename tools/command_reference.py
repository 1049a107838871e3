"""Write docs/commands.md, the command reference, from the `--help` of every command.

    python tools/command_reference.py > docs/commands.md    # regenerate after changing a help text
    python tools/command_reference.py --check                 # exit 1 when docs/commands.md is stale

The help is rendered at a fixed width with no terminal involved, so the page is the same on every
machine; tests/test_docs.py runs the check.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import click

from charrnn.cli import cli

REPO = Path(__file__).resolve().parent.parent
PAGE = REPO / "docs" / "commands.md"
# The help is wrapped at this width whatever the terminal, so the page does not depend on who ran it.
HELP_WIDTH = 100

HEADER = """\
# Command reference

Every command's `--help`, as `charrnn` prints it. This page is generated: do not edit it by hand,
run `python tools/command_reference.py > docs/commands.md` after changing a help text
(`tests/test_docs.py` fails while the page differs from what the script writes).
"""


def command_help(command: click.Command, name: str, parent: click.Context | None = None) -> str:
    """The text `charrnn ... NAME --help` prints, wrapped at HELP_WIDTH columns."""
    context = click.Context(
        command, info_name=name, parent=parent, terminal_width=HELP_WIDTH, max_content_width=HELP_WIDTH
    )
    return command.get_help(context)


def reference() -> str:
    """The whole page: the group's help, then one section per command in alphabetical order."""
    root = click.Context(
        cli,
        info_name="charrnn",
        terminal_width=HELP_WIDTH,
        max_content_width=HELP_WIDTH,
        help_option_names=cli.context_settings.get("help_option_names"),
    )
    parts = [HEADER, "## charrnn\n", "```\n" + cli.get_help(root) + "\n```\n"]
    for name in sorted(cli.commands):
        parts.append(f"## charrnn {name}\n")
        parts.append("```\n" + command_help(cli.commands[name], name, root) + "\n```\n")
    return "\n".join(parts)


def main() -> int:
    """Print the page, or with --check compare it with docs/commands.md and say whether it is stale."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if docs/commands.md is out of date")
    arguments = parser.parse_args()
    page = reference()
    if not arguments.check:
        sys.stdout.write(page)
        return 0
    if PAGE.is_file() and PAGE.read_text(encoding="utf-8") == page:
        return 0
    print(
        "docs/commands.md is out of date: run python tools/command_reference.py > docs/commands.md",
        file=sys.stderr,
    )
    return 1


if __name__ == "__main__":
    sys.exit(main())
