"""Corpus in, token arrays and truncated-BPTT windows out.

The corpus is read and validated once, split by characters (the validation
part is the last `val_fraction`, contiguous, as nanoGPT's), encoded to compact
integer arrays, and served as B contiguous streams cut into windows of
`seq_len` tokens: window i of every stream follows window i-1 of that
stream, which is what lets training carry the hidden state across windows.
"""

from __future__ import annotations

import hashlib
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator, Optional

import numpy as np

from .errors import CorpusError
from .tokenizers import Tokenizer, fit_tokenizer


@dataclass
class Corpus:
    """The raw text of a corpus and where it came from."""

    text: str
    name: str          # a short name for the default run directory
    source: str        # the path as given, or "-" for stdin

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the text: resuming checks the corpus did not change."""
        return hashlib.sha256(self.text.encode("utf-8", "surrogatepass")).hexdigest()


def describe_utf8_error(where: str, data: bytes, error: UnicodeDecodeError,
                        offset: int = 0, lines_before: int = 0) -> str:
    """`<where> is not valid UTF-8: byte 0x.. at offset N (line L)`, for a chunk that starts at `offset`."""
    line = lines_before + data.count(b"\n", 0, error.start) + 1
    bad = data[error.start:error.start + 1].hex()
    return f"{where} is not valid UTF-8: byte 0x{bad} at offset {offset + error.start} (line {line})"


def _decode_utf8(raw: bytes, where: str) -> str:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise CorpusError(describe_utf8_error(where, raw, error)) from None
    return text[1:] if text.startswith("\ufeff") else text  # drop a byte-order mark


def open_corpus_file(path: Path) -> BinaryIO:
    """Open a corpus file for reading bytes, or raise one clear `CorpusError`."""
    try:
        return open(path, "rb")
    except FileNotFoundError:
        raise CorpusError(f"corpus not found: {path}") from None
    except PermissionError:
        raise CorpusError(f"cannot read {path}: permission denied") from None
    except IsADirectoryError:
        raise CorpusError(f"cannot read {path}: it is a directory") from None
    except OSError as error:
        raise CorpusError(f"cannot read {path}: {error.strerror or error}") from None


def _read_bytes(path: Path) -> bytes:
    with open_corpus_file(path) as handle:
        return handle.read()


def read_corpus(source: str) -> Corpus:
    """Read a UTF-8 file, every `*.txt` in a directory (sorted, concatenated), or stdin (`-`)."""
    if source == "-":
        text = _decode_utf8(sys.stdin.buffer.read(), "standard input")
        name = "stdin"
    else:
        path = Path(source)
        if path.is_dir():
            files = sorted(p for p in path.glob("*.txt") if p.is_file())
            if not files:
                raise CorpusError(f"no .txt files in directory {path}")
            text = "".join(_decode_utf8(_read_bytes(p), str(p)) for p in files)
            name = path.resolve().name or "corpus"
        else:
            if not path.exists():
                raise CorpusError(f"corpus not found: {path}")
            text = _decode_utf8(_read_bytes(path), str(path))
            name = path.stem or "corpus"
    if not text:
        raise CorpusError(f"the corpus {'on standard input' if source == '-' else source} is empty")
    return Corpus(text=text, name=name, source=source)


COUNT_CHUNK_TOKENS = 4 << 20


def count_chars(tokenizer: Tokenizer, tokens: np.ndarray) -> int:
    """Characters behind `tokens`, counted a chunk at a time (bounded memory)."""
    if tokenizer.kind == "char":
        return len(tokens)
    return sum(int(tokenizer.char_counts(np.asarray(tokens[start:start + COUNT_CHUNK_TOKENS])).sum())
               for start in range(0, len(tokens), COUNT_CHUNK_TOKENS))


@dataclass
class PreparedCorpus:
    """A corpus encoded and split, ready for training and evaluation."""

    tokenizer: Tokenizer
    train_tokens: np.ndarray
    val_tokens: np.ndarray
    val_chars: int           # characters of text behind the predicted val tokens
    train_chars: int
    fingerprint: str
    name: str
    source: str


def prepare_corpus(corpus: Corpus, tokenizer_kind: str, val_fraction: float,
                   vocab_size: Optional[int] = None,
                   tokenizer: Optional[Tokenizer] = None) -> PreparedCorpus:
    """Split the text (validation = last `val_fraction`), fit or reuse a tokeniser, encode both parts."""
    text = corpus.text
    split_at = int(len(text) * (1.0 - val_fraction))
    train_text, val_text = text[:split_at], text[split_at:]
    if tokenizer is None:
        tokenizer = fit_tokenizer(tokenizer_kind, train_text, text, vocab_size)
    train_tokens = tokenizer.encode(train_text)
    val_tokens = tokenizer.encode(val_text)
    return split_corpus(tokenizer, train_tokens, val_tokens, len(train_text), total_chars=len(text),
                        val_fraction=val_fraction, fingerprint=corpus.fingerprint, name=corpus.name,
                        source=corpus.source)


def split_corpus(tokenizer: Tokenizer, train_tokens: np.ndarray, val_tokens: np.ndarray, train_chars: int,
                 *, total_chars: int, val_fraction: float, fingerprint: str, name: str,
                 source: str) -> PreparedCorpus:
    """The `PreparedCorpus` of an encoded split (in memory or memory-mapped), once the
    validation part is known to be evaluable; counts the characters behind its predictions."""
    if len(val_tokens) < 2:
        raise CorpusError(
            f"the validation part (last {val_fraction:.0%} of {total_chars} characters) is too "
            "short to evaluate: use a longer corpus or a larger --val-fraction")
    return PreparedCorpus(tokenizer=tokenizer, train_tokens=train_tokens, val_tokens=val_tokens,
                          val_chars=count_chars(tokenizer, val_tokens[1:]), train_chars=train_chars,
                          fingerprint=fingerprint, name=name, source=source)


PRIOR_SAMPLE_TOKENS = 1 << 24


def token_counts(tokens: np.ndarray, vocab_size: int, limit: int = PRIOR_SAMPLE_TOKENS) -> np.ndarray:
    """How often each id occurs in the first `limit` tokens (enough for a prior; bounded memory)."""
    return np.bincount(np.asarray(tokens[:limit], dtype=np.int64), minlength=vocab_size)[:vocab_size]


def fit_batch_size(num_tokens: int, batch_size: int, seq_len: int, world_size: int = 1) -> int:
    """The largest batch (per process) <= `batch_size` that gives every stream one whole window.

    Raises `CorpusError` when even one stream per process is shorter than a window.
    """
    if num_tokens - 1 < seq_len * world_size:
        raise CorpusError(
            f"the training part of the corpus has {num_tokens} tokens, shorter than one "
            f"training window (--seq-len {seq_len}"
            f"{f' x {world_size} processes' if world_size > 1 else ''}): "
            "use a longer corpus or a smaller --seq-len")
    return min(batch_size, (num_tokens - 1) // (seq_len * world_size))


class BatchStream:
    """Truncated-BPTT windows over B contiguous streams of a token array.

    The array is cut into `batch_size * world_size` equal streams; this
    process (rank) owns `batch_size` consecutive ones. `window(i)` returns
    inputs and next-token targets of shape (batch_size, seq_len) for window
    `i % windows_per_epoch`. The array may be a NumPy memmap: only the
    rows a window needs are read.
    """

    def __init__(self, tokens: np.ndarray, batch_size: int, seq_len: int,
                 rank: int = 0, world_size: int = 1) -> None:
        total_streams = batch_size * world_size
        self.tokens = tokens
        self.batch_size = batch_size
        self.seq_len = seq_len
        self.stream_len = (len(tokens) - 1) // total_streams
        self.windows_per_epoch = self.stream_len // seq_len
        if self.windows_per_epoch < 1:
            raise CorpusError(
                f"{len(tokens)} tokens cannot make {total_streams} streams of one "
                f"{seq_len}-token window each")
        first_stream = rank * batch_size
        starts = (np.arange(first_stream, first_stream + batch_size) * self.stream_len)
        self._offsets = starts[:, None] + np.arange(seq_len + 1)[None, :]

    def starts_epoch(self, index: int) -> bool:
        """True when window `index` is the first of a pass, where streams restart (reset state)."""
        return index % self.windows_per_epoch == 0

    def window(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Inputs and targets (int64, shape (batch_size, seq_len)) of window `index`."""
        position = (index % self.windows_per_epoch) * self.seq_len
        chunk = self.tokens[self._offsets + position].astype(np.int64)
        return chunk[:, :-1], chunk[:, 1:]


