"""Tokenisers: text <-> integer ids, behind one small interface.

Every tokeniser can encode, decode, decode a stream of ids piece by piece
(`stream_decoder`), say how many characters of the original text each token
stands for (`char_counts`, which is what makes bits per *character* honest
for every kind), and turn itself into a JSON-safe dict for the checkpoint.
"""

from __future__ import annotations

import codecs
import unicodedata
from abc import ABC, abstractmethod
from collections.abc import Iterable
from typing import Any

import numpy as np

from charrnn.config import SENTENCEPIECE_KINDS
from charrnn.errors import TokenizerError


def describe_char(char: str) -> str:
    """Name a character for an error message, e.g. `'€' (U+20AC)`."""
    shown = char if char.isprintable() and not unicodedata.category(char).startswith("Z") else ""
    code = f"U+{ord(char):04X}"
    return f"{shown!r} ({code})" if shown else code


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned integer dtype that holds every id of this vocabulary."""
    if vocab_size <= 2**8:
        return np.dtype(np.uint8)
    if vocab_size <= 2**16:
        return np.dtype(np.uint16)
    return np.dtype(np.uint32)


class StreamDecoder:
    """Turns ids into text one id at a time; `feed` returns the text now complete."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self._tokenizer = tokenizer

    def feed(self, token_id: int) -> str:
        """Text made complete by this id (may be empty while a character is unfinished)."""
        return self._tokenizer.decode([token_id])

    def flush(self) -> str:
        """Whatever is still buffered at the end of the stream."""
        return ""


class CharStreamDecoder(StreamDecoder):
    """One character per id: a list lookup (sampling calls `feed` for every character it writes)."""

    def __init__(self, chars: list[str]) -> None:
        self._chars = chars

    def feed(self, token_id: int) -> str:
        return self._chars[token_id]


class Utf8StreamDecoder(StreamDecoder):
    """Decodes ids that stand for UTF-8 bytes, holding back a character until all its bytes arrived.

    Invalid byte sequences (a model can sample a stray continuation byte)
    become U+FFFD, so what comes out is always whole, valid text.
    """

    def __init__(self, bytes_for_id: list[bytes]) -> None:
        self._bytes_for_id = bytes_for_id
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, token_id: int) -> str:
        return self._decoder.decode(self._bytes_for_id[int(token_id)])

    def flush(self) -> str:
        return self._decoder.decode(b"", final=True)


class Tokenizer(ABC):
    """What training, checkpoints and sampling need from a tokeniser."""

    kind: str = ""

    @property
    @abstractmethod
    def vocab_size(self) -> int:
        """Number of distinct ids."""

    @abstractmethod
    def encode(self, text: str) -> np.ndarray:
        """Ids for `text`, as a 1-D array of `token_dtype(vocab_size)`."""

    @abstractmethod
    def decode(self, ids: Iterable[int]) -> str:
        """Text for a sequence of ids."""

    @abstractmethod
    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe description that `tokenizer_from_dict` turns back into this tokeniser."""

    def stream_decoder(self) -> StreamDecoder:
        """A decoder for sampling, fed one id at a time."""
        return StreamDecoder(self)

    def char_counts(self, ids: np.ndarray) -> np.ndarray:
        """Characters of original text each id stands for (summed for bits per character)."""
        return np.ones(len(ids), dtype=np.int64)

    def unencodable(self, text: str) -> list[str]:
        """Distinct characters of `text` this tokeniser cannot encode (none for most kinds)."""
        return []

    def check_encodable(self, text: str, what: str = "text") -> None:
        """Raise one clear `TokenizerError` naming the characters that cannot be encoded."""
        missing = self.unencodable(text)
        if missing:
            shown = ", ".join(describe_char(c) for c in missing[:10])
            more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
            raise TokenizerError(f"the {what} has characters the model never saw in training: {shown}{more}")


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
    kind = values.get("kind")
    if kind == "char":
        return CharTokenizer(values["chars"], keep_order=True)
    if kind == "byte":
        return ByteTokenizer()
    if kind in SENTENCEPIECE_KINDS:
        from charrnn.data.subword import SentencePieceTokenizer

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
        from charrnn.data.subword import SentencePieceTokenizer

        return SentencePieceTokenizer.fit(kind, train_text, vocab_size)
    raise TokenizerError(f"unknown tokeniser kind {kind!r}")
