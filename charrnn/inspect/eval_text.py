"""Evaluate a model on any text, in bounded memory: the figure `charrnn eval` reports.

The text is read and encoded a chunk at a time into a token array (kept in memory while
small, spilled to a temporary file in the cache folder beyond that, then memory-mapped),
and that array goes through `evaluation.evaluate`, the very function training's validation
uses. So on the text of a run's validation split, `eval` gives the figure training reported
(same streams, same warm-up, fp32), and a 1 GB file, or a single 200 MB line, never sits
in memory whole.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
import torch

from charrnn.atomic import create_temp_file, remove_quietly, remove_stale_temp_files
from charrnn.data.encoding import count_chars, cut_at_lines
from charrnn.data.tokenizers import UNKNOWN_ID, CharTokenizer, Tokenizer, describe_char, token_dtype
from charrnn.errors import CorpusError, TokenizerError
from charrnn.inspect.evaluation import evaluate
from charrnn.model import CharRNN

SPILL_BYTES = 16 << 20  # token arrays larger than this go to a temporary file


@dataclass
class TextEvaluation:
    """How well a model predicts one text."""

    name: str  # the file name, "standard input" or "text"
    loss: float  # nats per token
    bits_per_char: float
    chars: int  # characters behind the predicted tokens (every one after the first)
    tokens: int  # tokens predicted
    total_nats: float
    seconds: float
    skipped_chars: int = 0  # characters the model never saw, left out (skip_unknown)

    @property
    def chars_per_second(self) -> float:
        """Characters evaluated per second (encoding excluded)."""
        return self.chars / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict:
        """The figures as a JSON-safe dict."""
        return {
            "name": self.name,
            "bits_per_char": self.bits_per_char,
            "loss": self.loss,
            "chars": self.chars,
            "tokens": self.tokens,
            "total_nats": self.total_nats,
            "seconds": round(self.seconds, 4),
            "chars_per_second": round(self.chars_per_second, 1),
            "skipped_chars": self.skipped_chars,
        }


def combine(results: list[TextEvaluation], name: str = "total") -> TextEvaluation:
    """The figures of several texts taken together (sums of nats, tokens and characters)."""
    nats = sum(r.total_nats for r in results)
    tokens = sum(r.tokens for r in results)
    chars = sum(r.chars for r in results)
    return TextEvaluation(
        name=name,
        loss=nats / max(1, tokens),
        bits_per_char=nats / np.log(2) / max(1, chars),
        chars=chars,
        tokens=tokens,
        total_nats=nats,
        seconds=sum(r.seconds for r in results),
        skipped_chars=sum(r.skipped_chars for r in results),
    )


class UnknownCharacters(TokenizerError):
    """The text holds characters a char model never saw in training."""

    def __init__(self, name: str, chars: list[str], count: int) -> None:
        shown = ", ".join(describe_char(c) for c in chars[:10])
        more = f" and {len(chars) - 10} more" if len(chars) > 10 else ""
        super().__init__(
            f"{name} has characters the model never saw in training: {shown}{more} "
            f"({count} in all); --skip-unknown leaves them out"
        )
        self.chars = chars
        self.count = count


class _TokenSink:
    """Collects encoded chunks: in memory while small, then in a temporary file (deleted on close).

    The file is named as every charrnn temp file is (`atomic.temp_name`), so when the process
    is killed before `close` (SIGKILL, a power cut), the next command that uses the folder
    removes it; the folder is swept of such leftovers when the sink is made.
    """

    def __init__(self, dtype: np.dtype, folder: Path | None) -> None:
        self.dtype = dtype
        self.folder = folder or Path(tempfile.gettempdir())
        self.parts: list[np.ndarray] = []
        self.num_tokens = 0
        self.file: IO[bytes] | None = None
        self.path: Path | None = None
        remove_stale_temp_files(self.folder)

    def add(self, ids: np.ndarray) -> None:
        ids = np.asarray(ids).astype(self.dtype, copy=False)
        self.num_tokens += len(ids)
        if self.file is None and self.num_tokens * self.dtype.itemsize <= SPILL_BYTES:
            self.parts.append(ids)
            return
        if self.file is None:
            try:
                self.folder.mkdir(parents=True, exist_ok=True)
                descriptor, self.path = create_temp_file(self.folder, "eval.tokens")
                # The file outlives this call: it collects every later chunk until close().
                self.file = os.fdopen(descriptor, "wb")
            except OSError as error:
                reason = "it is not a folder" if isinstance(error, FileExistsError) else error.strerror
                raise CorpusError(
                    f"cannot write temporary tokens in {self.folder}: {reason or error} "
                    "(choose another folder with CHARRNN_CACHE_DIR)"
                ) from None
            for part in self.parts:
                self.file.write(part.tobytes())
            self.parts = []
        try:
            self.file.write(ids.tobytes())
        except OSError as error:
            raise CorpusError(f"cannot write temporary tokens: {error.strerror or error}") from None

    def tokens(self) -> np.ndarray:
        """Every token so far (a read-only memory map once spilled)."""
        if self.file is None or self.path is None:
            return np.concatenate(self.parts) if self.parts else np.zeros(0, dtype=self.dtype)
        self.file.flush()
        if self.num_tokens == 0:
            return np.zeros(0, dtype=self.dtype)
        return np.memmap(self.path, dtype=self.dtype, mode="r", shape=(self.num_tokens,))

    def close(self) -> None:
        """Delete the temporary file, if there is one."""
        if self.file is not None:
            self.file.close()
            self.file = None
        if self.path is not None:
            remove_quietly(self.path)
            self.path = None


class _CharEncoder:
    """Char ids of the known characters, noting the characters outside the vocabulary."""

    def __init__(self, tokenizer: CharTokenizer) -> None:
        self.tokenizer = tokenizer
        self.unknown: set[str] = set()
        self.unknown_count = 0

    def encode(self, text: str) -> np.ndarray:
        """Ids of the known characters of `text` (unknown ones are noted and left out)."""
        ids = self.tokenizer.ids_or_unknown(text)
        missing = ids == UNKNOWN_ID
        if missing.any():
            self.unknown.update(self.tokenizer.unencodable(text))
            self.unknown_count += int(missing.sum())
            ids = ids[~missing]  # left out (an error is raised later unless skipping)
        return ids


def encode_text(
    tokenizer: Tokenizer,
    chunks: Iterable[str],
    name: str,
    skip_unknown: bool = False,
    temp_folder: Path | None = None,
) -> tuple[_TokenSink, int]:
    """Encode text chunks into a token sink; return it and the number of characters left out.

    Raises `UnknownCharacters` (after reading everything, so it can name them all) when a
    char model meets characters it never saw and `skip_unknown` is off.
    """
    sink = _TokenSink(token_dtype(tokenizer.vocab_size), temp_folder)
    try:
        if isinstance(tokenizer, CharTokenizer):
            encoder = _CharEncoder(tokenizer)
            for text in chunks:
                sink.add(encoder.encode(text))
            if encoder.unknown and not skip_unknown:
                raise UnknownCharacters(name, sorted(encoder.unknown), encoder.unknown_count)
            return sink, encoder.unknown_count
        texts = chunks if tokenizer.kind == "byte" else cut_at_lines(chunks)
        for text in texts:
            sink.add(tokenizer.encode(text))
        return sink, 0
    except BaseException:
        sink.close()
        raise


def evaluate_chunks(
    model: CharRNN,
    tokenizer: Tokenizer,
    chunks: Iterable[str],
    device: torch.device,
    name: str = "text",
    skip_unknown: bool = False,
    temp_folder: Path | None = None,
) -> TextEvaluation:
    """Bits per character and loss per token of `model` on the text of `chunks` (read once, in order).

    Every token after the first is predicted, with the state carried through the text
    exactly as training's validation does (`evaluation.evaluate`).
    """
    sink, skipped = encode_text(tokenizer, chunks, name, skip_unknown, temp_folder)
    try:
        tokens = sink.tokens()
        if len(tokens) == 0:
            raise CorpusError(
                f"{name} is empty" + (" once unknown characters are left out" if skipped else "")
            )
        if len(tokens) < 2:
            raise CorpusError(
                f"{name} is too short to evaluate (one token: every token after the first is predicted)"
            )
        num_chars = count_chars(tokenizer, tokens[1:])
        result = evaluate(model, tokens, num_chars, device)
        return TextEvaluation(
            name=name,
            loss=result.loss,
            bits_per_char=result.bits_per_char,
            chars=num_chars,
            tokens=result.num_predictions,
            total_nats=result.total_nats,
            seconds=result.seconds,
            skipped_chars=skipped,
        )
    finally:
        if "tokens" in locals():
            del tokens  # release the memory map before its file is removed
        sink.close()


def default_temp_folder() -> Path:
    """Where large token arrays are spilled: the token cache folder (not /tmp, which may be RAM)."""
    from charrnn.data.token_cache import default_cache_dir

    return default_cache_dir()


def text_chunks(text: str, size: int = 1 << 22) -> Iterator[str]:
    """A string as chunks (so in-memory text takes the same path as a file)."""
    for start in range(0, len(text), size):
        yield text[start : start + size]
