"""`charrnn sample`: write text from a trained model to stdout."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator

import click

from charrnn.cli.console import terminal_safe
from charrnn.cli.group import cli
from charrnn.cli.novelty import novelty_options, open_checker
from charrnn.cli.output import unescape, write_stream
from charrnn.config import SampleConfig
from charrnn.errors import CorpusError, UsageProblem

_SAMPLE_DEFAULTS = SampleConfig()


def stderr_is_terminal() -> bool:
    """Whether a person is watching stderr (notices that would clutter a log are shown only then)."""
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def _check_combinations(
    each_line: bool,
    prime: str | None,
    num_samples: int,
    length: int,
    input_file: str | None,
    output_format: str,
) -> None:
    if input_file is not None and not each_line:
        raise UsageProblem("--input gives the lines of --each-line; add --each-line")
    if each_line and prime is not None:
        raise UsageProblem("--each-line takes its primes from the input lines; drop --prime")
    if each_line and num_samples != 1:
        raise UsageProblem("--each-line writes one completion per input line; drop --num-samples")
    if length == -1 and (each_line or output_format == "jsonl"):
        raise UsageProblem(
            "--length -1 (no end) cannot be used with --each-line or --format jsonl: give a --length"
        )


@cli.command()
@click.argument("checkpoint", metavar="[MODEL]", required=False)
@click.option(
    "--temperature",
    "-t",
    type=float,
    default=_SAMPLE_DEFAULTS.temperature,
    show_default=True,
    help="Below 1: safer, more repetitive text; above 1: wilder text.",
)
@click.option("--top-k", type=int, default=None, help="Sample only from the k most likely tokens.")
@click.option(
    "--top-p",
    type=float,
    default=None,
    help="Sample only from the most likely tokens whose probabilities sum to p.",
)
@click.option("--greedy", is_flag=True, help="Always take the most likely token.")
@click.option(
    "--length",
    "-n",
    type=int,
    default=_SAMPLE_DEFAULTS.length,
    show_default=True,
    help="Characters to write after the prime; -1 writes until the reader closes the pipe.",
)
@click.option(
    "--prime",
    type=str,
    default=None,
    help="Text to warm the model up with (written first); - reads it from stdin.",
)
@click.option(
    "--stop",
    "stops",
    multiple=True,
    metavar="TEXT",
    help="End a sample where its text first contains TEXT (not written); repeatable; "
    "\\n is a newline, \\t a tab and \\\\ a backslash (\\\\n: a backslash and an n).",
)
@click.option("--keep-stop", is_flag=True, help="Write the stop string that ended a sample.")
@click.option(
    "--each-line",
    is_flag=True,
    help="Complete every line of stdin (or --input): each line is a prime; writes prime and "
    "completion, then a newline, per line, in order.",
)
@click.option(
    "--input",
    "input_file",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="Read the lines of --each-line from this file instead of stdin.",
)
@click.option(
    "--batch-size",
    type=int,
    default=_SAMPLE_DEFAULTS.batch_size,
    show_default=True,
    help="Lines of --each-line completed side by side.",
)
@click.option(
    "--format",
    "output_format",
    type=click.Choice(["text", "jsonl"]),
    default="text",
    show_default=True,
    help="jsonl: one JSON object per sample (prime, text, stop reason, "
    "characters, log-probability in bits, seed).",
)
@click.option("--seed", type=int, default=None, show_default="random", help="Same seed, same text.")
@click.option(
    "--num-samples",
    type=int,
    default=_SAMPLE_DEFAULTS.num_samples,
    show_default=True,
    help="Samples to write (generated together as one batch).",
)
@click.option(
    "--separator",
    type=str,
    default=None,
    show_default="\\n\\n; \\n with --each-line",
    help="Written after each sample but the last (after every line with --each-line); "
    "\\n, \\t and \\\\ are understood, as for --stop.",
)
@click.option("--threads", type=int, default=1, show_default=True, help="CPU threads for torch.")
@novelty_options(
    'Check each sample against the training text: a line on stderr, or "novelty" in --format jsonl'
)
def sample(
    checkpoint: str | None,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    greedy: bool,
    length: int,
    prime: str | None,
    stops: tuple[str, ...],
    keep_stop: bool,
    each_line: bool,
    input_file: str | None,
    batch_size: int,
    output_format: str,
    seed: int | None,
    num_samples: int,
    separator: str | None,
    threads: int,
    novelty: bool,
    min_span: int,
    corpus: str | None,
) -> None:
    """Write text from a trained model to stdout.

    MODEL is a .safetensors or .onnx file, a run directory or a bundled model's name
    (shakespeare); by default, the most recently trained run under runs/, else the
    bundled model. Only the text goes to stdout.

    \b
    Examples:
      charrnn sample --temperature 0.8 | head -40
      charrnn sample runs/tinyshakespeare --prime "ROMEO:" --length 500
      charrnn sample --length -1 | grep -m 5 "KING"
      echo "JULIET:" | charrnn sample --prime - --seed 7
      charrnn sample --num-samples 10 --stop '\\n' --prime "KING"
      cut -f1 names.tsv | charrnn sample --each-line --stop '\\n'
      charrnn sample -n 300 --format jsonl --num-samples 3
    """
    _check_combinations(each_line, prime, num_samples, length, input_file, output_format)
    if prime == "-":
        prime = _prime_from_stdin()
    if separator is None:
        separator = "\\n" if each_line else "\\n\\n"
    config = SampleConfig(
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        greedy=greedy,
        length=length,
        prime=prime,
        seed=seed,
        num_samples=num_samples,
        separator=unescape(separator),
        stop=tuple(unescape(stop) for stop in stops),
        keep_stop=keep_stop,
        batch_size=batch_size,
    ).validate()

    from charrnn.export.runtime import load_model_file
    from charrnn.generate.sampler import check_stops, draw_seed
    from charrnn.hardware import configure_threads
    from charrnn.store.bundled import is_bundled
    from charrnn.store.run_dir import resolve_weights

    configure_threads(threads)
    weights = resolve_weights(checkpoint)
    loaded = load_model_file(weights)
    check_stops(loaded.tokenizer, config.stop)
    if config.seed is None:
        config.seed = draw_seed()
        if stderr_is_terminal():
            click.echo(f"seed {config.seed} (reproduce with --seed {config.seed})", err=True)
    if checkpoint is None and is_bundled(weights) and stderr_is_terminal():
        click.echo(
            "no trained run under runs/: writing with the bundled model (`charrnn sample shakespeare`)",
            err=True,
        )
    if novelty and length == -1:
        raise UsageProblem("--novelty checks whole samples: give a --length (not -1)")
    checker = open_checker(checkpoint, corpus, None, need_model=True) if novelty else None
    novelty_check = None if checker is None else (lambda text: checker.check(text, min_span))
    write_stream(_output(loaded, config, each_line, input_file, output_format, novelty_check))


def _prime_from_stdin() -> str:
    """The prime text on standard input, read by the one reader; a fault in it is a usage problem
    (exit 2), as a bad --prime given on the command line is."""
    from charrnn.data.reader import TextSource, read_all_text

    try:
        return read_all_text(TextSource(name="the prime text on standard input", stream=sys.stdin.buffer))
    except CorpusError as error:
        raise UsageProblem(str(error)) from None


def _output(
    loaded,
    config: SampleConfig,
    each_line: bool,
    input_file: str | None,
    output_format: str,
    novelty_check=None,
) -> Iterator[str]:
    """The text stdout receives, as it is written (`novelty_check(text)`: `sample --novelty`)."""
    from charrnn.generate.sampler import generate_records, generate_text

    if not each_line and output_format == "text" and novelty_check is None:
        yield from generate_text(loaded.model, loaded.tokenizer, config)
        return
    with contextlib.ExitStack() as open_files:
        batches = None
        if each_line:
            from charrnn.cli.line_input import read_line_batches
            from charrnn.data.reader import STDIN, TextSource

            source = TextSource.of(input_file if input_file is not None else STDIN)
            try:
                stream = source.open()
            except CorpusError as error:
                raise UsageProblem(str(error)) from None  # --input is a command-line value: exit 2
            open_files.callback(source.close, stream)
            batches = read_line_batches(
                stream, config.batch_size, source.name, _line_check(loaded.tokenizer, source.name)
            )
        records = generate_records(loaded.model, loaded.tokenizer, config, prime_batches=batches)
        for number, record in enumerate(records):
            report = None if novelty_check is None else novelty_check(record.text)
            if output_format == "jsonl":
                fields = (
                    record.to_dict() if report is None else {**record.to_dict(), "novelty": report.to_dict()}
                )
                yield json.dumps(fields, ensure_ascii=False) + "\n"
            elif each_line:
                yield record.prime + record.text + config.separator
            else:
                yield (config.separator if number else "") + record.prime + record.text
            if report is not None and output_format == "text":
                sys.stdout.flush()  # the sample first, then its line on stderr
                click.echo(f"novelty of sample {number + 1}: {terminal_safe(report.summary())}", err=True)


def _line_check(tokenizer, what: str):
    """The check of each `--each-line` line: characters the model never saw end the run there,
    as they would in a --prime (exit 1), once the lines before it are written."""
    from charrnn.data.tokenizers import describe_char
    from charrnn.errors import TokenizerError

    def check(line: str, number: int) -> None:
        missing = tokenizer.unencodable(line)
        if missing:
            shown = ", ".join(describe_char(char) for char in missing[:10])
            more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
            raise TokenizerError(
                f"line {number} of {what} has characters the model never saw in training: {shown}{more} "
                "(the lines before it are completed; this one and those after it are not)"
            )

    return check
