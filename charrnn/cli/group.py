"""The `charrnn` command group: every failure becomes one `Error:` line and an exit code.

Each command lives in its own module of this package and registers itself on `cli`.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import sys
import threading
from collections.abc import Iterator

import click

from charrnn import __version__
from charrnn.cli.console import terminal_safe
from charrnn.errors import CharrnnError, UsageProblem

EXIT_SIGINT = 130
EXIT_SIGTERM = 143


def _error_line(message: str) -> str:
    # One line, and safe to print: an error may quote a path or a name read from a file.
    return "Error: " + terminal_safe(" ".join(str(message).split()))


# How PyTorch's allocators say they failed: CUDA raises torch.OutOfMemoryError ("CUDA out of
# memory"); the CPU allocator raises a plain RuntimeError ("DefaultCPUAllocator: can't allocate
# memory ... Cannot allocate memory"). Matched by name and text, so torch is never imported here.
_OUT_OF_MEMORY_PHRASES = ("out of memory", "can't allocate memory", "cannot allocate memory")


def is_out_of_memory(error: BaseException) -> bool:
    """True when `error` says an allocation failed (Python's MemoryError, or torch's on any device)."""
    if isinstance(error, MemoryError) or type(error).__name__ == "OutOfMemoryError":
        return True
    return isinstance(error, RuntimeError) and any(
        phrase in str(error).lower() for phrase in _OUT_OF_MEMORY_PHRASES
    )


# What each command can change when it runs out of memory, in its own options. Text of any length
# is read in bounded memory (a window of tokens at a time); what remains is named here.
OUT_OF_MEMORY_ADVICE = {
    "train": "to train, try a smaller --hidden-size, --num-layers, --batch-size or --seq-len",
    "sample": "to sample, try a smaller --num-samples or --batch-size (the samples or lines written "
    "side by side), or a shorter --prime",
    "eval": "eval reads any text in bounded memory, so the model itself does not fit: try --device cpu",
    "score": "score holds one line at a time, whole: split very long lines (e.g. with fold), "
    "or try --device cpu",
    "explain": "explain keeps a few numbers per character of the text: try a smaller --max-chars "
    "(without --html or --json it keeps fewest)",
}


def out_of_memory_message(error: BaseException, command: str | None = None) -> str:
    """One line for an allocation failure: what failed (short) and what to change in `command`'s options."""
    lines = str(error).strip().splitlines()
    # The CPU allocator's message starts with an assertion location that says nothing to a user.
    detail = re.sub(r"^\[enforce fail[^\]]*\]\s*(err == 0\.\s*)?", "", lines[0])[:160] if lines else ""
    advice = OUT_OF_MEMORY_ADVICE.get(command or "")
    return f"out of memory{f' ({detail})' if detail else ''}" + (f": {advice}" if advice else "")


class Terminated(BaseException):
    """SIGTERM arrived: unwound like Ctrl-C, so every command deletes its temporary files on the way out."""


def _raise_terminated(signal_number: int, frame: object) -> None:
    raise Terminated


@contextlib.contextmanager
def _sigterm_unwinds() -> Iterator[None]:
    # Only where SIGTERM would otherwise kill at once (its default): a host program's own handler
    # is kept. `train` installs its own (save, then stop) while it trains.
    if threading.current_thread() is not threading.main_thread() or (
        signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
    ):
        yield
        return
    signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


class CharrnnGroup(click.Group):
    """A group whose every failure is one `Error: ...` line on stderr: exit 2 for usage, 1 otherwise."""

    def invoke(self, ctx: click.Context):
        # Here the command that ran out of memory is known, so its error can name its own options.
        try:
            return super().invoke(ctx)
        except (MemoryError, RuntimeError) as error:  # torch.OutOfMemoryError is a RuntimeError
            if not is_out_of_memory(error):
                raise
            raise CharrnnError(out_of_memory_message(error, ctx.invoked_subcommand)) from None

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        try:
            with _sigterm_unwinds():
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
        except Terminated:
            click.echo("Error: terminated", err=True)
            sys.exit(EXIT_SIGTERM)
        except (MemoryError, RuntimeError) as error:  # torch.OutOfMemoryError is a RuntimeError
            if not is_out_of_memory(error):
                raise
            click.echo(_error_line(out_of_memory_message(error)), err=True)
            sys.exit(1)
        sys.exit(result if isinstance(result, int) else 0)


@click.group(
    cls=CharrnnGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100}
)
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
        if "RANK" in os.environ:  # started by torchrun: see distributed.end_worker_process
            from charrnn.distributed import end_worker_process

            end_worker_process(exit_request.code)
        raise
