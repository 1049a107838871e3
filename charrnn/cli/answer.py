"""Answers that are not a text stream: tables and JSON on stdout, with a pipe that may close early."""

from __future__ import annotations

import contextlib
import json
import math
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from charrnn.cli.console import discard_further_output
from charrnn.store.run_dir import BEST_WEIGHTS, LATEST_WEIGHTS


@contextlib.contextmanager
def closed_pipe_ends_quietly() -> Iterator[None]:
    """A reader that went away (`| head`) ends the command with exit 0 and no traceback."""
    try:
        yield
        sys.stdout.flush()
    except BrokenPipeError:
        discard_further_output(sys.stdout)
        sys.exit(0)


def stdout_console():
    """A Rich console on stdout (plain text when stdout is not a terminal).

    Without markup or emoji codes: its tables show names read from files, where `[/x]` would
    stop the command and `:thumbs_up:` would turn into a picture. Pass such text through
    `terminal_safe` too.
    """
    from rich.console import Console

    return Console(
        file=sys.stdout,
        highlight=False,
        markup=False,
        emoji=False,
        soft_wrap=False,
        width=None if sys.stdout.isatty() else 160,
    )


def json_text(value: Any) -> str:
    """`value` as indented strict JSON whose every character shows as itself on a terminal.

    A number that is not finite (the infinite loss of a model certain of something else) is
    null, as in `score --json`: Python would write `Infinity`, which is not JSON and which jq
    refuses. JSON escapes the C0 control characters itself; the others a terminal acts on (C1
    controls such as CSI, bidirectional overrides, line separators) are escaped here too
    (`\\u202e`), which is the same JSON value.
    """
    text = json.dumps(_finite_or_null(value), ensure_ascii=False, indent=2, allow_nan=False)
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() or char in " \n" else json.dumps(char)[1:-1] for char in text)


def _finite_or_null(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite_or_null(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_null(item) for item in value]
    return value


def print_json(value: Any) -> None:
    """One JSON document on stdout (`json_text`)."""
    with closed_pipe_ends_quietly():
        click.echo(json_text(value))


def looks_like_model(argument: str) -> bool:
    """True when a command-line argument names a model: a .safetensors file, an exported .onnx file,
    a run directory, or the name of a bundled model (`shakespeare`) when no file of that name exists."""
    from charrnn.store.bundled import bundled_weights

    path = Path(argument)
    if argument.endswith(".safetensors") or argument.lower().endswith(".onnx"):
        return True
    if not path.exists() and bundled_weights(argument) is not None:
        return True
    return path.is_dir() and ((path / BEST_WEIGHTS).is_file() or (path / LATEST_WEIGHTS).is_file())


def split_model_argument(
    arguments: tuple[str, ...], model: str | None, files_wanted: str
) -> tuple[str | None, list[str]]:
    """(MODEL, FILES) from positional arguments: the first is MODEL when it looks like a model
    (see `looks_like_model`) and --model was not given; the rest are files."""
    files = list(arguments)
    if model is None and files and looks_like_model(files[0]):
        model, files = files[0], files[1:]
    if not files and files_wanted == "required":
        raise click.UsageError("missing FILE to read (a text file, or - for standard input)")
    return model, files


def human_duration(seconds: float | None) -> str:
    """90 -> '1m30s'."""
    if seconds is None:
        return "-"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def human_bytes(size: int) -> str:
    """1536 -> '1.5 KB'."""
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"
