"""The one reader of a user's text: a file or standard input, opened, checked as UTF-8, decoded.

Every command that reads text (`train`'s corpus, `eval`, `score`, `explain`, `sample --prime -`
and `--each-line`) goes through here, so they all say the same thing about the same fault:

- opening: a missing file, a directory, a file we may not read, or any other OS error is one
  `CorpusError` line (`open_bytes`, `read_failure`);
- decoding: `Utf8Decoder` reads any number of blocks or lines, drops a byte-order mark at the
  start, carries a character cut by a block boundary to the next block, and names the file,
  the byte offset and the line of the first invalid byte.

Text is read in bounded memory: a block of bytes at a time (`iter_blocks`, `iter_text_chunks`)
or a line at a time (`iter_lines`).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from charrnn.errors import CorpusError, UsageProblem

READ_BYTES = 1 << 20  # bytes read per step: memory use is a small multiple of this
STDIN = "-"
STDIN_NAME = "standard input"
UTF8_BOM = b"\xef\xbb\xbf"


# -- opening -----------------------------------------------------------------------------------


def read_failure(name: str, error: OSError) -> CorpusError:
    """The one line for an OS error while reading `name` (opened, or being read)."""
    return CorpusError(f"cannot read {name}: {error.strerror or error}")


def open_bytes(path: Path, missing: str = "file") -> BinaryIO:
    """Open a user's file for reading bytes, or raise one `CorpusError` line.

    `missing` is what the message calls a file that is not there ("file not found: x.txt",
    "corpus not found: x.txt").
    """
    if path.is_dir():
        raise CorpusError(f"{path} is a directory, not a text file")
    try:
        return open(path, "rb")
    except FileNotFoundError:
        raise CorpusError(f"{missing} not found: {path}") from None
    except IsADirectoryError:  # it became one since the check
        raise CorpusError(f"{path} is a directory, not a text file") from None
    except PermissionError:
        raise CorpusError(f"cannot read {path}: permission denied") from None
    except OSError as error:
        raise read_failure(str(path), error) from None


@dataclass
class TextSource:
    """Where text comes from: a path, `-` (standard input) or an open binary stream."""

    name: str  # shown in messages: the path, or "standard input"
    path: Path | None = None
    stream: BinaryIO | None = None
    missing: str = "file"  # what a message calls the file when it is not there

    @classmethod
    def of(cls, given: str | os.PathLike[str], missing: str = "file") -> TextSource:
        """A source for a path as the user gave it, or `-` for standard input."""
        if str(given) == STDIN:
            return cls(name=STDIN_NAME, stream=sys.stdin.buffer)
        if str(given) == "":  # Path("") is the current folder, which the user did not name
            raise UsageProblem(f'the {missing} is an empty name (""): give a path, or - for standard input')
        return cls(name=str(given), path=Path(given), missing=missing)

    def open(self) -> BinaryIO:
        """The bytes, or one clear `CorpusError` (missing, a directory, unreadable)."""
        if self.stream is not None:
            return self.stream
        assert self.path is not None
        return open_bytes(self.path, self.missing)

    def close(self, handle: BinaryIO) -> None:
        """Close what `open` opened (a stream given to the source stays open: its owner closes it)."""
        if self.stream is None:
            handle.close()


# -- decoding ----------------------------------------------------------------------------------


def describe_utf8_error(
    where: str, data: bytes, error: UnicodeDecodeError, offset: int = 0, lines_before: int = 0
) -> str:
    """`<where> is not valid UTF-8: byte 0x.. at offset N (line L)`, for a chunk that starts at `offset`."""
    line = lines_before + data.count(b"\n", 0, error.start) + 1
    bad = data[error.start : error.start + 1].hex()
    return f"{where} is not valid UTF-8: byte 0x{bad} at offset {offset + error.start} (line {line})"


def complete_utf8_length(data: bytes) -> int:
    """Length of the prefix of `data` that does not end inside a UTF-8 sequence."""
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if byte & 0xC0 == 0x80:
            continue  # a continuation byte: the sequence started earlier
        if byte < 0x80:
            needed = 1
        elif byte >> 5 == 0b110:
            needed = 2
        elif byte >> 4 == 0b1110:
            needed = 3
        elif byte >> 3 == 0b11110:
            needed = 4
        else:
            needed = 1  # not a valid lead byte: let the decoder report it
        return len(data) - back if needed > back else len(data)
    return len(data)


class Utf8Decoder:
    """Decodes the bytes of one file (or stream) block by block, as every charrnn reader does.

    A byte-order mark at the start is dropped; a character cut by a block boundary is carried
    to the next block; invalid UTF-8 raises `CorpusError` naming `where`, the byte offset in the
    file and the line.
    """

    def __init__(self, where: str) -> None:
        self.where = where
        self.offset = 0  # offset in the file of the next byte to decode
        self.lines_before = 0  # newlines before it
        self.at_start = True
        self.pending = b""  # the start of a character cut by the last block

    def feed(self, block: bytes) -> tuple[str, bytes]:
        """(text, its UTF-8 bytes) of the complete characters so far; `b""` marks the end of the file
        (a character still unfinished there is reported)."""
        at_end = not block
        data = self.pending + block if self.pending else block
        if self.at_start and not at_end and len(data) < len(UTF8_BOM) and UTF8_BOM.startswith(data):
            self.pending = data  # too short yet to tell whether a BOM starts the file
            return "", b""
        data = self._drop_bom(data)
        cut = len(data) if at_end else complete_utf8_length(data)
        complete, self.pending = data[:cut], data[cut:]
        return self._decode(complete), complete

    def decode(self, data: bytes) -> str:
        """The text of the next bytes, which end on a character boundary (a whole line, say)."""
        return self._decode(self._drop_bom(data))

    def _drop_bom(self, data: bytes) -> bytes:
        if self.at_start:
            self.at_start = False
            if data.startswith(UTF8_BOM):
                data, self.offset = data[len(UTF8_BOM) :], self.offset + len(UTF8_BOM)
        return data

    def _decode(self, data: bytes) -> str:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as error:
            raise CorpusError(
                describe_utf8_error(self.where, data, error, self.offset, self.lines_before)
            ) from None
        self.offset += len(data)
        self.lines_before += data.count(b"\n")
        return text


# -- reading -----------------------------------------------------------------------------------


def iter_blocks(
    source: TextSource,
    chunk_bytes: int = READ_BYTES,
    on_bytes: Callable[[int], None] = lambda count: None,
) -> Iterator[tuple[str, bytes]]:
    """(text, its UTF-8 bytes) of `source`, a block of about `chunk_bytes` at a time, never cut
    inside a character; `on_bytes` hears how many bytes each read took (for progress)."""
    handle = source.open()
    decoder = Utf8Decoder(source.name)
    try:
        while True:
            try:
                block = handle.read(chunk_bytes)
            except OSError as error:
                raise read_failure(source.name, error) from None
            on_bytes(len(block))
            text, raw = decoder.feed(block)
            if raw:
                yield text, raw
            if not block:
                return
    finally:
        source.close(handle)


def iter_text_chunks(source: TextSource, chunk_bytes: int = READ_BYTES) -> Iterator[str]:
    """The text of `source`, a chunk of about `chunk_bytes` at a time (never cut inside a character)."""
    for text, _ in iter_blocks(source, chunk_bytes):
        yield text


def iter_lines(source: TextSource) -> Iterator[str]:
    """The lines of `source` without their line ends, one at a time (a line is held whole)."""
    handle = source.open()
    decoder = Utf8Decoder(source.name)
    try:
        while True:
            try:
                raw = handle.readline()
            except OSError as error:
                raise read_failure(source.name, error) from None
            if not raw:
                return
            line = decoder.decode(raw)
            yield line[:-1] if line.endswith("\n") else line
    finally:
        source.close(handle)


def read_all_text(source: TextSource) -> str:
    """The whole text of `source` (for a text small enough to hold: a prime)."""
    return "".join(iter_text_chunks(source))
