"""Text to evaluate or score, read in bounded memory: a file or standard input, chunk by chunk or line by line.

Every reader checks the UTF-8 as it goes and names the file, byte offset and line of the
first invalid byte; a byte-order mark at the start is dropped (as the corpus readers do).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from charrnn.data.corpus import Utf8Decoder
from charrnn.errors import CorpusError

READ_BYTES = 1 << 20  # bytes read per step: memory use is a small multiple of this
STDIN = "-"


@dataclass
class TextSource:
    """Where text comes from: a path, `-` (standard input) or an open binary stream."""

    name: str  # shown in messages: the path, or "standard input"
    path: Path | None = None
    stream: BinaryIO | None = None

    @classmethod
    def of(cls, given: str | Path) -> TextSource:
        """A source for a path as the user gave it, or `-` for standard input."""
        if str(given) == STDIN:
            return cls(name="standard input", stream=sys.stdin.buffer)
        return cls(name=str(given), path=Path(given))

    def open(self) -> BinaryIO:
        """The bytes, or one clear `CorpusError` (missing, a directory, unreadable)."""
        if self.stream is not None:
            return self.stream
        assert self.path is not None
        if self.path.is_dir():
            raise CorpusError(f"{self.path} is a directory, not a text file")
        try:
            return open(self.path, "rb")
        except FileNotFoundError:
            raise CorpusError(f"file not found: {self.path}") from None
        except PermissionError:
            raise CorpusError(f"cannot read {self.path}: permission denied") from None
        except OSError as error:
            raise CorpusError(f"cannot read {self.path}: {error.strerror or error}") from None


def _read(handle: BinaryIO, source: TextSource, size: int) -> bytes:
    try:
        return handle.read(size)
    except OSError as error:
        raise CorpusError(f"cannot read {source.name}: {error.strerror or error}") from None


def iter_text_chunks(source: TextSource, chunk_bytes: int = READ_BYTES) -> Iterator[str]:
    """The text of `source`, a chunk of about `chunk_bytes` at a time (never cut inside a character)."""
    handle = source.open()
    decoder = Utf8Decoder(source.name)
    try:
        while True:
            block = _read(handle, source, chunk_bytes)
            text, raw = decoder.feed(block)
            if raw:
                yield text
            if not block:
                return
    finally:
        if source.stream is None:
            handle.close()


def iter_lines(source: TextSource) -> Iterator[str]:
    """The lines of `source` without their line ends, one at a time (a line is held whole)."""
    handle = source.open()
    decoder = Utf8Decoder(source.name)
    try:
        while True:
            try:
                raw = handle.readline()
            except OSError as error:
                raise CorpusError(f"cannot read {source.name}: {error.strerror or error}") from None
            if not raw:
                return
            line = decoder.decode(raw)
            yield line[:-1] if line.endswith("\n") else line
    finally:
        if source.stream is None:
            handle.close()
