"""`charrnn explain`: a text coloured by the model's surprise or by one unit; the unit finder;
the HTML page."""

from __future__ import annotations

import io
import itertools
import sys
from collections.abc import Iterator
from pathlib import Path

import click

from charrnn.cli.group import cli
from charrnn.cli.novelty import novelty_options, open_checker
from charrnn.cli.output import write_stream
from charrnn.errors import CorpusError, UsageProblem

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
    return "".join(_stdout_pieces((renderable, "\n") for renderable in renderables))


def _stdout_pieces(renderables) -> Iterator[str]:
    """Render (renderable, end) pairs for stdout one at a time, each as soon as it is asked for
    (a long text is rendered a piece at a time, never whole)."""
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
    for renderable, end in renderables:
        console.print(renderable, end=end)
        yield buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()


def _coloured_text(analysis, view, colours: bool) -> Iterator[tuple[object, str]]:
    """The text coloured by `view`, a piece at a time, then its line end (for `_stdout_pieces`)."""
    from charrnn.cli.explain_view import render_pieces

    for piece in render_pieces(analysis, view, colours):
        yield piece, ""
    yield "", "\n"


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
    "between surprise and the units found); - writes it to stdout.",
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
@novelty_options("With --html: underline the spans of the text found in the training text")
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
    novelty: bool,
    min_span: int,
    corpus: str | None,
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
    if html_path == "":
        raise UsageProblem("--html needs a file name (- writes the page to stdout)")
    if html_path and as_json:
        raise UsageProblem("--html and --json are two different answers: choose one")
    if novelty and not html_path:
        raise UsageProblem("--novelty marks the copied spans on the --html page: add --html")
    from charrnn.atomic import check_output

    html_file = Path(html_path) if html_path and html_path != "-" else None  # "-": stdout
    if html_file is not None:  # before the work: a folder, a missing folder, the text itself
        check_output(html_file, [(source, "the text being explained")] if source != "-" else [])
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

    from charrnn.cli.explain_view import explanation_json, found_units_data, legend, views_for
    from charrnn.hardware import configure_threads
    from charrnn.inspect.activations import (
        TOP_PREDICTIONS,
        analyse_text,
        load_for_analysis,
        parse_unit,
        track_units,
    )
    from charrnn.inspect.unit_finder import UnitFinder

    configure_threads(threads)
    loaded = load_for_analysis(model_arg)
    if html_file is not None:  # nor over the model, or another checkpoint of its run
        saved = [*loaded.path.parent.glob("*.safetensors"), *loaded.path.parent.glob("*.pt")]
        check_output(
            html_file,
            [
                (path, "the model's weights" if path == loaded.path else "a checkpoint beside the model")
                for path in saved
            ],
        )
    config = loaded.model_config
    chosen = (
        parse_unit(unit, config.model, config.num_layers, config.hidden_size) if unit is not None else None
    )
    loaded.tokenizer.check_encodable(text, "text")
    # Only what the answer shows is kept per character: the predictions for the page and JSON,
    # the chosen unit's values, and the found units' values for the page and --show (read again).
    finding = find_units or html_path
    finder = UnitFinder(config.model, config.num_layers, config.hidden_size) if finding else None
    analysis = analyse_text(
        loaded.model,
        loaded.tokenizer,
        text,
        top_predictions=TOP_PREDICTIONS if (html_path or as_json) else 0,
        units=[chosen] if chosen else [],
        observers=[finder] if finder else [],
    )
    results = finder.results(top) if finder else []
    shown_found = results if (html_path or show) else []
    track_units(loaded.model, loaded.tokenizer, analysis, [m.unit for r in shown_found for m in r.matches])
    views = views_for(analysis, chosen, shown_found)
    found = found_units_data(results)

    if html_path:
        from charrnn.atomic import write_output
        from charrnn.cli.explain_html import page_pieces

        data = explanation_json(analysis, views, str(loaded.path), loaded.tokenizer.kind, found)
        copied = None
        if novelty:
            checker = open_checker(model_arg, corpus, None, need_model=True)
            copied = checker.check(analysis.text, min_span).to_dict()
        page = page_pieces(
            data, f"charrnn explain: {Path(source).name if source != '-' else 'stdin'}", copied
        )
        if html_file is None:
            write_stream(page)
            return
        write_output(html_file, (piece.encode("utf-8") for piece in page))
        notes.print(
            f"wrote {terminal_safe(html_path)}: {len(analysis.text):,} characters, {len(views)} colourings "
            f"(surprise and {len(views) - 1} units)",
            markup=False,
            highlight=False,
        )
        return
    if as_json:
        shown = views if not find_units else views[: 1 + (chosen is not None)]
        data = explanation_json(analysis, shown, str(loaded.path), loaded.tokenizer.kind, found)
        write_stream(itertools.chain(data, ["\n"]))
        return
    colours = _stdout_console().color_system is not None
    if find_units:
        write_stream([_stdout_text(_units_table(results))])
        for view in views[1 + (chosen is not None) :] if show else []:
            write_stream(
                _stdout_pieces([(legend(view), "\n"), *_coloured_text(analysis, view, colours), ("", "\n")])
            )
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
    write_stream(_stdout_pieces(_coloured_text(analysis, view, colours)))


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
