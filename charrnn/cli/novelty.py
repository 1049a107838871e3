"""`charrnn novelty`: how much of a text is copied from a model's training text."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import click

from charrnn.cli.answer import closed_pipe_ends_quietly, print_json, split_model_argument
from charrnn.cli.console import terminal_safe
from charrnn.cli.group import cli
from charrnn.cli.model_options import cache_dir_option, model_option
from charrnn.errors import UsageProblem

PREVIEW_CHARS = 100  # of the longest span, on the terminal
# An input is read and checked this many bytes at a time, whatever its length. Small reads:
# the reader decodes each into a str, and strs of a few MB, each a different size, leave the
# allocator's heap in fragments it keeps (measured: the process grew by 80 MB over a 120 MB
# input with 1 MB reads, not at all with 64 KB ones).
READ_BYTES = 1 << 16


def min_span_option(command):
    """--min-span, shared by `novelty` and `sample --novelty`."""
    from charrnn.inspect.novelty_threshold import DEFAULT_MIN_SPAN, MAX_MIN_SPAN

    return click.option(
        "--min-span",
        type=click.IntRange(min=1, max=MAX_MIN_SPAN),
        default=DEFAULT_MIN_SPAN,
        show_default=True,
        help="Characters a span found in the training text must have to count as copied "
        "(shorter ones are common phrases and chance: docs/novelty.md).",
    )(command)


def corpus_option(command):
    """--corpus and --cache-dir, shared by `novelty` and `sample --novelty`."""
    command = cache_dir_option("of the token cache, where the index of the training text is kept")(command)
    return click.option(
        "--corpus",
        default=None,
        metavar="PATH",
        help="The training text (a file or a folder of .txt files), when it is no longer where the "
        "run read it; or any text to check against (all of it).",
    )(command)


def novelty_options(what: str):
    """--novelty (`what` it does, for the help) and the --min-span and --corpus it reads
    (`sample --novelty`, `explain --html --novelty`)."""

    def decorate(command):
        return _novelty_options(command, what)

    return decorate


def _novelty_options(command, what: str):
    command = click.option(
        "--corpus",
        default=None,
        metavar="PATH",
        help="With --novelty: the training text, when it is no longer where the run read it.",
    )(command)
    command = min_span_option(command)
    return click.option(
        "--novelty",
        is_flag=True,
        help=f"{what} (docs/novelty.md).",
    )(command)


def open_checker(model_argument: str | None, corpus: str | None, cache_dir: str | None, need_model: bool):
    """The `NoveltyChecker` of MODEL's training text (or of --corpus), notes and progress on stderr."""
    from charrnn.inspect.novelty import open_training_index, training_text_of
    from charrnn.store.run_dir import resolve_weights

    training = None
    if need_model or model_argument is not None or corpus is None:
        training = training_text_of(resolve_weights(model_argument))

    def progress(message: str) -> None:
        click.echo(f"novelty index: {message}", err=True)

    checker, notes = open_training_index(
        training, corpus, Path(cache_dir) if cache_dir else None, on_progress=progress
    )
    for note in notes:
        click.echo(f"note: {terminal_safe(note)}", err=True)
    return checker


