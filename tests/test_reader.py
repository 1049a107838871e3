"""The one reader of a user's text (`charrnn.data.reader`): the same error line for the same fault,
whichever command or reader meets it."""

from __future__ import annotations

import errno
import io

import pytest
from conftest import error_lines, run_cli
from faults import deny_opening

from charrnn.cli.line_input import read_line_batches
from charrnn.data.corpus import CorpusBytes, corpus_files, iter_corpus_chunks
from charrnn.data.reader import TextSource, iter_lines, iter_text_chunks, open_bytes, read_all_text
from charrnn.errors import CorpusError, UsageProblem


class FailingStream(io.RawIOBase):
    """A stream whose reads fail after `good` bytes (a disk error, a network file system gone)."""

    def __init__(self, good: bytes) -> None:
        self.good = good

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if not self.good:
            raise OSError(errno.EIO, "Input/output error")
        count = min(len(buffer), len(self.good))
        buffer[:count], self.good = self.good[:count], self.good[count:]
        return count


def test_opening_maps_each_os_error_to_one_line(tmp_path, monkeypatch):
    with pytest.raises(CorpusError, match=f"^file not found: {tmp_path / 'nope.txt'}$"):
        open_bytes(tmp_path / "nope.txt")
    with pytest.raises(CorpusError, match=f"^corpus not found: {tmp_path / 'nope.txt'}$"):
        open_bytes(tmp_path / "nope.txt", missing="corpus")
    with pytest.raises(CorpusError, match=f"^{tmp_path} is a directory, not a text file$"):
        open_bytes(tmp_path)
    secret, busy = tmp_path / "secret.txt", tmp_path / "busy.txt"
    secret.write_text("x", encoding="utf-8")
    busy.write_text("x", encoding="utf-8")
    deny_opening(monkeypatch, secret)
    with pytest.raises(CorpusError, match=f"^cannot read {secret}: permission denied$"):
        open_bytes(secret)
    deny_opening(monkeypatch, busy, errno.ETXTBSY)
    with pytest.raises(CorpusError, match=f"^cannot read {busy}: Text file busy$"):
        open_bytes(busy)


def test_a_failing_read_is_one_line_in_chunks_lines_and_corpora():
    def source() -> TextSource:
        return TextSource(name="flaky.txt", stream=io.BufferedReader(FailingStream(b"ok\n"), 4))

    for read in (lambda: list(iter_text_chunks(source())), lambda: list(iter_lines(source()))):
        with pytest.raises(CorpusError, match="^cannot read flaky.txt: Input/output error$"):
            read()
    stream = io.BufferedReader(FailingStream(b"ok\n"), 4)
    with pytest.raises(UsageProblem, match="^cannot read --input: Input/output error$"):
        list(read_line_batches(stream, 4, "--input"))


def test_chunks_lines_corpora_and_line_batches_decode_alike(tmp_path):
    """One decoder: a BOM dropped, and a bad byte named by the same offset and line everywhere."""
    good = b"\xef\xbb\xbfcaf\xc3\xa9\nna\xc3\xafve\n"
    path = tmp_path / "good.txt"
    path.write_bytes(good)
    assert read_all_text(TextSource.of(path)) == "café\nnaïve\n"
    assert list(iter_lines(TextSource.of(path))) == ["café", "naïve"]
    assert "".join(text for text, _ in iter_corpus_chunks(corpus_files(str(path)), 1)) == "café\nnaïve\n"
    assert list(read_line_batches(io.BytesIO(good), 8, "x")) == [["café", "naïve"]]

    bad = b"\xef\xbb\xbfone\ntwo \xff\n"
    expected = "^bad is not valid UTF-8: byte 0xff at offset 11 \\(line 2\\)$"
    readers = [
        lambda: read_all_text(TextSource(name="bad", stream=io.BytesIO(bad))),
        lambda: list(iter_lines(TextSource(name="bad", stream=io.BytesIO(bad)))),
        lambda: list(iter_corpus_chunks(CorpusBytes(bad, name="bad", source="bad"), 2)),
    ]
    for read in readers:
        with pytest.raises(CorpusError, match=expected):
            read()
    with pytest.raises(UsageProblem, match=expected):  # exit 2: the input of a command-line option
        list(read_line_batches(io.BytesIO(bad), 1, "bad"))


@pytest.mark.parametrize("command", ["train", "eval", "score", "explain"])
def test_every_command_says_the_same_about_an_unreadable_file(trained_run, in_tmp, monkeypatch, command):
    path = in_tmp / "secret.txt"
    path.write_text("some text\n" * 20, encoding="utf-8")
    deny_opening(monkeypatch, path)
    arguments = ["secret.txt"] if command == "train" else [str(trained_run), "secret.txt"]
    result = run_cli(command, *arguments)
    assert result.exit_code == 1
    assert error_lines(result.stderr) == ["Error: cannot read secret.txt: permission denied"]


def test_a_corpus_on_standard_input_is_named_so_not_by_its_spool_file(in_tmp, monkeypatch):
    """stdin is spooled to a temporary file before training reads it: messages name stdin, not that file."""
    monkeypatch.setenv("CHARRNN_CACHE_DIR", str(in_tmp / "cache"))
    result = run_cli("train", "-", input=b"ok line\nbad \xff\n")
    assert result.exit_code == 1
    assert error_lines(result.stderr) == [
        "Error: standard input is not valid UTF-8: byte 0xff at offset 12 (line 2)"
    ]
