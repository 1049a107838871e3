"""Text to evaluate or score, read in bounded memory: a file or standard input, chunk by chunk or line by line.

Every reader checks the UTF-8 as it goes and names the file, byte offset and line of the
first invalid byte; a byte-order mark at the start is dropped (as the corpus readers do).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator, Union

from .corpus import UTF8_BOM, complete_utf8_length, describe_utf8_error
from .errors import CorpusError

READ_BYTES = 1 << 20          # bytes read per step: memory use is a small multiple of this
STDIN = "-"


@dataclass
class TextSource:
    """Where text comes from: a path, `-` (standard input) or an open binary stream."""

    name: str                            # shown in messages: the path, or "standard input"
    path: Union[Path, None] = None
    stream: Union[BinaryIO, None] = None

    @classmethod
    def of(cls, given: Union[str, Path]) -> "TextSource":
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


class _Utf8Checker:
    """Decodes consecutive blocks of one source, keeping the offset and line for error messages."""

    def __init__(self, source: TextSource) -> None:
        self.source = source
        self.offset = 0
        self.lines_before = 0
        self.first = True

    def decode(self, data: bytes) -> str:
        if self.first:
            self.first = False
            if data.startswith(UTF8_BOM):
                data, self.offset = data[len(UTF8_BOM):], len(UTF8_BOM)
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as error:
            raise CorpusError(describe_utf8_error(self.source.name, data, error, self.offset,
                                                  self.lines_before)) from None
        self.offset += len(data)
        self.lines_before += data.count(b"\n")
        return text


def _read(handle: BinaryIO, source: TextSource, size: int) -> bytes:
    try:
        return handle.read(size)
    except OSError as error:
        raise CorpusError(f"cannot read {source.name}: {error.strerror or error}") from None


def iter_text_chunks(source: TextSource, chunk_bytes: int = READ_BYTES) -> Iterator[str]:
    """The text of `source`, a chunk of about `chunk_bytes` at a time (never cut inside a character)."""
    handle = source.open()
    checker = _Utf8Checker(source)
    pending = b""
    try:
        while True:
            block = _read(handle, source, chunk_bytes)
            data = pending + block if pending else block
            if not block:
                if data:
                    yield checker.decode(data)   # an unfinished character at the end: reported here
                return
            if checker.first and len(data) < len(UTF8_BOM) and UTF8_BOM.startswith(data):
                pending = data                   # too short yet to tell whether a BOM starts it
                continue
            cut = complete_utf8_length(data)
            pending = data[cut:]
            if cut:
                yield checker.decode(data[:cut])
    finally:
        if source.stream is None:
            handle.close()


def iter_lines(source: TextSource) -> Iterator[str]:
    """The lines of `source` without their line ends, one at a time (a line is held whole)."""
    handle = source.open()
    checker = _Utf8Checker(source)
    try:
        while True:
            try:
                raw = handle.readline()
            except OSError as error:
                raise CorpusError(f"cannot read {source.name}: {error.strerror or error}") from None
            if not raw:
                return
            line = checker.decode(raw)
            yield line[:-1] if line.endswith("\n") else line
    finally:
        if source.stream is None:
            handle.close()
