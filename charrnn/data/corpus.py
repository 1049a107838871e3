"""Reading a corpus: the files it is made of, its text a chunk at a time, and one scan pass over it.

A corpus is a file, every `*.txt` of a directory (sorted by name, concatenated),
standard input (spooled to a file first, see `token_cache.spool_stream`), or bytes
already in memory (`CorpusBytes`, behind `data.read_corpus`/`data.prepare_corpus`).
Every kind is read the same way, by `iter_text_chunks`: a few MB at a time,
UTF-8 checked (a bad byte is reported with where, offset and line), byte-order
marks dropped. `scan_corpus` is the first pass: fingerprint, length, vocabulary.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from charrnn.errors import CorpusError
from charrnn.events import CorpusProgress

CHUNK_BYTES = 8 << 20  # bytes read per step: memory use is a small multiple of this
UTF8_BOM = b"\xef\xbb\xbf"
MAX_CODE_POINT = 0x10FFFF

ProgressCallback = Callable[[CorpusProgress], None]


def describe_utf8_error(
    where: str, data: bytes, error: UnicodeDecodeError, offset: int = 0, lines_before: int = 0
) -> str:
    """`<where> is not valid UTF-8: byte 0x.. at offset N (line L)`, for a chunk that starts at `offset`."""
    line = lines_before + data.count(b"\n", 0, error.start) + 1
    bad = data[error.start : error.start + 1].hex()
    return f"{where} is not valid UTF-8: byte 0x{bad} at offset {offset + error.start} (line {line})"


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


def describe_source(source: str) -> str:
    """How messages name a corpus: its path, or "standard input"."""
    return "standard input" if source == "-" else source


# -- what a corpus is read from ----------------------------------------------------------------


@dataclass
class CorpusFiles:
    """The file(s) a corpus is read from, in order, and the names it goes by."""

    files: list[Path]
    name: str  # a short name for the default run directory
    source: str  # the path as given, or "-" for stdin

    def total_bytes(self) -> int:
        """Size of all files together (for progress)."""
        return sum(_file_size(path) for path in self.files)

    def parts(self) -> Iterator[tuple[str, Callable[[], BinaryIO]]]:
        """(name for messages, opener) of each part, in order."""
        for path in self.files:
            yield str(path), (lambda path=path: open_corpus_file(path))


@dataclass
class CorpusBytes:
    """A corpus whose bytes are already in memory; read exactly as a file holding them would be."""

    data: bytes
    name: str
    source: str

    def total_bytes(self) -> int:
        """Size of the bytes (for progress)."""
        return len(self.data)

    def parts(self) -> Iterator[tuple[str, Callable[[], BinaryIO]]]:
        """One part: the bytes themselves."""
        yield describe_source(self.source), (lambda: io.BytesIO(self.data))


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError as error:
        raise CorpusError(f"cannot read {path}: {error.strerror or error}") from None


def corpus_files(source: str) -> CorpusFiles:
    """The files of a corpus path: a file, or every `*.txt` in a directory (sorted)."""
    path = Path(source)
    if path.is_dir():
        files = sorted(p for p in path.glob("*.txt") if p.is_file())
        if not files:
            raise CorpusError(f"no .txt files in directory {path}")
        return CorpusFiles(files=files, name=path.resolve().name or "corpus", source=source)
    if not path.exists():
        raise CorpusError(f"corpus not found: {path}")
    return CorpusFiles(files=[path], name=path.stem or "corpus", source=source)


# -- text a chunk at a time --------------------------------------------------------------------


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


def iter_text_chunks(
    corpus: CorpusFiles | CorpusBytes,
    chunk_bytes: int | None = None,
    on_bytes: Callable[[int], None] = lambda count: None,
) -> Iterator[tuple[str, bytes]]:
    """Yield (text, its UTF-8 bytes) a chunk at a time over all parts, BOMs dropped.

    A UTF-8 sequence cut by a chunk boundary is carried to the next chunk; invalid
    UTF-8 raises `CorpusError` naming the file, byte offset and line.
    """
    chunk_bytes = chunk_bytes or CHUNK_BYTES
    for where, opener in corpus.parts():
        with opener() as handle:
            decoder = Utf8Decoder(where)
            while True:
                try:
                    block = handle.read(chunk_bytes)
                except OSError as error:
                    raise CorpusError(f"cannot read {where}: {error.strerror or error}") from None
                on_bytes(len(block))
                text, raw = decoder.feed(block)
                if raw:
                    yield text, raw
                if not block:
                    break


def read_text(corpus: CorpusFiles | CorpusBytes) -> str:
    """The whole text of a (small) corpus, read and checked as `scan_corpus` reads it."""
    text = "".join(text for text, _ in iter_text_chunks(corpus))
    _check_not_empty(corpus, len(text))
    return text


def _check_not_empty(corpus: CorpusFiles | CorpusBytes, num_chars: int) -> None:
    if num_chars == 0:
        where = "on standard input" if corpus.source == "-" else corpus.source
        raise CorpusError(f"the corpus {where} is empty")


# -- pass 1: fingerprint, length and character vocabulary -------------------------------------


@dataclass
class CorpusScan:
    """What one streaming pass learns about a corpus without keeping its text."""

    corpus: CorpusFiles | CorpusBytes
    fingerprint: str  # sha256 of the text as UTF-8 (BOMs dropped): as `data.Corpus.fingerprint`
    num_chars: int
    num_bytes: int
    chars: str  # every distinct character, in code-point order


VOCABULARY_SLICE = 1 << 20  # bincount copies its input to int64: count a slice at a time


def _mark_code_points(seen: np.ndarray, text: str, raw: bytes) -> None:
    if text.isascii():
        values = np.frombuffer(raw, dtype=np.uint8)
    else:
        values = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    for start in range(0, len(values), VOCABULARY_SLICE):
        counts = np.bincount(values[start : start + VOCABULARY_SLICE])
        seen[: len(counts)] |= counts > 0


def scan_corpus(
    corpus: CorpusFiles | CorpusBytes,
    on_progress: ProgressCallback | None = None,
    chunk_bytes: int | None = None,
) -> CorpusScan:
    """Read the corpus once: validate UTF-8, hash it, count characters, find the vocabulary."""
    total = corpus.total_bytes()
    done = 0

    def advance(count: int) -> None:
        nonlocal done
        done += count
        if on_progress is not None:
            on_progress(CorpusProgress(phase="reading", done_bytes=done, total_bytes=total))

    digest = hashlib.sha256()
    seen = np.zeros(MAX_CODE_POINT + 1, dtype=bool)
    num_chars = num_bytes = 0
    for text, raw in iter_text_chunks(corpus, chunk_bytes, advance):
        digest.update(raw)
        num_chars += len(text)
        num_bytes += len(raw)
        _mark_code_points(seen, text, raw)
    _check_not_empty(corpus, num_chars)
    chars = "".join(chr(c) for c in np.flatnonzero(seen).tolist())
    return CorpusScan(
        corpus=corpus, fingerprint=digest.hexdigest(), num_chars=num_chars, num_bytes=num_bytes, chars=chars
    )
