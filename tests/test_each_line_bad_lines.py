"""`sample --each-line` and a bad line (not UTF-8, or a character the model never saw): every line
before it is completed and written, in order; then one error names the line, and the run ends."""

from __future__ import annotations

import io
import json

import pytest
from conftest import error_lines, run_charrnn_process, run_cli

from charrnn.cli import line_input
from charrnn.cli.line_input import read_line_batches
from charrnn.errors import TokenizerError, UsageProblem

GREEDY = ["--each-line", "--stop", "\\n", "--greedy", "-n", "60"]
GOOD = b"the quick\nover\nthe lazy\nbrown\n"
COMPLETIONS = [
    "the quick brown fox jumps over the lazy dog.",
    "over the lazy dog.",
    "the lazy dog.",
    "brown fox jumps over the lazy dog.",
]
BAD_LINES = {
    "not UTF-8": (
        b"the \xff\xfe\n",
        2,
        "standard input is not valid UTF-8: byte 0xff at offset {offset} (line {line})",
    ),
    # 'Z' and 'é': the model was trained on lower-case "the quick brown fox..." only.
    "unseen character": (
        "Zé\n".encode(),
        1,
        "line {line} of standard input has characters the model never saw in training: 'Z' (U+005A), "
        "'é' (U+00E9) (the lines before it are completed; this one and those after it are not)",
    ),
}


def _input_with_bad_line(bad: bytes, before: int) -> bytes:
    lines = GOOD.splitlines(keepends=True)
    return b"".join(lines[:before]) + bad + b"".join(lines[before:])


@pytest.mark.parametrize("kind", list(BAD_LINES))
@pytest.mark.parametrize("batch_size", ["1", "2", "32"])
@pytest.mark.parametrize("before", [0, 3])
def test_lines_before_a_bad_line_are_all_written(trained_run, kind, batch_size, before):
    bad, exit_code, message = BAD_LINES[kind]
    stdin = _input_with_bad_line(bad, before)
    result = run_cli("sample", str(trained_run), *GREEDY, "--batch-size", batch_size, input=stdin)
    assert result.exit_code == exit_code
    assert result.stdout == "".join(line + "\n" for line in COMPLETIONS[:before])
    offset = len(b"".join(GOOD.splitlines(keepends=True)[:before])) + len(b"the ")
    assert error_lines(result.stderr) == ["Error: " + message.format(line=before + 1, offset=offset)]


@pytest.mark.parametrize("kind", list(BAD_LINES))
def test_json_records_before_a_bad_line_are_written_too(trained_run, kind):
    bad, exit_code, _ = BAD_LINES[kind]
    result = run_cli(
        "sample", str(trained_run), *GREEDY, "--format", "jsonl", input=_input_with_bad_line(bad, 2)
    )
    assert result.exit_code == exit_code
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [record["prime"] + record["text"] for record in records] == COMPLETIONS[:2]
    assert [record["index"] for record in records] == [0, 1]


def test_a_real_process_writes_the_lines_before_the_bad_one_from_a_file(trained_run, tmp_path):
    primes = tmp_path / "primes.txt"
    primes.write_bytes(_input_with_bad_line(BAD_LINES["unseen character"][0], 3))
    finished = run_charrnn_process("sample", str(trained_run), *GREEDY, "--input", str(primes))
    assert finished.returncode == 1
    assert finished.stdout.decode() == "".join(line + "\n" for line in COMPLETIONS[:3])
    [line] = error_lines(finished.stderr.decode())
    assert line.startswith(f"Error: line 4 of {primes} has characters the model never saw in training: 'Z'")


def test_the_reader_yields_the_lines_before_a_bad_one_then_raises():
    def check(line: str, number: int) -> None:
        if line == "bad":
            raise TokenizerError(f"line {number} is bad")

    batches = read_line_batches(io.BytesIO(b"a\nb\nc\nbad\nd\n"), 32, "input", check)
    assert next(batches) == ["a", "b", "c"]
    with pytest.raises(TokenizerError, match="line 4 is bad"):
        next(batches)
    batches = read_line_batches(io.BytesIO(b"a\nb\n\xff\n"), 1, "input")
    assert [next(batches), next(batches)] == [["a"], ["b"]]
    with pytest.raises(UsageProblem, match=r"\(line 3\)"):
        next(batches)


class _CountingBytes(bytes):
    """A chunk that counts the bytes copied when something is glued in front of it with `+`."""

    copied = 0

    def __radd__(self, other: bytes) -> bytes:
        _CountingBytes.copied += len(other) + len(self)
        return bytes(other) + bytes(self)


class _OneByteAtATime(io.RawIOBase):
    def __init__(self, data: bytes) -> None:
        self.data, self.position = data, 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        chunk = self.data[self.position : self.position + 1]
        self.position += 1
        return _CountingBytes(chunk)


def test_a_long_line_read_in_many_pieces_is_not_copied_once_per_piece(monkeypatch):
    monkeypatch.setattr(line_input, "READ_BYTES", 1)
    _CountingBytes.copied = 0
    line = b"x" * 20_000
    batches = list(read_line_batches(_OneByteAtATime(line + b"\nend"), 4, "input"))
    assert sum(batches, []) == [line.decode(), "end"]
    # Gluing each piece to the line so far copies about n * n / 2 bytes (200 MB here); the pieces
    # are kept apart and joined once instead.
    assert _CountingBytes.copied < 10 * len(line)
