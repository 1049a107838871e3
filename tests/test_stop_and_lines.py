"""Stop strings, one completion per input line, JSON lines and reproducible seeds."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

import pytest
from conftest import PATTERN, TINY_MODEL_OPTIONS, error_lines, run_charrnn_process, run_cli
from hypothesis import given, settings
from hypothesis import strategies as st

from charrnn.config import SampleConfig
from charrnn.generate.stop_strings import StopMatcher

SENTENCE = PATTERN.rstrip("\n")  # "the quick brown fox jumps over the lazy dog."


@pytest.fixture(scope="module")
def bpe_run(tmp_path_factory):
    """A tiny bpe model that has learned the repeated sentence."""
    folder = tmp_path_factory.mktemp("bpe")
    corpus = folder / "pattern.txt"
    corpus.write_text(PATTERN * 300, encoding="utf-8")
    result = run_cli(
        "train",
        str(corpus),
        "--out",
        str(folder / "run"),
        "--tokenizer",
        "bpe",
        "--vocab-size",
        "290",
        "--max-steps",
        "120",
        "--lr",
        "0.01",
        "--warmup-steps",
        "10",
        "--precision",
        "fp32",
        *TINY_MODEL_OPTIONS,
    )
    assert result.exit_code == 0, result.stderr
    return folder / "run"


# -- the matcher alone ---------------------------------------------------------------------


def _feed_all(stops, pieces, keep_stop=False):
    matcher = StopMatcher(stops, keep_stop)
    written, stop = [], None
    for piece in pieces:
        text, stop = matcher.feed(piece)
        written.append(text)
        if stop is not None:
            break
    else:
        written.append(matcher.finish())
    return "".join(written), stop


@settings(max_examples=300, deadline=None)
@given(
    text=st.text(alphabet="ab\n", max_size=40),
    cuts=st.lists(st.integers(0, 40), max_size=8),
    stops=st.lists(st.text(alphabet="ab\n", min_size=1, max_size=4), min_size=1, max_size=3),
)
def test_any_cut_of_the_text_finds_the_first_stop(text, cuts, stops):
    bounds = sorted({0, len(text), *[min(cut, len(text)) for cut in cuts]})
    pieces = [text[start:end] for start, end in zip(bounds, bounds[1:])]
    ends = [(text.find(stop) + len(stop), stop) for stop in stops if stop in text]
    written, stop = _feed_all(stops, pieces)
    if not ends:
        assert (written, stop) == (text, None)
    else:
        end = min(end for end, _ in ends)
        # The sample ends where the first stop string is complete; what is written is the text before it.
        assert stop is not None and text[:end].endswith(stop)
        assert written + stop == text[:end]
        assert all(found not in written for found in stops)


def test_text_is_held_back_only_while_it_may_start_a_stop_string():
    matcher = StopMatcher(["\n\n", "END"])
    assert matcher.feed("KING:\n") == ("KING:", None)  # "\n" may begin "\n\n"
    assert matcher.feed("Who") == ("\nWho", None)  # it did not
    assert matcher.feed(" EN") == (" ", None)
    assert matcher.feed("D!") == ("", "END")
    keeping = StopMatcher(["\n"], keep_stop=True)
    assert keeping.feed("one\ntwo") == ("one\n", "\n")


# -- the command ---------------------------------------------------------------------------


def _records(result) -> list[dict]:
    assert result.exit_code == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_stop_newline_gives_exactly_one_line_per_sample(trained_run):
    result = run_cli(
        "sample",
        str(trained_run),
        "--prime",
        "the",
        "--stop",
        "\\n",
        "--num-samples",
        "5",
        "--separator",
        "\\n",
        "--greedy",
        "-n",
        "500",
    )
    assert result.exit_code == 0, result.stderr
    assert result.stdout.split("\n") == [SENTENCE] * 5


def test_keep_stop_writes_the_stop_string_and_length_still_caps(trained_run):
    kept = run_cli("sample", str(trained_run), "--prime", "the", "--stop", "fox", "--keep-stop", "--greedy")
    assert kept.stdout == "the quick brown fox"
    capped = run_cli("sample", str(trained_run), "--prime", "the", "--stop", "\\n", "--greedy", "-n", "6")
    assert capped.stdout == "the quick"


def test_samples_stop_on_their_own_keep_their_order_and_each_seed_reproduces_its_sample(trained_run):
    options = ["--prime", "the ", "--stop", "o", "-n", "60", "--temperature", "3", "--format", "jsonl"]
    records = _records(run_cli("sample", str(trained_run), "--num-samples", "6", "--seed", "4", *options))
    assert [record["index"] for record in records] == list(range(6))
    assert len({record["seed"] for record in records}) == 6 and records[0]["seed"] == 4
    assert len({record["chars"] for record in records}) > 1  # they ended at different steps
    for record in records:
        assert set(record) == {"index", "prime", "text", "stop_reason", "stop", "chars", "log2_prob", "seed"}
        assert record["prime"] == "the " and record["chars"] == len(record["text"])
        assert "o" not in record["text"] and record["log2_prob"] <= 0
        assert (record["stop_reason"], record["stop"]) in {("stop", "o"), ("length", None)}
        alone = _records(run_cli("sample", str(trained_run), "--seed", str(record["seed"]), *options))
        assert alone[0]["text"] == record["text"]
        assert alone[0]["log2_prob"] == pytest.approx(record["log2_prob"], rel=1e-5)


def test_an_unseeded_run_is_reproduced_from_its_records(trained_run):
    options = ["--format", "jsonl", "-n", "40", "--temperature", "2"]
    records = _records(run_cli("sample", str(trained_run), "--num-samples", "2", *options))
    for record in records:
        again = _records(run_cli("sample", str(trained_run), "--seed", str(record["seed"]), *options))
        assert again[0]["text"] == record["text"]


def test_stop_string_inside_a_subword_piece(bpe_run):
    from charrnn.store.checkpoint import load_weights

    loaded = load_weights(bpe_run / "best.safetensors")
    pieces = [loaded.tokenizer.decode([token]) for token in loaded.tokenizer.encode(SENTENCE)]
    inner = next(piece for piece in pieces if len(piece) >= 3)[1:3]  # two characters in the middle of a piece
    full = run_cli("sample", str(bpe_run), "--greedy", "--prime", "t", "-n", "80").stdout
    stopped = run_cli("sample", str(bpe_run), "--greedy", "--prime", "t", "-n", "80", "--stop", inner)
    assert stopped.exit_code == 0
    assert stopped.stdout == full[: full.index(inner, 1)]


def test_first_sample_streams_while_a_long_stop_string_is_pending(trained_run):
    from charrnn.generate.sampler import generate_text
    from charrnn.store.checkpoint import load_weights

    loaded = load_weights(trained_run / "best.safetensors")
    chunks = list(
        generate_text(
            loaded.model,
            loaded.tokenizer,
            SampleConfig(greedy=True, prime="the", length=200, num_samples=2, stop=("the lazy cat",)),
        )
    )
    # One character a chunk, except where "the lazy " had to wait to be sure it is not the stop string.
    assert max(len(chunk) for chunk in chunks[1 : chunks.index("\n\n")]) == len("the lazy d")
    assert "".join(chunks).startswith("the quick brown fox jumps over the lazy dog.\n")


def test_each_line_completes_every_line_in_order_whatever_the_batch_size(trained_run, tmp_path):
    lines = "the quick\nover\n\nthe lazy\nbrown\n"
    options = ["--each-line", "--stop", "\\n", "--seed", "8", "--temperature", "1.5", "-n", "100"]
    outputs = [
        run_cli("sample", str(trained_run), *options, "--batch-size", size, input=lines)
        for size in ("1", "2", "32")
    ]
    assert outputs[0].exit_code == 0, outputs[0].stderr
    assert outputs[0].stdout == outputs[1].stdout == outputs[2].stdout
    written = outputs[0].stdout.split("\n")
    assert len(written) == 6 and written[-1] == ""
    for prime, line in zip(lines.split("\n"), written):
        assert line.startswith(prime)
    greedy = run_cli(
        "sample",
        str(trained_run),
        "--each-line",
        "--stop",
        "\\n",
        "--greedy",
        "--format",
        "jsonl",
        input="the quick\n\n",
    )
    records = _records(greedy)
    assert records[0]["text"] == " brown fox jumps over the lazy dog."
    assert records[1]["prime"] == "" and records[1]["text"] == SENTENCE  # an empty line: from a line start
    path = tmp_path / "primes.txt"
    path.write_text(lines, encoding="utf-8")
    from_file = run_cli("sample", str(trained_run), *options, "--input", str(path))
    assert from_file.stdout == outputs[0].stdout


def test_each_line_piped_to_head_ends_quietly(trained_run):
    # `yes` itself dies of SIGPIPE once charrnn is gone: check charrnn's own exit status.
    command = (
        f"yes 'the' | {sys.executable} -m charrnn sample {trained_run} --each-line --stop '\\n' "
        '--temperature 1.5 | head -3; echo "charrnn exit ${PIPESTATUS[1]}" >&2'
    )
    finished = subprocess.run(["bash", "-c", command], capture_output=True, timeout=120)
    assert finished.stderr == b"charrnn exit 0\n"
    lines = finished.stdout.decode().split("\n")
    assert len(lines) == 4 and all(line.startswith("the") for line in lines[:3])


@pytest.mark.parametrize(
    "args, stdin, expected",
    [
        (["--stop", ""], None, "--stop must not be empty"),
        (["--stop", "a€b"], None, "'€' (U+20AC)"),
        (["--each-line", "--prime", "x"], "the\n", "drop --prime"),
        (
            ["--each-line"],
            b"the\n\xff\xfe\n",
            "standard input is not valid UTF-8: byte 0xff at offset 4 (line 2)",
        ),
        (["--input", "nowhere.txt"], None, "nowhere.txt"),
        (["--each-line", "--length", "-1"], "x\n", "--length -1"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(trained_run, args, stdin, expected):
    result = run_cli("sample", str(trained_run), "-n", "20", *args, input=stdin)
    assert result.exit_code == 2
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and lines[0].startswith("Error: ") and expected in lines[0]


def run_with_terminal_stderr(*args: str, cwd=None) -> tuple[subprocess.CompletedProcess, str]:
    """Run `charrnn ARGS` with stdout a pipe and stderr a (pseudo-)terminal; return what the terminal got."""
    import pty

    main, secondary = pty.openpty()
    finished = subprocess.run(
        [sys.executable, "-m", "charrnn", *args],
        stdout=subprocess.PIPE,
        stderr=secondary,
        cwd=cwd,
        timeout=120,
    )
    os.close(secondary)
    told = b""
    try:
        while chunk := os.read(main, 4096):
            told += chunk
    except OSError:  # the terminal is closed once everything is read
        pass
    os.close(main)
    return finished, told.decode("utf-8", errors="replace")


def test_seed_is_told_on_a_terminal_only(trained_run):
    """Defect 14: an unseeded run names its seed on stderr when stderr is a terminal;
    the pipe gets only text."""
    finished, told = run_with_terminal_stderr("sample", str(trained_run), "-n", "50", "--temperature", "2")
    assert finished.returncode == 0
    seed = int(told.split()[1])
    assert f"reproduce with --seed {seed}" in told
    again = run_charrnn_process(
        "sample", str(trained_run), "-n", "50", "--temperature", "2", "--seed", str(seed)
    )
    assert again.stdout == finished.stdout and again.stderr == b""
    assert run_charrnn_process("sample", str(trained_run), "-n", "5").stderr == b""  # not a terminal: quiet


@pytest.mark.parametrize("kind", ["bpe", "unigram"])
def test_tokens_that_write_nothing_are_never_sampled(tmp_path, kind):
    """Defect 13: a model that prefers <unk> (which decodes to nothing) used to loop forever
    without output."""
    import torch

    from charrnn.generate.sampler import silent_token_ids
    from charrnn.store.checkpoint import load_weights, save_weights

    corpus = tmp_path / "pattern.txt"
    corpus.write_text(PATTERN * 300, encoding="utf-8")
    # The default vocabulary size (shrunk to what this short corpus can learn).
    trained = run_cli(
        "train",
        str(corpus),
        "--out",
        str(tmp_path / "run"),
        "--tokenizer",
        kind,
        "--max-steps",
        "2",
        *TINY_MODEL_OPTIONS,
    )
    assert trained.exit_code == 0, trained.stderr
    loaded = load_weights(tmp_path / "run" / "best.safetensors")
    silent = silent_token_ids(loaded.tokenizer)
    assert silent and all(loaded.tokenizer.decode([token]) == "" for token in silent)
    with torch.no_grad():
        loaded.model.head.bias[silent] = 1000.0  # the model now all but always predicts them
    save_weights(tmp_path / "silent.safetensors", loaded.model, loaded.tokenizer, {})
    finished = run_charrnn_process(
        "sample", str(tmp_path / "silent.safetensors"), "-n", "40", "--seed", "1", timeout=60
    )
    assert finished.returncode == 0, finished.stderr
    assert len(finished.stdout.decode("utf-8")) == 40


def test_each_line_answers_a_slow_producer_line_by_line(trained_run):
    """A batch takes the lines that are ready: one typed line gets its answer before the next is typed."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "charrnn",
            "sample",
            str(trained_run),
            "--each-line",
            "--stop",
            "\\n",
            "--greedy",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    watchdog = threading.Timer(60, process.kill)  # a readline that never returns must not hang the suite
    watchdog.start()
    try:
        answers = []
        for prime in (b"the quick", b"over"):
            process.stdin.write(prime + b"\n")
            process.stdin.flush()
            answers.append(process.stdout.readline())  # would block for ever if it waited for a full batch
        process.stdin.close()
        assert process.wait(timeout=60) == 0
    finally:
        watchdog.cancel()
        process.kill()
    assert answers == [b"the quick brown fox jumps over the lazy dog.\n", b"over the lazy dog.\n"]


