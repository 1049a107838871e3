"""`charrnn eval`: bits per character and loss per token of a model on any text files."""

from __future__ import annotations

import click

from charrnn.cli.answer import closed_pipe_ends_quietly, print_json, split_model_argument, stdout_console
from charrnn.cli.console import terminal_safe
from charrnn.cli.group import cli
from charrnn.cli.model_options import device_options, load_model, model_option
from charrnn.errors import UsageProblem


@cli.command("eval")
@click.argument("arguments", nargs=-1, metavar="[MODEL] FILE|-...")
@model_option
@click.option(
    "--skip-unknown",
    is_flag=True,
    help="Leave out characters a char model never saw (and say how many), instead of stopping.",
)
@click.option("--json", "as_json", is_flag=True, help="Answer as JSON.")
@device_options("evaluate")
def eval_command(
    arguments: tuple[str, ...],
    model_path: str | None,
    skip_unknown: bool,
    as_json: bool,
    device: str,
    threads: int | None,
) -> None:
    """How well a model predicts each FILE: bits per character, loss per token, speed.

    MODEL is the first argument when it is a .safetensors or .onnx file, a run directory
    (a folder with best.safetensors) or a bundled model's name (shakespeare);
    otherwise every argument is a FILE and the model is --model or the most
    recent run under runs/. - reads standard input.
    Every character after a file's first is predicted, with the state carried
    through the file: on the text of a run's validation split this is the figure
    training reported. Files of any size are read in bounded memory.

    \b
    Examples:
      charrnn eval held-out.txt
      charrnn eval runs/tinyshakespeare a.txt b.txt      # each, and the total
      cat notes.txt | charrnn eval -m runs/notes/best.safetensors - --json
    """
    model_argument, files = split_model_argument(arguments, model_path, "required")
    if files.count("-") > 1:
        raise UsageProblem("standard input (-) can be read only once")

    from charrnn.inspect.eval_text import combine

    model = load_model(model_argument, device, threads)
    results = [model.evaluate_file(name, skip_unknown=skip_unknown) for name in files]
    total = combine(results)
    if as_json:
        print_json(
            {"model": str(model.path), "files": [r.to_dict() for r in results], "total": total.to_dict()}
        )
        return
    _print_table(results, total if len(results) > 1 else None)
    for result in results:
        if result.skipped_chars:
            click.echo(
                f"{terminal_safe(result.name)}: left out {result.skipped_chars} characters "
                "the model never saw",
                err=True,
            )


def _print_table(results, total) -> None:
    from rich.table import Table

    table = Table(box=None, pad_edge=False, show_edge=False)
    for heading in ("file", "bits/char", "loss/token", "chars", "tokens", "chars/s"):
        table.add_column(heading, justify="left" if heading == "file" else "right", overflow="fold")
    for result in results + ([total] if total is not None else []):
        table.add_row(
            terminal_safe(result.name),  # a file's name
            f"{result.bits_per_char:.4f}",
            f"{result.loss:.4f}",
            f"{result.chars:,}",
            f"{result.tokens:,}",
            f"{result.chars_per_second:,.0f}",
        )
    with closed_pipe_ends_quietly():
        stdout_console().print(table)
