"""The streaming path: chunked UTF-8, the token cache, and memory-mapped windows equal to in-memory ones."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_MODEL_OPTIONS, error_lines, run_charrnn_process, run_cli

from charrnn import events
from charrnn.atomic import is_temp_file
from charrnn.data.in_memory import prepare_corpus, read_corpus
from charrnn.data.token_cache import (
    cached_token_file,
    corpus_files,
    iter_corpus_chunks,
    prepare_streamed_corpus,
    scan_corpus,
)
from charrnn.data.tokenizers import Tokenizer
from charrnn.data.windows import IGNORE_TARGET, BatchStream, EvaluationWindows
from charrnn.errors import CorpusError

# Multi-byte characters of every UTF-8 length, so chunk boundaries fall inside sequences.
MIXED = "Héllo wörld — naïve café ✓ 𝄞 music 中文字符 ok.\nSecond line: ∑ ≠ ∞, emoji 🎉!\n"


def _write(path: Path, text: str, bom: bool = False) -> Path:
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8"))
    return path


def _streamed(source: Path, val_fraction: float = 0.1, cache_dir: Path | None = None, on_progress=None):
    scan = scan_corpus(corpus_files(str(source)), on_progress=on_progress)
    return prepare_streamed_corpus(scan, "char", val_fraction, cache_dir=cache_dir, on_progress=on_progress)


@pytest.mark.parametrize("chunk_bytes", [1, 2, 3, 5, 7, 64, 1 << 20])
def test_chunks_rebuild_the_text_whatever_the_chunk_size(tmp_path, chunk_bytes):
    path = _write(tmp_path / "mixed.txt", MIXED * 3, bom=True)
    chunks = list(iter_corpus_chunks(corpus_files(str(path)), chunk_bytes=chunk_bytes))
    assert "".join(text for text, _ in chunks) == read_corpus(str(path)).text
    assert all(raw == text.encode("utf-8") for text, raw in chunks)
    scan = scan_corpus(corpus_files(str(path)), chunk_bytes=chunk_bytes)
    assert scan.fingerprint == read_corpus(str(path)).fingerprint
    assert scan.num_chars == len(read_corpus(str(path)).text)
    assert scan.chars == "".join(sorted(set(MIXED)))


def test_invalid_utf8_names_the_line_and_offset_even_across_chunks(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_bytes("first line é\nsecond ".encode() + b"\xff" + b" rest\n")
    with pytest.raises(CorpusError) as streamed:
        scan_corpus(corpus_files(str(path)), chunk_bytes=4)
    with pytest.raises(CorpusError) as in_memory:
        read_corpus(str(path))
    assert str(streamed.value) == str(in_memory.value)
    assert "line 2" in str(streamed.value) and "0xff" in str(streamed.value)


def test_truncated_sequence_at_end_of_file_is_reported(tmp_path):
    path = tmp_path / "cut.txt"
    path.write_bytes("abc €".encode()[:-1])
    with pytest.raises(CorpusError, match="not valid UTF-8"):
        scan_corpus(corpus_files(str(path)), chunk_bytes=2)


@pytest.mark.parametrize("val_fraction", [0.1, 0.25, 0.37])
def test_streamed_and_in_memory_paths_give_the_same_arrays(tmp_path, val_fraction):
    path = _write(tmp_path / "mixed.txt", MIXED * 40, bom=True)
    streamed = _streamed(path, val_fraction)
    in_memory = prepare_corpus(read_corpus(str(path)), "char", val_fraction)
    assert isinstance(streamed.train_tokens, np.memmap)
    assert streamed.tokenizer.to_dict() == in_memory.tokenizer.to_dict()
    assert streamed.train_tokens.dtype == in_memory.train_tokens.dtype
    assert np.array_equal(streamed.train_tokens, in_memory.train_tokens)
    assert np.array_equal(streamed.val_tokens, in_memory.val_tokens)
    assert (streamed.train_chars, streamed.val_chars) == (in_memory.train_chars, in_memory.val_chars)
    assert streamed.fingerprint == in_memory.fingerprint


@pytest.mark.parametrize("kind, vocab_size", [("byte", None), ("bpe", 320)])
def test_in_memory_api_is_the_streamed_pipeline_for_every_tokeniser(tmp_path, kind, vocab_size):
    path = _write(tmp_path / "mixed.txt", MIXED * 40)
    scan = scan_corpus(corpus_files(str(path)))
    streamed = prepare_streamed_corpus(scan, kind, 0.2, vocab_size, cache_dir=tmp_path / "cache")
    in_memory = prepare_corpus(read_corpus(str(path)), kind, 0.2, vocab_size)
    assert streamed.tokenizer.to_dict() == in_memory.tokenizer.to_dict()
    assert np.array_equal(streamed.train_tokens, in_memory.train_tokens)
    assert np.array_equal(streamed.val_tokens, in_memory.val_tokens)
    assert (streamed.train_chars, streamed.val_chars) == (in_memory.train_chars, in_memory.val_chars)


def test_directory_corpus_streams_every_txt_file_in_order(tmp_path):
    folder = tmp_path / "lyrics"
    folder.mkdir()
    _write(folder / "b.txt", "second file ü\n" * 30, bom=True)
    _write(folder / "a.txt", "first file ✓\n" * 30)
    (folder / "notes.md").write_text("ignored")
    streamed = _streamed(folder)
    in_memory = prepare_corpus(read_corpus(str(folder)), "char", 0.1)
    assert np.array_equal(
        np.concatenate([streamed.train_tokens, streamed.val_tokens]),
        np.concatenate([in_memory.train_tokens, in_memory.val_tokens]),
    )
    assert streamed.tokenizer.decode(streamed.train_tokens[:12]) == "first file ✓"
    assert streamed.name == "lyrics"


def test_large_vocabulary_uses_uint16(tmp_path):
    text = "".join(chr(0x4E00 + i) for i in range(400)) * 3
    streamed = _streamed(_write(tmp_path / "cjk.txt", text))
    assert streamed.tokenizer.vocab_size == 400
    assert streamed.train_tokens.dtype == np.uint16
    assert os.path.getsize(streamed.train_tokens.filename) == 2 * len(text)


def test_empty_corpus_and_empty_directory_are_clear_errors(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"\xef\xbb\xbf")
    with pytest.raises(CorpusError, match="is empty"):
        scan_corpus(corpus_files(str(empty)))
    folder = tmp_path / "nothing"
    folder.mkdir()
    with pytest.raises(CorpusError, match="no .txt files"):
        corpus_files(str(folder))
    with pytest.raises(CorpusError, match="not found"):
        corpus_files(str(tmp_path / "missing.txt"))


def _phases(record: list) -> set[str]:
    return {event.phase for event in record if isinstance(event, events.CorpusProgress)}


def test_cache_is_reused_and_invalidated_by_content_not_file_times(tmp_path):
    cache = tmp_path / "cache"
    path = _write(tmp_path / "corpus.txt", "abcdefgh\n" * 200)
    first_events: list = []
    first = _streamed(path, cache_dir=cache, on_progress=first_events.append)
    assert _phases(first_events) == {"reading", "encoding"}
    token_path = Path(first.train_tokens.filename)
    written_at = token_path.stat().st_mtime_ns

    again_events: list = []
    again = _streamed(path, cache_dir=cache, on_progress=again_events.append)
    assert _phases(again_events) == {"reading"}  # reused: no encoding pass
    assert Path(again.train_tokens.filename) == token_path
    assert token_path.stat().st_mtime_ns == written_at

    # Same size, same modification time, different content: a new cache entry.
    stat = path.stat()
    _write(path, "abcdefgi\n" * 200)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    changed_events: list = []
    changed = _streamed(path, cache_dir=cache, on_progress=changed_events.append)
    assert _phases(changed_events) == {"reading", "encoding"}
    assert Path(changed.train_tokens.filename) != token_path
    assert changed.tokenizer.decode(changed.train_tokens[:9]) == "abcdefgi\n"
    assert len(list(cache.glob("*.tokens"))) == 2


def test_damaged_cache_entry_is_encoded_again(tmp_path):
    cache = tmp_path / "cache"
    path = _write(tmp_path / "corpus.txt", "some text ✓\n" * 100)
    scan = scan_corpus(corpus_files(str(path)))
    prepared = _streamed(path, cache_dir=cache)
    token_path = Path(prepared.train_tokens.filename)
    expected = np.array(np.fromfile(token_path, dtype=np.uint8))
    del prepared
    token_path.write_bytes(token_path.read_bytes()[:-5])  # a torn file
    entry, reused = cached_token_file(scan, _streamed(path, cache_dir=tmp_path / "other").tokenizer, cache)
    assert not reused
    assert np.array_equal(np.fromfile(entry.path, dtype=np.uint8), expected)
    sidecar = json.loads(entry.sidecar.read_text())
    assert sidecar["fingerprint"] == scan.fingerprint and sidecar["num_tokens"] == len(expected)
    assert not [p for p in cache.iterdir() if is_temp_file(p)]


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_memory_mapped_batch_stream_yields_the_in_memory_windows(tmp_path, world_size):
    path = _write(tmp_path / "mixed.txt", MIXED * 60)
    streamed = _streamed(path)
    in_memory = prepare_corpus(read_corpus(str(path)), "char", 0.1)
    for rank in range(world_size):
        mapped = BatchStream(streamed.train_tokens, 4, 16, rank, world_size)
        loaded = BatchStream(in_memory.train_tokens, 4, 16, rank, world_size)
        assert mapped.windows_per_epoch == loaded.windows_per_epoch
        for index in range(mapped.windows_per_epoch + 2):  # past the end: wraps to a new pass
            for left, right in zip(mapped.window(index), loaded.window(index)):
                assert left.dtype == np.int64 and np.array_equal(left, right)


def _eager_evaluation_windows(tokens: np.ndarray, num_streams: int, window_len: int, warmup: int):
    """The original, whole-array construction of the evaluation windows (the reference)."""
    num_predictions = len(tokens) - 1
    num_streams = max(1, min(num_streams, num_predictions))
    stream_len = math.ceil(num_predictions / num_streams)
    inputs = np.zeros(num_streams * stream_len, dtype=np.int64)
    targets = np.full(num_streams * stream_len, IGNORE_TARGET, dtype=np.int64)
    inputs[:num_predictions] = tokens[:-1]
    targets[:num_predictions] = tokens[1:]
    inputs, targets = inputs.reshape(num_streams, -1), targets.reshape(num_streams, -1)
    warmup = min(warmup, stream_len) if num_streams > 1 else 0
    windows = []
    if warmup:
        context = np.zeros((num_streams, warmup), dtype=np.int64)
        context[1:] = inputs[:-1, -warmup:]
        windows.append((context, np.full_like(context, IGNORE_TARGET)))
    for start in range(0, stream_len, window_len):
        windows.append((inputs[:, start : start + window_len], targets[:, start : start + window_len]))
    return windows


@pytest.mark.parametrize(
    "num_tokens,num_streams,window_len,warmup",
    [(1000, 7, 32, 8), (101, 128, 16, 4), (57, 5, 100, 64), (2, 4, 8, 2)],
)
def test_lazy_evaluation_windows_equal_the_whole_array_ones_and_shard_exactly(
    tmp_path, num_tokens, num_streams, window_len, warmup
):
    tokens = np.random.default_rng(0).integers(0, 200, num_tokens).astype(np.uint8)
    mapped_path = tmp_path / "val.tokens"
    tokens.tofile(mapped_path)
    mapped = np.memmap(mapped_path, dtype=np.uint8, mode="r")
    reference = _eager_evaluation_windows(tokens, num_streams, window_len, warmup)
    whole = EvaluationWindows(mapped, num_streams, window_len, warmup=warmup)
    assert len(whole) == len(reference)
    for (inputs, targets), (want_inputs, want_targets) in zip(whole, reference):
        assert np.array_equal(inputs, want_inputs) and np.array_equal(targets, want_targets)
    for world_size in (2, 3):
        shards = [
            list(EvaluationWindows(mapped, num_streams, window_len, warmup, rank, world_size))
            for rank in range(world_size)
        ]
        owned = [shard for shard in shards if shard]
        for index, (want_inputs, want_targets) in enumerate(reference):
            assert np.array_equal(np.concatenate([shard[index][0] for shard in owned]), want_inputs)
            assert np.array_equal(np.concatenate([shard[index][1] for shard in owned]), want_targets)


def test_training_from_stdin_goes_through_the_cache_and_cleans_up(tmp_path):
    cache = tmp_path / "cache"
    text = ("to be or not to be, that is the question.\n" * 60).encode("utf-8")
    result = run_charrnn_process(
        "train",
        "-",
        "--out",
        str(tmp_path / "run"),
        "--max-steps",
        "3",
        "--eval-every",
        "3",
        "--cache-dir",
        str(cache),
        *TINY_MODEL_OPTIONS,
        input=text,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout == b""
    assert len(list(cache.glob("stdin-*.tokens"))) == 1
    assert not [p for p in cache.iterdir() if is_temp_file(p)]  # the spooled copy is gone
    assert (tmp_path / "run" / "best.safetensors").is_file()


def test_bad_corpus_is_one_error_line(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"ok\n\xc3\x28 broken\n")
    result = run_charrnn_process(
        "train",
        str(bad),
        "--out",
        str(tmp_path / "run"),
        "--max-steps",
        "1",
        *TINY_MODEL_OPTIONS,
        cwd=tmp_path,
    )
    lines = error_lines(result.stderr.decode())
    assert result.returncode == 1
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "line 2" in lines[0]


class _RawBytes(Tokenizer):
    """A minimal byte-level tokeniser (ids = the UTF-8 bytes), for the split rule of non-char kinds."""

    kind = "raw-bytes-test"
    vocab_size = 256

    def encode(self, text):
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8)

    def decode(self, ids):
        return bytes(int(i) for i in ids).decode("utf-8", "replace")

    def to_dict(self):
        return {"kind": self.kind}

    def char_counts(self, ids):
        return ((np.asarray(ids) & 0xC0) != 0x80).astype(np.int64)  # a character starts here


def test_split_of_a_byte_level_tokeniser_is_the_byte_offset_of_the_split_character(tmp_path, monkeypatch):
    import charrnn.data.encoding as corpus_encoding

    monkeypatch.setattr(corpus_encoding, "COUNT_CHUNK_TOKENS", 7)  # split points inside count chunks
    text = MIXED * 5
    path = _write(tmp_path / "mixed.txt", text)
    scan = scan_corpus(corpus_files(str(path)))
    for val_fraction in (0.1, 0.33, 0.5):
        prepared = prepare_streamed_corpus(
            scan, "unused", val_fraction, tokenizer=_RawBytes(), cache_dir=tmp_path / "cache"
        )
        split = int(len(text) * (1 - val_fraction))
        assert bytes(prepared.train_tokens) == text[:split].encode("utf-8")
        assert bytes(prepared.val_tokens) == text[split:].encode("utf-8")
        assert prepared.val_chars == len(text[split:]) - 1 and prepared.train_chars == split


# -- a corpus that changes between the scan and the encoding ----------------------------------


def _entries(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.iterdir() if not p.name.endswith(".lock")) if cache.exists() else []


@pytest.mark.parametrize("change", ["appended", "new character past the table", "same size, unseen ASCII"])
def test_a_corpus_that_changed_since_the_scan_stops_and_caches_nothing(tmp_path, change):
    # Before: the appended text and the unseen ASCII letter were silently encoded as id 0 and
    # cached under the old fingerprint; the character past the table raised IndexError.
    cache = tmp_path / "cache"
    path = _write(tmp_path / "log.txt", "abc é\n" * 200)
    scan = scan_corpus(corpus_files(str(path)))
    if change == "appended":
        with open(path, "a", encoding="utf-8") as log:
            log.write("zzz\n")
    elif change == "new character past the table":
        _write(path, "abc é\n" * 199 + "abc 🎉\n")
    else:
        _write(path, "abc é\n" * 199 + "abq é\n")
    with pytest.raises(CorpusError, match="changed while it was being read") as stopped:
        prepare_streamed_corpus(scan, "char", 0.1, cache_dir=cache)
    assert str(path) in str(stopped.value)
    assert _entries(cache) == []
    # Once the file holds still, a new scan trains on what it now holds.
    again = _streamed(path, cache_dir=cache)
    assert again.tokenizer.decode(again.val_tokens)[-6:] == _read(path)[-6:]


def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def test_a_file_growing_during_the_encoding_is_stopped_there(tmp_path, monkeypatch):
    import charrnn.data.corpus as corpus

    monkeypatch.setattr(corpus, "CHUNK_BYTES", 64)
    cache = tmp_path / "cache"
    path = _write(tmp_path / "growing.log", "line of a log\n" * 100)
    scan = scan_corpus(corpus_files(str(path)))
    encoded_bytes: list[int] = []

    def keep_writing(event) -> None:  # a writer appending while charrnn encodes
        if isinstance(event, events.CorpusProgress) and event.phase == "encoding":
            encoded_bytes.append(event.done_bytes)
            with open(path, "a", encoding="utf-8") as log:
                log.write("another line\n" * 10)

    with pytest.raises(CorpusError, match="changed while it was being read"):
        prepare_streamed_corpus(scan, "char", 0.1, cache_dir=cache, on_progress=keep_writing)
    assert max(encoded_bytes) <= scan.num_bytes + 64  # it stopped as soon as it read past the scan
    assert _entries(cache) == []


def test_train_on_a_corpus_that_changes_between_passes_is_one_error_line(in_tmp, monkeypatch):
    import charrnn.data.token_cache as token_cache

    cache = in_tmp / "cache"
    path = _write(in_tmp / "notes.txt", "some notes\n" * 200)
    real_encode = token_cache.encode_corpus

    def edited_before_encoding(scan, tokenizer, on_bytes):
        _write(path, "some notes\n" * 199 + "an edit was saved\n")  # an editor saves now
        return real_encode(scan, tokenizer, on_bytes)

    monkeypatch.setattr(token_cache, "encode_corpus", edited_before_encoding)
    result = run_cli("train", "notes.txt", "--cache-dir", str(cache), "--max-steps", "1", *TINY_MODEL_OPTIONS)
    assert result.exit_code == 1, result.stderr
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and lines[0].startswith(
        "Error: the corpus notes.txt changed while it was being read"
    )
    assert "Traceback" not in result.stderr
    assert _entries(cache) == []
    assert not (in_tmp / "runs" / "notes" / "state.pt").exists()