def test_unreadable_input_file_is_one_line(trained_run, tmp_path, monkeypatch):
    import builtins

    path = tmp_path / "primes.txt"
    path.write_text("the\n", encoding="utf-8")
    real_open = builtins.open

    def refusing_open(file, *args, **kwargs):
        if str(file) == str(path):
            raise PermissionError(13, "Permission denied")
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", refusing_open)
    result = run_cli("sample", str(trained_run), "--each-line", "--input", str(path))
    lines = error_lines(result.stderr)
    assert result.exit_code == 2 and lines == [f"Error: cannot read {path}: permission denied"]


@pytest.mark.parametrize(
    "typed, meant",
    [
        ("\\n", "\n"),
        ("\\t", "\t"),
        ("\\\\", "\\"),
        ("\\\\n", "\\n"),  # a backslash and an n: there was no way to ask for it
        ("\\\\\\n", "\\\n"),
        ("a\\\\b\\nc", "a\\b\nc"),
        ("\\d", "\\d"),  # any other escape is itself
        ("end\\", "end\\"),
        ("plain", "plain"),
    ],
)
def test_stop_and_separator_escapes(typed, meant):
    from charrnn.cli.output import unescape

    assert unescape(typed) == meant


def test_a_doubled_backslash_is_one_backslash_on_the_command_line(trained_run):
    result = run_cli(
        "sample", str(trained_run), "-n", "3", "--num-samples", "2", "--separator", "\\\\n", "--seed", "1"
    )
    assert result.exit_code == 0, result.stderr
    assert "\\n" in result.stdout and "\n" not in result.stdout
    # The model never saw a backslash: the stop is read as a backslash and an n, and refused so.
    refused = run_cli("sample", str(trained_run), "--stop", "\\\\n")
    assert refused.exit_code == 2
    [line] = error_lines(refused.stderr)
    assert line == "Error: --stop '\\\\n' can never be written: the model never saw '\\\\' (U+005C)"
