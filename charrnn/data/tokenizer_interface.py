"""The interface every tokeniser implements, and the helpers all kinds share.

Every tokeniser can encode, decode, decode a stream of ids piece by piece
(`stream_decoder`), say how many characters of the original text each token
stands for (`char_counts`, which is what makes bits per *character* honest
for every kind), and turn itself into a JSON-safe dict for the checkpoint.

The kinds live in `tokenizers` (char, byte, and the factory that picks a kind)
and `subword` (bpe, unigram); both import this module and it imports neither,
so the dependencies run one way.
"""

from __future__ import annotations

import codecs
import unicodedata
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from charrnn.errors import TokenizerError

# A long text is encoded, or checked, this many characters at a time (see `encode_pieces`).
PIECE_CHARS = 1 << 16


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

    def encode_pieces(self, text: str) -> Iterator[np.ndarray]:
        """The ids of `encode(text)`, a piece of the text at a time: a long text (a prime, a line)
        is read through a model without all its ids, or a copy of it, existing at once.

        Cutting between any two characters gives the same ids for one id per character or
        byte; a subword kind cuts where its own `encode` does.
        """
        for start in range(0, len(text), PIECE_CHARS):
            yield self.encode(text[start : start + PIECE_CHARS])

    def check_encodable(self, text: str, what: str = "text") -> None:
        """Raise one clear `TokenizerError` naming the characters that cannot be encoded.

        The text is looked at a piece at a time, so a long one is checked in bounded memory.
        """
        found: set[str] = set()
        for start in range(0, len(text), PIECE_CHARS):
            found.update(self.unencodable(text[start : start + PIECE_CHARS]))
        missing = sorted(found)  # in code point order, as `unencodable` names them
        if missing:
            shown = ", ".join(describe_char(c) for c in missing[:10])
            more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
            raise TokenizerError(f"the {what} has characters the model never saw in training: {shown}{more}")
