"""Corpora of any size in bounded memory: stream the text, cache it as a token file, memory-map it.

Preparing a corpus takes two streaming passes over the file(s), a few MB at a time:

1. `scan_corpus`: check the UTF-8, hash the text (the corpus fingerprint),
   count its characters and find its character vocabulary.
2. `prepare_streamed_corpus`: encode the text chunk by chunk into a flat file
   of token ids (uint8 / uint16 / uint32, the smallest that holds the
   vocabulary), written atomically into a cache folder beside a small JSON
   sidecar. The cache key is sha256(text) + the tokeniser's description, never
   file times: changing the corpus (or the tokeniser) makes a new entry, and
   the same corpus with the same tokeniser reuses the file without encoding.

Training then reads windows from a read-only `np.memmap` of that file, so its
resident memory does not grow with the corpus (beyond the page cache).

The whole corpus is encoded as one file and split afterwards, at the token
where the first `1 - val_fraction` of the characters end: the same rule as
`data.prepare_corpus` (the in-memory path), so both give the same arrays for
the char and byte tokenisers. Subword tokenisers are encoded chunk by chunk
(cut at line ends) and fitted on a bounded sample of the training part; their
split falls on the nearest token boundary.
"""

from __future__ import annotations

import errno
import hashlib
import json
import mmap
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Iterator, Optional

import numpy as np

from .atomic import atomic_write_bytes, temp_path_for
from .data import (COUNT_CHUNK_TOKENS, PreparedCorpus, describe_utf8_error, open_corpus_file,
                   split_corpus)
from .errors import CharrnnError, CorpusError
from .events import CorpusProgress
from .tokenizers import CharTokenizer, Tokenizer, fit_tokenizer, token_dtype

CHUNK_BYTES = 8 << 20                  # bytes read per step: memory use is a small multiple of this
SUBWORD_SAMPLE_CHARS = 16_000_000      # training text handed to a subword tokeniser's trainer
CACHE_FORMAT = 1
UTF8_BOM = b"\xef\xbb\xbf"
MAX_CODE_POINT = 0x10FFFF

ProgressCallback = Callable[[CorpusProgress], None]


def default_cache_dir() -> Path:
    """Where token files live: $CHARRNN_CACHE_DIR, else $XDG_CACHE_HOME/charrnn, else ~/.cache/charrnn."""
    explicit = os.environ.get("CHARRNN_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "charrnn"


# -- the files of a corpus ------------------------------------------------------------------


@dataclass
class CorpusFiles:
    """The file(s) a corpus is read from, in order, and the names it goes by."""

    files: list[Path]
    name: str          # a short name for the default run directory
    source: str        # the path as given, or "-" for stdin

    def total_bytes(self) -> int:
        """Size of all files together (for progress)."""
        return sum(_file_size(path) for path in self.files)


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


def spool_stream(stream: BinaryIO, folder: Path) -> Path:
    """Copy a byte stream (stdin) to a temporary file in `folder`, a chunk at a time; return its path.

    Spooling lets stdin take the same streaming path as a file; the caller deletes the file.
    """
    folder.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=".stdin-", suffix=".txt", dir=folder)
    try:
        with os.fdopen(handle, "wb") as out:
            shutil.copyfileobj(stream, out, CHUNK_BYTES)
    except OSError as error:
        Path(name).unlink(missing_ok=True)
        raise CorpusError(f"cannot store standard input in {folder}: {error.strerror or error}") from None
    return Path(name)


def _complete_length(data: bytes) -> int:
    """Length of the prefix of `data` that does not end inside a UTF-8 sequence."""
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if byte & 0xC0 == 0x80:
            continue                      # a continuation byte: the sequence started earlier
        if byte < 0x80:
            needed = 1
        elif byte >> 5 == 0b110:
            needed = 2
        elif byte >> 4 == 0b1110:
            needed = 3
        elif byte >> 3 == 0b11110:
            needed = 4
        else:
            needed = 1                    # not a valid lead byte: let the decoder report it
        return len(data) - back if needed > back else len(data)
    return len(data)