@cli.command("novelty")
@click.argument("arguments", nargs=-1, metavar="[MODEL] [FILE|-]...")
@model_option
@min_span_option
@corpus_option
@click.option("--each-line", is_flag=True, help="One report per line of the input, not per input.")
@click.option("--json", "as_json", is_flag=True, help="Answer as JSON (JSON lines with --each-line).")
def novelty_command(
    arguments: tuple[str, ...],
    model_path: str | None,
    min_span: int,
    corpus: str | None,
    cache_dir: str | None,
    each_line: bool,
    as_json: bool,
) -> None:
    """How much of each FILE is copied verbatim from the model's training text.

    Reports the longest span of the text found in the training text (its length, its text,
    the corpus file and line it is in) and the share of characters inside copied spans of
    at least --min-span characters. Any text works, not only charrnn's samples. With no
    FILE, or -, standard input is read.

    MODEL is the first argument when it is a .safetensors file, an exported .onnx, a run
    directory or a bundled model's name; else --model, else the most recent run under runs/.
    Each input is read a piece at a time (a span's text is shown up to 1,000 characters,
    its length and place in full). The training
    text is found where the run read it (the validation part is left out) and indexed once
    into the cache; when it has moved, point at it with --corpus. --corpus without a model
    checks against all of that text.

    \b
    Examples:
      charrnn sample -n 2000 > out.txt && charrnn novelty out.txt
      charrnn novelty runs/lyrics --each-line --json < generated.txt
      charrnn novelty --corpus my-notes/ draft.txt
    """
    from charrnn.data.reader import TextSource, iter_blocks

    model_argument, files = split_model_argument(arguments, model_path, "optional")
    files = files or ["-"]
    if files.count("-") > 1:
        raise UsageProblem("standard input (-) can be read only once")
    for name in files:  # a missing or unreadable input said before the training text is indexed
        path = Path(name)
        if name != "-" and (path.is_file() or path.is_dir() or not path.exists()):  # a FIFO is read once
            source = TextSource.of(name)
            source.close(source.open())
    checker = open_checker(model_argument, corpus, cache_dir, need_model=False)
    if each_line:
        for name in files:
            blocks = (raw for _, raw in iter_blocks(TextSource.of(name), READ_BYTES))
            for number, line in enumerate(_lines_of(blocks), start=1):
                report = checker.check_stream(line, min_span)
                with closed_pipe_ends_quietly():
                    if as_json:
                        click.echo(_json_line({"file": _shown(name), "line": number, **report.to_dict()}))
                    else:
                        click.echo(_line_summary(report))
        return
    results = []
    for name in files:
        blocks = (raw for _, raw in iter_blocks(TextSource.of(name), READ_BYTES))
        report = checker.check_stream(blocks, min_span)
        if as_json:
            results.append((name, report))
            continue
        with closed_pipe_ends_quietly():  # each report as soon as it is known (a later input may fail)
            click.echo(_report_lines(_shown(name), report))
    if as_json:
        print_json(
            {
                "corpus": checker.index.source,
                "min_span": min_span,
                "inputs": [{"file": _shown(name), **report.to_dict()} for name, report in results],
            }
        )


def _lines_of(blocks: Iterator[bytes]) -> Iterator[Iterator[bytes]]:
    """Each line of the text in `blocks`, without its line end, as an iterator of byte pieces (a
    line as long as the input is never held whole); read each line to its end before the next."""
    block, at = b"", 0  # the block being cut into lines, and where its unread part starts

    def one_line() -> Iterator[bytes]:
        nonlocal block, at
        while True:
            cut = block.find(b"\n", at)
            if cut >= 0:
                piece, at = block[at:cut], cut + 1
                if piece:
                    yield piece
                return
            if at < len(block):
                yield block[at:]
            block, at = next(blocks, b""), 0
            if not block:
                return

    while True:
        if at >= len(block):
            block, at = next(blocks, b""), 0
            if not block:
                return
        line = one_line()
        yield line
        for _ in line:  # whatever the reader left of this line
            pass


def _json_line(value: dict) -> str:
    """`value` as JSON on one line, every character shown as itself on a terminal (as `json_text`)."""
    text = json.dumps(value, ensure_ascii=False, allow_nan=False)
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else json.dumps(char)[1:-1] for char in text)


def _shown(name: str) -> str:
    return "standard input" if name == "-" else name


def _line_summary(report) -> str:
    """One line per input line: share copied, longest span and where it is."""
    longest = report.longest
    if longest is None or longest.length == 0:
        return f"{report.copied_share:.1%}\t0"
    return f"{report.copied_share:.1%}\t{longest.length}\t{terminal_safe(longest.file)}:{longest.line}"


def _report_lines(name: str, report) -> str:
    """The report of one input, for people."""
    lines = [
        f"{terminal_safe(name)}: {report.num_chars:,} chars, {report.copied_share:.1%} in copied spans "
        f"of >= {report.min_span:,} chars ({report.num_spans:,} span{'' if report.num_spans == 1 else 's'})"
    ]
    longest = report.longest
    if longest is None:
        lines.append("  the text is empty")
        return "\n".join(lines)
    if longest.length == 0:
        lines.append("  nothing of it is in the training text")
        return "\n".join(lines)
    preview = longest.text if len(longest.text) <= PREVIEW_CHARS else longest.text[:PREVIEW_CHARS] + "..."
    lines.append(
        f"  longest copied span: {longest.length:,} chars at char {longest.start:,}, "
        f"from {terminal_safe(longest.file)} line {longest.line}, column {longest.column}"
    )
    lines.append(f"  {terminal_safe(repr(preview))}")
    return "\n".join(lines)
