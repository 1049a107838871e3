"""`charrnn score`: a filter that writes each input line with the model's surprise at it."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator

import click

from charrnn.cli.answer import split_model_argument
from charrnn.cli.group import cli
from charrnn.cli.model_options import device_options, load_model, model_option
from charrnn.cli.output import write_stream
from charrnn.errors import CorpusError


@cli.command("score")
@click.argument("arguments", nargs=-1, metavar="[MODEL] [FILE|-]")
@model_option
@click.option(
    "--skip-unknown",
    is_flag=True,
    help="Score lines without the characters a char model never saw (else such a line scores inf).",
)
@click.option(
    "--carry-state",
    is_flag=True,
    help="Score each line after all the lines before it (one stream, not batched) instead of alone.",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line (JSON lines).")
@device_options("score")
def score_command(
    arguments: tuple[str, ...],
    model_path: str | None,
    skip_unknown: bool,
    carry_state: bool,
    as_json: bool,
    device: str,
    threads: int | None,
) -> None:
    """For every line of FILE (default: standard input), in order: bits_per_char TAB total_bits TAB line.

    Each line is scored alone, from a fresh state primed with a newline, so its score
    does not depend on its neighbours; its line end counts as one more character.
    MODEL is the first argument when it is a .safetensors or .onnx file, a run directory or a
    bundled model's name (shakespeare).
    A line with characters a char model never saw scores inf (sort -g puts it first),
    and stderr says how many there were; --skip-unknown scores it without them.

    \b
    Examples:
      charrnn score runs/logs app.log | sort -rg | head      # the strangest lines
      charrnn sample -n 2000 | charrnn score | sort -g | head  # the most typical ones
      charrnn score names.txt --json | head -3
    """
    model_argument, files = split_model_argument(arguments, model_path, "optional")
    if len(files) > 1:
        raise click.UsageError(f"score reads one FILE (or -), got {len(files)}: {' '.join(files)}")

    from charrnn.data.reader import TextSource

    model = load_model(model_argument, device, threads)
    source = TextSource.of(files[0] if files else "-")
    scores = model.score_file(files[0] if files else "-", skip_unknown=skip_unknown, carry_state=carry_state)
    unknown = {"lines": 0}

    def output() -> Iterator[str]:
        count = 0
        for score in scores:
            count += 1
            if score.unknown_chars:
                unknown["lines"] += 1
            if as_json:
                yield json.dumps(score.to_dict(), ensure_ascii=False) + "\n"
            else:
                yield f"{_figure(score.bits_per_char, 4)}\t{_figure(score.total_bits, 2)}\t{score.line}\n"
        if count == 0:
            raise CorpusError(f"{source.name} is empty: no lines to score")

    write_stream(output())
    if unknown["lines"]:
        what = "left out of their scores" if skip_unknown else "scored inf (--skip-unknown leaves them out)"
        flagged = unknown["lines"]
        subject = "1 line has" if flagged == 1 else f"{flagged} lines have"
        click.echo(f"{subject} characters the model never saw: {what}", err=True)


def _figure(value: float, decimals: int) -> str:
    return f"{value:.{decimals}f}" if math.isfinite(value) else "inf"