def iter_text_chunks(corpus: CorpusFiles, chunk_bytes: int = CHUNK_BYTES,
                     on_bytes: Callable[[int], None] = lambda count: None) -> Iterator[tuple[str, bytes]]:
    """Yield (text, its UTF-8 bytes) a chunk at a time over all files, BOMs dropped.

    A UTF-8 sequence cut by a chunk boundary is carried to the next chunk; invalid
    UTF-8 raises `CorpusError` naming the file, byte offset and line.
    """
    for path in corpus.files:
        with open_corpus_file(path) as handle:
            pending = b""
            offset = 0          # file offset of pending[0]
            lines_before = 0    # newlines before pending[0]
            first = True
            while True:
                try:
                    block = handle.read(chunk_bytes)
                except OSError as error:
                    raise CorpusError(f"cannot read {path}: {error.strerror or error}") from None
                on_bytes(len(block))
                data = pending + block if pending else block
                at_end = not block
                if first:
                    if not at_end and len(data) < len(UTF8_BOM) and UTF8_BOM.startswith(data):
                        pending = data      # too short yet to tell whether a BOM starts the file
                        continue
                    if data.startswith(UTF8_BOM):
                        data, offset = data[len(UTF8_BOM):], offset + len(UTF8_BOM)
                    first = False
                cut = len(data) if at_end else _complete_length(data)
                complete, pending = data[:cut], data[cut:]
                if complete:
                    try:
                        text = complete.decode("utf-8")
                    except UnicodeDecodeError as error:
                        raise CorpusError(describe_utf8_error(str(path), complete, error, offset,
                                                              lines_before)) from None
                    yield text, complete
                    lines_before += complete.count(b"\n")
                    offset += len(complete)
                if at_end:
                    break


# -- pass 1: fingerprint, length and character vocabulary -------------------------------------


@dataclass
class CorpusScan:
    """What one streaming pass learns about a corpus without keeping its text."""

    corpus: CorpusFiles
    fingerprint: str       # sha256 of the text as UTF-8 (BOMs dropped): as `data.Corpus.fingerprint`
    num_chars: int
    num_bytes: int
    chars: str             # every distinct character, in code-point order


VOCABULARY_SLICE = 1 << 20   # bincount copies its input to int64: count a slice at a time


def _mark_code_points(seen: np.ndarray, text: str, raw: bytes) -> None:
    if text.isascii():
        values = np.frombuffer(raw, dtype=np.uint8)
    else:
        values = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    for start in range(0, len(values), VOCABULARY_SLICE):
        counts = np.bincount(values[start:start + VOCABULARY_SLICE])
        seen[:len(counts)] |= counts > 0


def scan_corpus(corpus: CorpusFiles, on_progress: Optional[ProgressCallback] = None,
                chunk_bytes: int = CHUNK_BYTES) -> CorpusScan:
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
    if num_chars == 0:
        where = "on standard input" if corpus.source == "-" else corpus.source
        raise CorpusError(f"the corpus {where} is empty")
    chars = "".join(chr(c) for c in np.flatnonzero(seen).tolist())
    return CorpusScan(corpus=corpus, fingerprint=digest.hexdigest(), num_chars=num_chars,
                      num_bytes=num_bytes, chars=chars)


def split_char_index(num_chars: int, val_fraction: float) -> int:
    """Characters in the training part: the rule `data.prepare_corpus` uses too."""
    return int(num_chars * (1.0 - val_fraction))


# -- the tokeniser -----------------------------------------------------------------------------


def _training_sample(scan: CorpusScan, train_chars: int, limit: int) -> str:
    """Up to `limit` characters from the start of the training part (bounded memory)."""
    parts, kept = [], 0
    wanted = min(train_chars, limit)
    for text, _ in iter_text_chunks(scan.corpus):
        parts.append(text[:wanted - kept])
        kept += len(parts[-1])
        if kept >= wanted:
            break
    return "".join(parts)


def fit_streamed_tokenizer(scan: CorpusScan, kind: str, val_fraction: float,
                           vocab_size: Optional[int] = None) -> Tokenizer:
    """The tokeniser for a scanned corpus, without holding the corpus in memory.

    char: the scanned vocabulary (the whole corpus, as in memory). Other kinds go
    through `fit_tokenizer` with a bounded sample of the training part (the byte
    tokeniser ignores it; subword trainers need some text, not all of it).
    """
    if kind == "char":
        return CharTokenizer(scan.chars)
    if kind == "byte":
        return fit_tokenizer(kind, "", "", vocab_size)     # fixed 256 ids: nothing to learn
    train_chars = split_char_index(scan.num_chars, val_fraction)
    sample = _training_sample(scan, train_chars, SUBWORD_SAMPLE_CHARS)
    return fit_tokenizer(kind, sample, sample, vocab_size)


# -- pass 2: the token file ------------------------------------------------------------------


