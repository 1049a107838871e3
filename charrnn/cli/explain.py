"""`charrnn explain`: a text coloured by the model's surprise or by one unit; the unit finder;
the HTML page."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import click

from charrnn.cli.group import cli
from charrnn.cli.output import write_stream
from charrnn.errors import CharrnnError, CorpusError, UsageProblem

DEFAULT_MAX_CHARS = 2000


def _read_text(source: str, max_chars: int) -> tuple[str, int]:
    """The first `max_chars` characters of the text (all of it for 0) and how many it has in all.

    The text goes through the one reader (UTF-8 checked to its end, a bad byte named by offset
    and line); beyond `max_chars` it is only counted, so a long file never sits in memory whole.
    """
    from charrnn.data.reader import TextSource, iter_text_chunks

    kept: list[str] = []
    total = 0
    for chunk in iter_text_chunks(TextSource.of(source, missing="text file")):
        if not max_chars:
            kept.append(chunk)
        elif total < max_chars:
            kept.append(chunk[: max_chars - total])
        total += len(chunk)
    return "".join(kept), total


def _split_arguments(arguments: tuple[str, ...]) -> tuple[str | None, str]:
    """One argument is the text (the model is the most recent run); two are MODEL then text."""
    if len(arguments) == 1:
        return None, arguments[0]
    if len(arguments) == 2:
        return arguments[0], arguments[1]
    raise click.UsageError(
        "give the text to explain (a file, or - for standard input), optionally "
        "after the model: charrnn explain [MODEL] FILE|-"
    )


def _stdout_console():
    from rich.console import Console

    return Console(file=sys.stdout)


def _stdout_text(*renderables) -> str:
    """Render for stdout: colours on a terminal (or with FORCE_COLOR), plain text in a pipe."""
    from rich.console import Console

    terminal = _stdout_console()
    buffer = io.StringIO()
    console = Console(
        file=buffer,
        force_terminal=terminal.is_terminal,
        color_system=terminal.color_system,
        width=terminal.width,
        highlight=False,
        emoji=False,
        markup=False,
        soft_wrap=True,
    )
    for renderable in renderables:
        console.print(renderable)
    return buffer.getvalue()


@cli.command()
@click.argument("arguments", nargs=-1, metavar="[MODEL] FILE|-")
@click.option(
    "--unit",
    default=None,
    metavar="LAYER:INDEX[:cell|hidden]",
    help="Colour by one unit's activation instead of surprise (layer and index count from 0; "
    "LSTM default: cell).",
)
@click.option(
    "--find-units",
    is_flag=True,
    help="List the units that best track inside quotes, bracket depth, position in the line, "
    "start of a word and just after a newline.",
)
@click.option(
    "--top",
    type=click.IntRange(1, 50),
    default=3,
    show_default=True,
    help="Units listed per property by --find-units (and offered on the HTML page).",
)
@click.option(
    "--show", is_flag=True, help="With --find-units: also show the text coloured by each best unit."
)
@click.option(
    "--html",
    "html_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="Write one self-contained HTML page (hover: top-5 predictions; a selector switches "
    "between surprise and the units found).",
)
@click.option(
    "--max-chars",
    type=click.IntRange(min=0),
    default=DEFAULT_MAX_CHARS,
    show_default=True,
    help="Explain only the first N characters of the text (0 = all of it).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the numbers as JSON instead of colours.")
@click.option(
    "--threads", type=click.IntRange(min=1), default=1, show_default=True, help="CPU threads for torch."
)
def explain(
    arguments: tuple[str, ...],
    unit: str | None,
    find_units: bool,
    top: int,
    show: bool,
    html_path: str | None,
    max_chars: int,
    as_json: bool,
    threads: int,
) -> None:
    """Show a text coloured by how surprised the model is at each character, or by one unit.

    With one argument, it is the text (a file, or - for stdin) and the model is the most
    recently trained run under runs/; with two, the first is the MODEL (a .safetensors
    file or a run directory). The coloured text goes to stdout (plain text in a pipe;
    set FORCE_COLOR=1 to keep the colours, e.g. for less -R).

    \b
    Examples:
      charrnn explain data/tinyshakespeare.txt --max-chars 600
      charrnn explain runs/shakespeare speech.txt --unit 1:42:cell
      charrnn explain runs/shakespeare speech.txt --find-units --show
      charrnn explain runs/shakespeare speech.txt --html explain.html
    """
    model_arg, source = _split_arguments(arguments)
    if show and not find_units:
        raise UsageProblem("--show goes with --find-units")
    if html_path and as_json:
        raise UsageProblem("--html and --json are two different answers: choose one")
    text, total_chars = _read_text(source, max_chars)
    if not total_chars:  # an input fault, exit 1, as for eval, score and info
        raise CorpusError(
            f"{'standard input' if source == '-' else source} is empty: there is nothing to explain"
        )
    from charrnn.cli.console import stderr_console, terminal_safe

    notes = stderr_console()
    if len(text) < total_chars:
        notes.print(
            f"explaining the first {max_chars:,} of {total_chars:,} characters "
            f"(--max-chars N for more, 0 for all)",
            markup=False,
            highlight=False,
        )

    from charrnn.cli.explain_view import explanation_data, found_units_data, legend, render_text, views_for
    from charrnn.hardware import configure_threads
    from charrnn.inspect.activations import analyse_text, load_for_analysis, parse_unit
    from charrnn.inspect.unit_finder import find_units as run_finder

    configure_threads(threads)
    loaded = load_for_analysis(model_arg)
    config = loaded.model_config
    chosen = (
        parse_unit(unit, config.model, config.num_layers, config.hidden_size) if unit is not None else None
    )
    loaded.tokenizer.check_encodable(text, "text")
    analysis = analyse_text(loaded.model, loaded.tokenizer, text)
    results = run_finder(analysis, top) if (find_units or html_path) else []
    views = views_for(analysis, chosen, results if (html_path or show) else [])
    found = found_units_data(results)

    if html_path:
        from charrnn.atomic import atomic_write_bytes
        from charrnn.cli.explain_html import render_page

        data = explanation_data(analysis, views, str(loaded.path), loaded.tokenizer.kind, found)
        page = render_page(data, f"charrnn explain: {Path(source).name if source != '-' else 'stdin'}")
        try:
            atomic_write_bytes(Path(html_path), page.encode("utf-8"))
        except OSError as error:
            raise CharrnnError(f"cannot write {html_path}: {error.strerror or error}") from None
        notes.print(
            f"wrote {html_path}: {len(analysis.text):,} characters, {len(views)} colourings "
            f"(surprise and {len(views) - 1} units)",
            markup=False,
            highlight=False,
        )
        return
    if as_json:
        shown = views if not find_units else views[: 1 + (chosen is not None)]
        data = explanation_data(analysis, shown, str(loaded.path), loaded.tokenizer.kind, found)
        write_stream([json.dumps(data, ensure_ascii=False) + "\n"])
        return
    colours = _stdout_console().color_system is not None
    if find_units:
        write_stream([_stdout_text(_units_table(results))])
        for view in views[1 + (chosen is not None) :] if show else []:
            write_stream([_stdout_text(legend(view), render_text(analysis, view, colours), "")])
        if not show and any(result.matches for result in results):
            best = next(result.matches[0].unit for result in results if result.matches)
            notes.print(
                f"show one with --unit, e.g. charrnn explain "
                f"{terminal_safe(' '.join(arguments))} --unit {best}",
                markup=False,
                highlight=False,
            )
        return
    view = views[-1]
    notes.print(legend(view))
    notes.print(
        f"{len(analysis.text):,} characters, {analysis.bits_per_char:.3f} bits/char on average",
        markup=False,
        highlight=False,
    )
    write_stream([_stdout_text(render_text(analysis, view, colours))])


def _units_table(results):
    from rich.table import Table

    table = Table(title=None, show_edge=False, pad_edge=False)
    for column in ("property", "unit", "correlation"):
        table.add_column(column, justify="right" if column == "correlation" else "left")
    for result in results:
        if not result.matches:
            table.add_row(result.property.description, "not in this text", "-")
        for match in result.matches:
            table.add_row(result.property.description, str(match.unit), f"{match.correlation:+.3f}")
    return table
