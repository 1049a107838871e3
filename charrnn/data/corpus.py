"""Reading a corpus: the files it is made of, its text a chunk at a time, and one scan pass over it.

A corpus is a file, every `*.txt` of a directory (sorted by name, concatenated),
standard input (spooled to a file first, see `token_cache.spool_stream`), or bytes
already in memory (`CorpusBytes`, behind `data.read_corpus`/`data.prepare_corpus`).
Every kind is read the same way, by `iter_corpus_chunks` through the one reader
(`data.reader`): a few MB at a time, UTF-8 checked (a bad byte is reported with
where, offset and line), byte-order marks dropped. `scan_corpus` is the first pass:
fingerprint, length, vocabulary.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from charrnn.data.reader import STDIN, STDIN_NAME, TextSource, iter_blocks, read_failure
from charrnn.errors import CorpusError
from charrnn.events import CorpusProgress

CHUNK_BYTES = 8 << 20  # bytes read per step: memory use is a small multiple of this
MAX_CODE_POINT = 0x10FFFF

ProgressCallback = Callable[[CorpusProgress], None]


def describe_source(source: str) -> str:
    """How messages name a corpus: its path, or "standard input"."""
    return STDIN_NAME if source == STDIN else source


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

    def sources(self) -> Iterator[TextSource]:
        """Each file, in order, as the reader opens it."""
        for path in self.files:
            # Standard input is read from its spooled copy, a temporary file no message should name.
            name = describe_source(self.source) if self.source == STDIN else str(path)
            yield TextSource(name=name, path=path, missing="corpus")


@dataclass
class CorpusBytes:
    """A corpus whose bytes are already in memory; read exactly as a file holding them would be."""

    data: bytes
    name: str
    source: str

    def total_bytes(self) -> int:
        """Size of the bytes (for progress)."""
        return len(self.data)

    def sources(self) -> Iterator[TextSource]:
        """One source: the bytes themselves."""
        yield TextSource(name=describe_source(self.source), stream=io.BytesIO(self.data))


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError as error:
        raise read_failure(str(path), error) from None


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


def iter_corpus_chunks(
    corpus: CorpusFiles | CorpusBytes,
    chunk_bytes: int | None = None,
    on_bytes: Callable[[int], None] = lambda count: None,
) -> Iterator[tuple[str, bytes]]:
    """Yield (text, its UTF-8 bytes) a chunk at a time over all the corpus's files, BOMs dropped.

    A UTF-8 sequence cut by a chunk boundary is carried to the next chunk; invalid
    UTF-8 raises `CorpusError` naming the file, byte offset and line.
    """
    for source in corpus.sources():
        yield from iter_blocks(source, chunk_bytes or CHUNK_BYTES, on_bytes)


def read_corpus_text(corpus: CorpusFiles | CorpusBytes) -> str:
    """The whole text of a (small) corpus, read and checked as `scan_corpus` reads it."""
    text = "".join(text for text, _ in iter_corpus_chunks(corpus))
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
    for text, raw in iter_corpus_chunks(corpus, chunk_bytes, advance):
        digest.update(raw)
        num_chars += len(text)
        num_bytes += len(raw)
        _mark_code_points(seen, text, raw)
    _check_not_empty(corpus, num_chars)
    chars = "".join(chr(c) for c in np.flatnonzero(seen).tolist())
    return CorpusScan(
        corpus=corpus, fingerprint=digest.hexdigest(), num_chars=num_chars, num_bytes=num_bytes, chars=chars
    )
