"""`charrnn plot`: validation bits/char and loss curves of one or several runs, as a PNG/SVG/PDF file."""

from __future__ import annotations

from pathlib import Path

import click

from charrnn.cli.group import cli
from charrnn.errors import CharrnnError

DEFAULT_OUTPUT = "plot.png"


@cli.command()
@click.argument("runs", nargs=-1, required=True, metavar="RUN...")
@click.option(
    "-o",
    "--output",
    default=DEFAULT_OUTPUT,
    show_default=True,
    type=click.Path(dir_okay=False),
    help="The image to write; .png, .svg or .pdf (the format follows the name).",
)
@click.option(
    "--x",
    "x_axis",
    type=click.Choice(["steps", "time", "chars"]),
    default="steps",
    show_default=True,
    help="Horizontal axis: training steps, training time, or characters seen.",
)
def plot(runs: tuple[str, ...], output: str, x_axis: str) -> None:
    """Draw validation bits/char and train/validation loss of RUN... on one chart.

    RUN is a run directory (or its metrics.jsonl). Needs matplotlib:
    pip install "charrnn[plot]". The image's path is printed on stdout.

    \b
    Examples:
      charrnn plot runs/tinyshakespeare
      charrnn plot runs/lstm runs/gru runs/bpe -o compare.svg --x time
    """
    from charrnn.atomic import check_output, write_output
    from charrnn.cli.console import stderr_console, terminal_safe
    from charrnn.cli.loss_chart import draw_curves, image_format, read_run, require_matplotlib, unique_names

    require_matplotlib()
    image = image_format(Path(output))
    check_output(Path(output))  # before the work: a folder or a missing folder is refused now
    notes = stderr_console()
    curves = []
    for run in runs:
        read = read_run(run)
        if read.damaged_lines:
            listed = ", ".join(str(number) for number in read.damaged_lines[:5])
            more = ", ..." if len(read.damaged_lines) > 5 else ""
            notes.print(
                f"note: {terminal_safe(read.path)}: skipped {len(read.damaged_lines)} damaged line"
                f"{'s' if len(read.damaged_lines) > 1 else ''} (line {listed}{more})",
                markup=False,
                highlight=False,
            )
        if not read.records:
            notes.print(
                f"note: {terminal_safe(run)} has no evaluations yet; left out of the chart",
                markup=False,
                highlight=False,
            )
            continue
        curves.append(read)
    if not curves:
        raise CharrnnError("nothing to plot: no run has an evaluation in its metrics.jsonl yet")
    unique_names(curves)
    check_output(Path(output), [(run.path, "the metrics of a run being plotted") for run in curves])
    data = draw_curves(curves, x_axis, image)
    write_output(Path(output), data)
    evaluations = sum(len(run.records) for run in curves)
    notes.print(
        f"wrote {terminal_safe(output)}: {len(curves)} run{'s' if len(curves) > 1 else ''}, "
        f"{evaluations} evaluations",
        markup=False,
        highlight=False,
    )
    click.echo(output)