IGNORE_TARGET = -1


class EvaluationWindows:
    """Windows that predict every token of `tokens` after the first, exactly once.

    The array is cut into `num_streams` contiguous streams and the state is
    carried from window to window, as in training. With `warmup` > 0 the
    first window holds, for each stream, the tokens just before its start,
    so that no stream but the first begins cold; its targets are all
    `IGNORE_TARGET` and the caller should clear the state of row
    `cold_row` after it (`first_is_warmup`). The tail of the last stream is
    padded with `IGNORE_TARGET`, which the loss skips.

    Windows are cut from `tokens` on demand (it may be a memmap), and with
    `world_size` > 1 this process (rank) gets a contiguous block of the
    streams: the ranks' windows together are exactly the one-process windows.
    """

    def __init__(self, tokens: np.ndarray, num_streams: int, window_len: int, warmup: int = 0,
                 rank: int = 0, world_size: int = 1) -> None:
        self.tokens = tokens
        self.num_predictions = len(tokens) - 1
        self.num_streams = max(1, min(num_streams, self.num_predictions))
        self.stream_len = math.ceil(self.num_predictions / self.num_streams)
        self.window_len = window_len
        # One warm-up window at most, no longer than the others (bounded memory for large vocabularies).
        self.warmup = min(warmup, self.stream_len, window_len) if self.num_streams > 1 else 0
        self.first_is_warmup = self.warmup > 0
        per_rank = math.ceil(self.num_streams / world_size)
        first = min(self.num_streams, rank * per_rank)
        self.streams = np.arange(first, min(self.num_streams, first + per_rank))
        # Only the stream that starts the text must start cold after the warm-up window.
        self.cold_row: Optional[int] = 0 if len(self.streams) and self.streams[0] == 0 else None

    def __len__(self) -> int:
        """Number of windows this rank yields (0 when it owns no stream)."""
        if not len(self.streams):
            return 0
        return math.ceil(self.stream_len / self.window_len) + (1 if self.first_is_warmup else 0)

    def _cut(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        valid = positions < self.num_predictions
        clipped = np.where(valid, positions, 0)
        inputs = np.where(valid, self.tokens[clipped].astype(np.int64), 0)
        targets = np.where(valid, self.tokens[clipped + 1].astype(np.int64), IGNORE_TARGET)
        return inputs, targets

    def _warmup_window(self) -> tuple[np.ndarray, np.ndarray]:
        # Each stream is warmed up on the end of the stream before it; the first stream on zeros.
        positions = self.streams[:, None] * self.stream_len + np.arange(-self.warmup, 0)[None, :]
        context, _ = self._cut(np.where(positions >= 0, positions, self.num_predictions))
        return context, np.full_like(context, IGNORE_TARGET)

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        if not len(self.streams):
            return
        if self.first_is_warmup:
            yield self._warmup_window()
        starts = self.streams[:, None] * self.stream_len
        for start in range(0, self.stream_len, self.window_len):
            end = min(start + self.window_len, self.stream_len)
            yield self._cut(starts + np.arange(start, end)[None, :])
