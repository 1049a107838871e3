"""The `charrnn` command group: every failure becomes one `Error:` line and an exit code.

Each command lives in its own module of this package and registers itself on `cli`.
"""

from __future__ import annotations

import os
import sys

import click

from .. import __version__
from ..errors import CharrnnError, UsageProblem

EXIT_SIGINT = 130
EXIT_SIGTERM = 143


def _error_line(message: str) -> str:
    return "Error: " + " ".join(str(message).split())


class CharrnnGroup(click.Group):
    """A group whose every failure is one `Error: ...` line on stderr: exit 2 for usage, 1 otherwise."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        try:
            result = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.exceptions.NoArgsIsHelpError as error:
            click.echo(error.ctx.get_help())
            sys.exit(0)
        except click.ClickException as error:
            click.echo(_error_line(error.format_message()), err=True)
            sys.exit(error.exit_code)
        except UsageProblem as error:
            click.echo(_error_line(str(error)), err=True)
            sys.exit(2)
        except CharrnnError as error:
            click.echo(_error_line(str(error)), err=True)
            sys.exit(1)
        except (click.Abort, KeyboardInterrupt):
            click.echo("Error: interrupted", err=True)
            sys.exit(EXIT_SIGINT)
        sys.exit(result if isinstance(result, int) else 0)


@click.group(cls=CharrnnGroup, context_settings={"help_option_names": ["-h", "--help"],
                                                  "max_content_width": 100})
@click.version_option(__version__, prog_name="charrnn")
def cli() -> None:
    """Learn to write like any text corpus, one character at a time.

    \b
      charrnn train corpus.txt
      charrnn sample --temperature 0.8 | head -40
    """


def main() -> None:
    """Console-script entry point."""
    try:
        cli(prog_name="charrnn")
    except SystemExit as exit_request:
        if "RANK" in os.environ:          # started by torchrun: see distributed.end_worker_process
            from ..distributed import end_worker_process
            end_worker_process(exit_request.code)
        raise