def cache_key(fingerprint: str, tokenizer: Tokenizer) -> str:
    """The cache entry's name: content hash + tokeniser description + file format."""
    description = json.dumps(tokenizer.to_dict(), sort_keys=True, ensure_ascii=False)
    key = hashlib.sha256(f"{CACHE_FORMAT}\n{fingerprint}\n{description}".encode("utf-8", "surrogatepass"))
    return key.hexdigest()[:32]


@dataclass
class TokenFile:
    """A token file in the cache and what its sidecar says about it."""

    path: Path
    dtype: np.dtype
    num_tokens: int

    @property
    def sidecar(self) -> Path:
        return self.path.with_suffix(".json")

    def open(self) -> np.ndarray:
        """The tokens as a read-only memory map.

        Training reads a few hundred bytes from each of B places per step. The kernel's
        read-ahead would map up to megabytes around each place into this process;
        MADV_RANDOM asks for the pages read only. (Kernels that keep the page cache
        in large folios still map a whole folio, up to 2 MB, per place: at most
        B x 2 MB, whatever the corpus size.) Mapped file pages are page cache: clean,
        shared and reclaimable, unlike the process's own (anonymous) memory.
        """
        tokens = np.memmap(self.path, dtype=self.dtype, mode="r", shape=(self.num_tokens,))
        mapping = getattr(tokens, "_mmap", None)   # numpy keeps the mmap object here
        if mapping is not None and hasattr(mmap, "MADV_RANDOM"):
            try:
                mapping.madvise(mmap.MADV_RANDOM)
            except OSError:
                pass                                # only advice: correctness does not depend on it
        return tokens


def _read_sidecar(path: Path, fingerprint: str, tokenizer: Tokenizer) -> Optional[TokenFile]:
    """The cached entry at `path` if it is complete and matches; None otherwise (re-encode)."""
    sidecar = path.with_suffix(".json")
    try:
        info = json.loads(sidecar.read_text(encoding="utf-8"))
        dtype = np.dtype(info["dtype"])
        num_tokens = int(info["num_tokens"])
        if (info.get("format") != CACHE_FORMAT or info.get("fingerprint") != fingerprint
                or info.get("tokenizer") != tokenizer.to_dict()
                or dtype != token_dtype(tokenizer.vocab_size)
                or path.stat().st_size != num_tokens * dtype.itemsize):
            return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return TokenFile(path=path, dtype=dtype, num_tokens=num_tokens)


def _chunks_cut_at_lines(chunks: Iterator[tuple[str, bytes]]) -> Iterator[str]:
    # Subword encoders see a line whole where possible, as they would in memory.
    carry = ""
    for text, _ in chunks:
        text = carry + text
        cut = text.rfind("\n") + 1
        if cut == 0:
            carry = ""
            yield text
        else:
            carry = text[cut:]
            yield text[:cut]
    if carry:
        yield carry


def _char_ids(tokenizer: CharTokenizer, chunks: Iterator[tuple[str, bytes]],
              dtype: np.dtype) -> Iterator[np.ndarray]:
    """`tokenizer.encode` of each chunk through a code point -> id table (several times faster).

    Every character is in the vocabulary: it came from the same scan, or was checked.
    """
    code_points = np.array([ord(c) for c in tokenizer.chars], dtype=np.int64)
    table = np.zeros(int(code_points.max()) + 1, dtype=dtype)
    table[code_points] = np.arange(len(code_points), dtype=dtype)
    ascii_table = np.zeros(128, dtype=dtype)
    ascii_table[:min(128, len(table))] = table[:128]
    for text, raw in chunks:
        if text.isascii():
            yield ascii_table[np.frombuffer(raw, dtype=np.uint8)]
        else:
            yield table[np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)]


