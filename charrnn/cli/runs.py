"""`charrnn runs`: every run under runs/ (or DIR), best validation bits/char first."""

from __future__ import annotations

from pathlib import Path

import click

from charrnn.cli.answer import closed_pipe_ends_quietly, human_duration, print_json, stdout_console
from charrnn.cli.console import terminal_safe
from charrnn.cli.group import cli


@cli.command("runs")
@click.argument("folder", required=False, metavar="[DIR]")
@click.option("--json", "as_json", is_flag=True, help="Answer as JSON.")
def runs_command(folder: str | None, as_json: bool) -> None:
    """One row per run under DIR (default: runs/), sorted by best validation bits/char.

    STATE is "in progress" while a training holds the run's lock, "finished" when its
    last session spent its budget (or --early-stop ended it), "stopped" when it was
    interrupted or died (continue it with `charrnn train --resume RUN`).

    \b
    Examples:
      charrnn runs
      charrnn runs experiments/ --json
    """
    from charrnn.store.run_dir import DEFAULT_RUNS_ROOT
    from charrnn.store.run_summaries import list_runs

    if folder == "":  # Path("") is the current folder, which the user did not name
        raise click.UsageError('DIR is an empty name (""): give a folder of runs, or none for runs/')
    rows = list_runs(DEFAULT_RUNS_ROOT if folder is None else Path(folder))
    if as_json:
        print_json([row.to_dict() for row in rows])
        return
    if not rows:
        click.echo(f"no runs in {terminal_safe(folder or DEFAULT_RUNS_ROOT)}", err=True)
        return
    from rich.table import Table

    table = Table(box=None, pad_edge=False)
    for heading in ("run", "model", "tokeniser", "steps", "time", "best val bits/char", "state"):
        table.add_column(
            heading,
            justify="right" if heading in ("steps", "time", "best val bits/char") else "left",
            overflow="fold",
        )
    for row in rows:
        table.add_row(
            terminal_safe(row.name),  # a folder's name, and what its checkpoint says
            terminal_safe(row.model),
            terminal_safe(row.tokenizer),
            "-" if row.steps is None else f"{row.steps:,}",
            human_duration(row.elapsed),
            "-" if row.best_val_bpc is None else f"{row.best_val_bpc:.4f}",
            row.state,
        )
    with closed_pipe_ends_quietly():
        stdout_console().print(table)
