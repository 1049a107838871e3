"""Any Unicode in corpus, paths and prime; a stdout that cannot show a character does not crash sampling."""

from __future__ import annotations

import io
import os
import subprocess
import sys

import pytest
from conftest import TINY_MODEL_OPTIONS, error_lines, run_cli
from hypothesis import given, settings
from hypothesis import strategies as st

from charrnn.data.corpus import CorpusBytes, iter_corpus_chunks
from charrnn.data.reader import TextSource, iter_text_chunks
from charrnn.errors import CorpusError

# CJK, an emoji outside the BMP, a combining accent, Arabic (right to left), and Greek.
UNICODE_LINE = "東京の猫 🐈 café naïve e\u0301 مرحبا Ωμέγα\n"


@pytest.fixture(scope="module")
def unicode_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ünïcødé")
    corpus = folder / "Gedichte – 詩.txt"
    corpus.write_text(UNICODE_LINE * 150, encoding="utf-8")
    out = folder / "runs" / "出力 🐈"
    result = run_cli(
        "train",
        str(corpus),
        "--out",
        str(out),
        "--max-steps",
        "120",
        "--eval-every",
        "60",
        "--lr",
        "0.01",
        "--warmup-steps",
        "5",
        "--precision",
        "fp32",
        *TINY_MODEL_OPTIONS,
    )
    assert result.exit_code == 0, result.stderr
    return out


def test_unicode_corpus_paths_and_prime(unicode_run):
    prime = "東京の猫 🐈"
    result = run_cli("sample", str(unicode_run), "--prime", prime, "--greedy", "--length", "60")
    assert result.exit_code == 0, result.stderr
    # The model has learnt its one repeated line: greedy sampling goes on with that line, exactly.
    assert result.stdout == prime + (UNICODE_LINE * 3)[len(prime) : len(prime) + 60]


def _sample_process(run, *args, env_extra, input=None):
    env = {**os.environ, **env_extra}
    return subprocess.run(
        [sys.executable, "-m", "charrnn", "sample", str(run), *args],
        capture_output=True,
        env=env,
        input=input,
        timeout=60,
    )


def test_stdout_that_cannot_encode_does_not_crash_sampling(unicode_run):
    finished = _sample_process(
        unicode_run,
        "--prime",
        "café 🐈",
        "--length",
        "80",
        "--seed",
        "1",
        env_extra={"PYTHONIOENCODING": "ascii"},
    )
    assert finished.returncode == 0, finished.stderr
    assert finished.stderr == b""
    text = finished.stdout.decode("ascii")
    assert text.startswith("caf? ?") and "?" in text[6:]


def test_utf8_prime_on_stdin_whatever_the_locale(unicode_run):
    finished = _sample_process(
        unicode_run,
        "--prime",
        "-",
        "--length",
        "5",
        "--seed",
        "1",
        env_extra={"PYTHONIOENCODING": "utf-8", "LC_ALL": "C"},
        input="Ωμέγα".encode(),
    )
    assert finished.returncode == 0, finished.stderr
    assert finished.stdout.decode("utf-8").startswith("Ωμέγα")


def test_prime_on_stdin_that_is_not_utf8_is_one_line(unicode_run):
    result = run_cli("sample", str(unicode_run), "--prime", "-", input="caf\xe9".encode("latin-1"))
    assert result.exit_code == 2
    assert error_lines(result.stderr) == [
        "Error: the prime text on standard input is not valid UTF-8: byte 0xe9 at offset 3 (line 1)"
    ]


def test_error_naming_unicode_on_an_ascii_terminal_is_still_one_line(unicode_run):
    finished = _sample_process(unicode_run, "--prime", "€uro", env_extra={"PYTHONIOENCODING": "ascii"})
    assert finished.returncode == 1
    lines = finished.stderr.decode("ascii", "replace").splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "U+20AC" in lines[0]
    assert finished.stdout == b""


UTF8_PIECES = st.sampled_from(
    [b"a", b"\n", "é".encode(), "€".encode(), "😀".encode(), b"\xef\xbb\xbf", b"\xff", b"\xe2\x82", b"\xc3"]
)


@settings(max_examples=200, deadline=None)
@given(pieces=st.lists(UTF8_PIECES, max_size=12), chunk_bytes=st.integers(min_value=1, max_value=8))
def test_corpus_and_text_readers_read_any_bytes_alike(pieces, chunk_bytes):
    """One UTF-8 decoder behind both readers: the same text, or the same error, at any chunk size."""
    data = b"".join(pieces)

    def outcome(read):
        try:
            return "".join(read())
        except CorpusError as error:
            return f"error: {error}"

    corpus = outcome(
        lambda: (text for text, _ in iter_corpus_chunks(CorpusBytes(data, "x", "x"), chunk_bytes))
    )
    text = outcome(lambda: iter_text_chunks(TextSource(name="x", stream=io.BytesIO(data)), chunk_bytes))
    whole = outcome(lambda: iter_text_chunks(TextSource(name="x", stream=io.BytesIO(data)), len(data) + 1))
    assert corpus == text == whole
    if not corpus.startswith("error: "):
        assert corpus == data.removeprefix(b"\xef\xbb\xbf").decode("utf-8")