def _encode_to_file(scan: CorpusScan, tokenizer: Tokenizer, path: Path,
                    on_progress: Optional[ProgressCallback]) -> TokenFile:
    """Encode the corpus chunk by chunk into `path` (temp file + fsync + rename); then the sidecar."""
    dtype = token_dtype(tokenizer.vocab_size)
    total, done = scan.num_bytes, 0

    def advance(count: int) -> None:
        nonlocal done
        done += count
        if on_progress is not None:
            on_progress(CorpusProgress(phase="encoding", done_bytes=min(done, total), total_bytes=total))

    chunks = iter_text_chunks(scan.corpus, CHUNK_BYTES, advance)
    if isinstance(tokenizer, CharTokenizer):
        encoded = _char_ids(tokenizer, chunks, dtype)
    else:
        texts = (text for text, _ in chunks) if tokenizer.kind == "byte" else _chunks_cut_at_lines(chunks)
        encoded = (np.asarray(tokenizer.encode(text)).astype(dtype, copy=False) for text in texts)
    temp = temp_path_for(path)
    num_tokens = 0
    try:
        with open(temp, "wb") as out:
            for ids in encoded:
                out.write(ids.tobytes())
                num_tokens += len(ids)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, path)
    except OSError as error:
        temp.unlink(missing_ok=True)
        if error.errno == errno.ENOSPC:
            raise CharrnnError(f"disk full while writing the token cache {path}") from None
        raise CharrnnError(f"cannot write the token cache {path}: {error.strerror or error}") from None
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    info = {"format": CACHE_FORMAT, "fingerprint": scan.fingerprint, "tokenizer": tokenizer.to_dict(),
            "dtype": dtype.name, "num_tokens": num_tokens, "num_chars": scan.num_chars,
            "source": scan.corpus.source}
    # The sidecar goes last: it is what marks the entry complete.
    atomic_write_bytes(path.with_suffix(".json"), json.dumps(info, ensure_ascii=False).encode("utf-8"))
    return TokenFile(path=path, dtype=dtype, num_tokens=num_tokens)


class _CacheLock:
    """An exclusive flock on one cache entry, so processes on one machine encode it once."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._handle = None

    def __enter__(self) -> "_CacheLock":
        import fcntl  # POSIX only

        self._handle = open(self.path, "a+")
        fcntl.flock(self._handle.fileno(), fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc) -> None:
        if self._handle is not None:
            self._handle.close()


def cached_token_file(scan: CorpusScan, tokenizer: Tokenizer, cache_dir: Optional[Path] = None,
                      on_progress: Optional[ProgressCallback] = None) -> tuple[TokenFile, bool]:
    """The token file of this corpus and tokeniser: reused when cached, else encoded. Returns (file, reused)."""
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise CharrnnError(f"cannot create the token cache folder {folder}: {error.strerror or error}") from None
    safe_name = "".join(c if c.isalnum() or c in "-_." else "_" for c in scan.corpus.name)[:40]
    path = folder / f"{safe_name}-{cache_key(scan.fingerprint, tokenizer)}.tokens"
    with _CacheLock(path.with_suffix(".lock")):
        cached = _read_sidecar(path, scan.fingerprint, tokenizer)
        if cached is not None:
            return cached, True
        return _encode_to_file(scan, tokenizer, path, on_progress), False


# -- the split and the prepared corpus -------------------------------------------------------


def token_index_at_char(tokenizer: Tokenizer, tokens: np.ndarray, char_index: int) -> int:
    """Number of leading tokens that stand for the first `char_index` characters.

    For char ids this is `char_index`; for other kinds it walks `char_counts`
    (a token is counted where its first character starts).
    """
    if tokenizer.kind == "char":
        return char_index
    before = 0
    for start in range(0, len(tokens), COUNT_CHUNK_TOKENS):
        counts = tokenizer.char_counts(np.asarray(tokens[start:start + COUNT_CHUNK_TOKENS]))
        ends = np.cumsum(counts) + before
        if len(ends) and ends[-1] > char_index:
            return start + int(np.searchsorted(ends, char_index, side="right"))
        before = int(ends[-1]) if len(ends) else before
    return len(tokens)


def prepare_streamed_corpus(scan: CorpusScan, tokenizer_kind: str, val_fraction: float,
                            vocab_size: Optional[int] = None, tokenizer: Optional[Tokenizer] = None,
                            cache_dir: Optional[Path] = None,
                            on_progress: Optional[ProgressCallback] = None) -> PreparedCorpus:
    """A `PreparedCorpus` whose token arrays are memory-mapped slices of the cached token file."""
    if tokenizer is None:
        tokenizer = fit_streamed_tokenizer(scan, tokenizer_kind, val_fraction, vocab_size)
    else:
        tokenizer.check_encodable(scan.chars, "corpus")
    token_file, _ = cached_token_file(scan, tokenizer, cache_dir, on_progress)
    tokens = token_file.open()
    train_chars = split_char_index(scan.num_chars, val_fraction)
    split = token_index_at_char(tokenizer, tokens, train_chars)
    return split_corpus(tokenizer, tokens[:split], tokens[split:], train_chars, total_chars=scan.num_chars,
                        val_fraction=val_fraction, fingerprint=scan.fingerprint, name=scan.corpus.name,
                        source=scan.corpus.source)
