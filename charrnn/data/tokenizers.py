"""Tokenisers: text <-> integer ids, behind one small interface (`tokenizer_interface`).

This module holds the char and byte kinds and the two functions that pick a kind by
name: `fit_tokenizer` for a new corpus and `tokenizer_from_dict` for a checkpoint. The
learned subword kinds (bpe, unigram) live in `subword`. The interface's names are
imported here too, so callers name one module for everything a tokeniser is.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from charrnn.config import SENTENCEPIECE_KINDS
from charrnn.data.subword import SentencePieceTokenizer
from charrnn.data.tokenizer_interface import (
    StreamDecoder,
    Tokenizer,
    Utf8StreamDecoder,
    describe_char,
    token_dtype,
)
from charrnn.errors import TokenizerError

__all__ = [
    "UNKNOWN_ID",
    "ByteTokenizer",
    "CharStreamDecoder",
    "CharTokenizer",
    "SentencePieceTokenizer",
    "StreamDecoder",
    "Tokenizer",
    "Utf8StreamDecoder",
    "describe_char",
    "fit_tokenizer",
    "token_dtype",
    "tokenizer_from_dict",
]


class CharStreamDecoder(StreamDecoder):
    """One character per id: a list lookup (sampling calls `feed` for every character it writes)."""

    def __init__(self, chars: list[str]) -> None:
        self._chars = chars

    def feed(self, token_id: int) -> str:
        return self._chars[token_id]


# What `CharTokenizer.ids_or_unknown` gives a character outside the vocabulary.
UNKNOWN_ID = -1


class CharTokenizer(Tokenizer):
    """One id per Unicode code point seen in the corpus.

    A fitted vocabulary is in code-point order. A fine-tuned model's vocabulary is
    its parent's followed by the characters the new corpus added (`extended_by`):
    old characters keep their ids, so the parent's weights keep their meaning.
    """

    kind = "char"

    def __init__(self, chars: Iterable[str], keep_order: bool = False) -> None:
        chars = list(chars)
        if keep_order:
            if len(set(chars)) != len(chars):
                raise TokenizerError("a character vocabulary lists a character twice")
            self.chars = chars
        else:
            self.chars = sorted(set(chars))
        if not self.chars:
            raise TokenizerError("cannot build a character vocabulary from empty text")
        code_points = np.array([ord(c) for c in self.chars], dtype=np.uint32)
        # encode() looks code points up in sorted order, then maps the sorted position to the id.
        self._sorted_order = np.argsort(code_points, kind="stable")
        self._code_points = code_points[self._sorted_order]
        self._id_for_sorted = self._sorted_order.astype(np.int64)
        self._char_for_id = self.chars  # a list indexes faster than a dict here
        self._table: np.ndarray | None = None  # code point -> id, built when first needed

    def extended_by(self, new_chars: Iterable[str]) -> CharTokenizer:
        """This vocabulary with `new_chars` it lacks appended (in code-point order), ids unchanged."""
        known = set(self.chars)
        added = sorted(set(new_chars) - known)
        return CharTokenizer(self.chars + added, keep_order=True)

    @classmethod
    def fit(cls, text: str) -> CharTokenizer:
        """The vocabulary of every distinct character in `text`."""
        code_points = np.unique(_code_points(text))
        return cls(chr(c) for c in code_points.tolist())

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def ids_or_unknown(self, text: str) -> np.ndarray:
        """The id of every character of `text` (int32), or UNKNOWN_ID for one outside the vocabulary.

        What `eval` and `score` need to leave unknown characters out, or to count them. A
        table indexed by code point (built once) keeps this one gather on long texts.
        """
        code_points = _code_points(text)
        if self._table is None:
            self._table = np.full(int(self._code_points[-1]) + 1, UNKNOWN_ID, dtype=np.int32)
            self._table[self._code_points] = self._id_for_sorted
        table = self._table
        if len(code_points) and int(code_points.max()) < len(table):
            return table[code_points]
        return np.where(code_points < len(table), table[np.minimum(code_points, len(table) - 1)], UNKNOWN_ID)

    def encode(self, text: str) -> np.ndarray:
        ids = self.ids_or_unknown(text)
        if (ids == UNKNOWN_ID).any():
            self.check_encodable(text)
        return ids.astype(token_dtype(self.vocab_size))

    def decode(self, ids: Iterable[int]) -> str:
        chars = self._char_for_id
        return "".join(chars[int(i)] for i in ids)

    def stream_decoder(self) -> StreamDecoder:
        return CharStreamDecoder(self._char_for_id)

    def unencodable(self, text: str) -> list[str]:
        seen = np.unique(_code_points(text))
        missing = seen[~np.isin(seen, self._code_points)]
        return [chr(c) for c in missing.tolist()]

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "chars": "".join(self.chars)}


class ByteTokenizer(Tokenizer):
    """One id per UTF-8 byte: 256 symbols, so any text encodes and no prime is ever refused."""

    kind = "byte"
    _BYTES_FOR_ID = [bytes([value]) for value in range(256)]

    @property
    def vocab_size(self) -> int:
        return 256

    def encode(self, text: str) -> np.ndarray:
        try:
            raw = text.encode("utf-8")
        except UnicodeEncodeError as error:  # only lone surrogates, which no UTF-8 file holds
            raise TokenizerError(f"cannot encode {describe_char(text[error.start])} as UTF-8") from None
        return np.frombuffer(raw, dtype=np.uint8).copy()

    def decode(self, ids: Iterable[int]) -> str:
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")

    def stream_decoder(self) -> StreamDecoder:
        return Utf8StreamDecoder(self._BYTES_FOR_ID)

    def char_counts(self, ids: np.ndarray) -> np.ndarray:
        # A character is counted at its first byte; continuation bytes are 0b10xxxxxx.
        return ((np.asarray(ids) & 0xC0) != 0x80).astype(np.int64)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind}


def _code_points(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)


def tokenizer_from_dict(values: dict[str, Any]) -> Tokenizer:
    """Rebuild a tokeniser from `Tokenizer.to_dict()` output (as stored in a checkpoint)."""
    if not isinstance(values, dict):  # a damaged file's: [] failed with an AttributeError
        raise TokenizerError(f"a tokeniser is stored as an object, not {type(values).__name__}")
    kind = values.get("kind")
    if kind == "char":
        return CharTokenizer(values["chars"], keep_order=True)
    if kind == "byte":
        return ByteTokenizer()
    if kind in SENTENCEPIECE_KINDS:
        return SentencePieceTokenizer.from_dict(values)
    raise TokenizerError(f"unknown tokeniser kind {kind!r}")


def fit_tokenizer(kind: str, train_text: str, full_text: str, vocab_size: int | None = None) -> Tokenizer:
    """Build a tokeniser of `kind` for a corpus.

    Character vocabularies come from the whole corpus (so validation never
    meets an unknown character); learned subword vocabularies only from the
    training part, so validation stays unseen text.
    """
    if kind == "char":
        return CharTokenizer.fit(full_text)
    if kind == "byte":
        return ByteTokenizer()
    if kind in SENTENCEPIECE_KINDS:
        return SentencePieceTokenizer.fit(kind, train_text, vocab_size)
    raise TokenizerError(f"unknown tokeniser kind {kind!r}")
