"""A suffix array over a corpus's training text, kept in the token cache folder (`charrnn novelty`).

What it is built over: the UTF-8 bytes of the training part of the corpus (the first
`split_char_index(num_chars, val_fraction)` characters, as training cuts it), not token ids.
Bytes because (1) the question "was this text copied?" is about characters, whatever the
tokeniser: a BPE tokeniser cuts the same words differently in another context, so token
matches would miss copies; (2) a byte position maps straight back to a file and a line;
(3) libdivsufsort sorts bytes natively, in 4 bytes of memory per byte of text (a tokeniser
with more than 256 ids would need a wider alphabet and several times the memory). UTF-8 is
self-synchronising, so a match that starts on a character in the query starts on one in the
corpus too. The validation part is left out: the model never trained on it, so a passage
found only there was not memorised (`docs/novelty.md`).

An entry is three files named like a token cache entry, `NAME-KEY.sa` (the suffix array,
int32, or int64 past 2 GiB), `NAME-KEY.utf8` (the training text's bytes, then `PAD_BYTES`
zero bytes so that a query can read a fixed number of bytes after any position) and the
sidecar `NAME-KEY.json`, written last, which marks the entry complete. KEY is a hash of the
corpus fingerprint and the number of training characters, so a changed corpus (or another
split) gets a new entry. Entries are built under the token cache's lock and written through
temporary files that `remove_stale_files` sweeps when their process died; the array and
the text are memory-mapped read-only, so a query's resident memory is the pages it touches.
Building it holds the text (mapped) and the array: about 5 bytes per byte of text.
"""

from __future__ import annotations

import bisect
import contextlib
import hashlib
import json
import mmap
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from charrnn.atomic import DiskFullError, atomic_write_bytes, create_temp_file, remove_quietly
from charrnn.data.corpus import CorpusScan, describe_source
from charrnn.data.encoding import split_char_index
from charrnn.data.reader import iter_blocks
from charrnn.data.token_cache import (
    _cache_write_error,
    _CacheLock,
    _make_folder,
    default_cache_dir,
    remove_stale_files,
)
from charrnn.errors import CharrnnError, CorpusError

__all__ = ["SuffixIndex", "cached_suffix_index", "index_path", "find_cached_index", "PAD_BYTES"]

INDEX_FORMAT = 1
PAD_BYTES = 64  # zero bytes after the text: a query reads up to this many bytes past a position
LINE_BLOCK = 1 << 20  # the sidecar counts line ends per block of this many bytes (finding a line)
COPY_BYTES = 8 << 20

BuildProgress = Callable[[str], None]


def index_key(fingerprint: str, val_fraction: float | None) -> str:
    """The entry's name: content hash + the validation fraction left out (None: all) + the format.

    The fraction, not the character count, so that a model's metadata (fingerprint and
    `val_fraction`) finds its entry without reading the corpus, even after the corpus moved.
    """
    text = (
        f"suffix-array {INDEX_FORMAT}\n{fingerprint}\n{'all' if val_fraction is None else repr(val_fraction)}"
    )
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def index_path(folder: Path, corpus_name: str, fingerprint: str, val_fraction: float | None) -> Path:
    """Where the entry's suffix array is (or would be); the text and sidecar sit beside it."""
    safe_name = "".join(c if c.isalnum() or c in "-_." else "_" for c in corpus_name)[:40]
    return Path(folder) / f"{safe_name}-{index_key(fingerprint, val_fraction)}.sa"


@dataclass
class SuffixIndex:
    """A complete index entry: the memory-mapped text and suffix array, and where each file starts."""

    path: Path  # the suffix array file
    num_bytes: int  # of training text
    train_chars: int
    fingerprint: str
    source: str  # the corpus as it was given when the index was built
    files: list[str]  # the corpus's file names, in order
    file_starts: list[int]  # byte offset of each file in the text
    lines_before_block: list[int]  # line ends before each LINE_BLOCK of the text
    sa_dtype: np.dtype

    @property
    def text_path(self) -> Path:
        return self.path.with_suffix(".utf8")

    @property
    def sidecar(self) -> Path:
        return self.path.with_suffix(".json")

    def open(self) -> tuple[np.ndarray, np.ndarray]:
        """(text bytes incl. the zero padding, suffix array), both read-only memory maps."""
        text = np.memmap(self.text_path, dtype=np.uint8, mode="r", shape=(self.num_bytes + PAD_BYTES,))
        if self.num_bytes == 0:
            return text, np.zeros(0, dtype=self.sa_dtype)
        suffixes = np.memmap(self.path, dtype=self.sa_dtype, mode="r", shape=(self.num_bytes,))
        for array in (text, suffixes):
            mapping = getattr(array, "_mmap", None)
            if mapping is not None and hasattr(mmap, "MADV_RANDOM"):
                with contextlib.suppress(OSError):  # advice only: binary search jumps around
                    mapping.madvise(mmap.MADV_RANDOM)
        return text, suffixes

    def locate(self, text: np.ndarray, position: int) -> tuple[str, int, int]:
        """(file, line, column) of a byte position of the text; line and column count from 1."""
        number = bisect.bisect_right(self.file_starts, position) - 1
        file_start = self.file_starts[number]
        line = self._lines_before(text, position) - self._lines_before(text, file_start) + 1
        line_start = _last_line_start(text, position, file_start)
        column = int(np.count_nonzero((np.asarray(text[line_start:position]) & 0xC0) != 0x80)) + 1
        return self.files[number], line, column

    def _lines_before(self, text: np.ndarray, position: int) -> int:
        """Line ends in the text before `position` (the sidecar's count per block, then one block)."""
        block = position // LINE_BLOCK
        piece = np.asarray(text[block * LINE_BLOCK : position])
        return self.lines_before_block[block] + int(np.count_nonzero(piece == 10))


def _last_line_start(text: np.ndarray, position: int, floor: int) -> int:
    """The byte after the last line end before `position`, not before `floor` (a block at a time)."""
    end, step = position, 256  # lines are short: look a little way back first, further each round
    while end > floor:
        lower = max(floor, end - step)
        ends = np.flatnonzero(np.asarray(text[lower:end]) == 10)
        if len(ends):
            return lower + int(ends[-1]) + 1
        end, step = lower, min(step * 8, LINE_BLOCK)
    return floor


def _read_sidecar(path: Path, fingerprint: str, val_fraction: float | None) -> SuffixIndex | None:
    """The entry at `path` if it is complete and matches; None otherwise (build it again)."""
    try:
        info = json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))
        num_bytes = int(info["num_bytes"])
        sa_dtype = np.dtype(info["sa_dtype"])
        if (
            info.get("format") != INDEX_FORMAT
            or info.get("fingerprint") != fingerprint
            or info.get("val_fraction") != val_fraction
            or sa_dtype not in (np.dtype(np.int32), np.dtype(np.int64))
            or path.with_suffix(".utf8").stat().st_size != num_bytes + PAD_BYTES
            or (num_bytes and path.stat().st_size != num_bytes * sa_dtype.itemsize)
        ):
            return None
        files = [str(name) for name in info["files"]]
        starts = [int(start) for start in info["file_starts"]]
        lines = [int(count) for count in info["lines_before_block"]]
        if len(files) != len(starts) or not files or len(lines) != num_bytes // LINE_BLOCK + 1:
            return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return SuffixIndex(
        path=path,
        num_bytes=num_bytes,
        train_chars=int(info["train_chars"]),
        fingerprint=fingerprint,
        source=str(info.get("source", "")),
        files=files,
        file_starts=starts,
        lines_before_block=lines,
        sa_dtype=sa_dtype,
    )


def find_cached_index(
    fingerprint: str, val_fraction: float | None, cache_dir: Path | None = None
) -> SuffixIndex | None:
    """A complete cached entry for this corpus and split, found without reading the corpus (or None)."""
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    try:
        candidates = sorted(folder.glob(f"*-{index_key(fingerprint, val_fraction)}.sa"))
    except OSError:
        return None
    for path in candidates:
        found = _read_sidecar(path, fingerprint, val_fraction)
        if found is not None:
            return found
    return None


def _copy_training_text(scan: CorpusScan, train_chars: int, out, on_progress: BuildProgress | None):
    """Write the first `train_chars` characters' bytes to `out`; return (file names, starts, lines per block).

    Reads the corpus again a chunk at a time, hashing it: a corpus that changed since the
    scan stops the build with one `CorpusError` before anything is kept.
    """
    digest = hashlib.sha256()
    files: list[str] = []
    starts: list[int] = []
    line_counts: list[int] = []  # line ends in each LINE_BLOCK, filled as blocks complete
    written = chars = 0
    block_lines = 0
    read = 0
    for source in scan.corpus.sources():
        files.append(source.name)
        starts.append(written)
        for text, raw in iter_blocks(source, COPY_BYTES):
            digest.update(raw)
            read += len(raw)
            if chars < train_chars:
                keep = (
                    raw if chars + len(text) <= train_chars else text[: train_chars - chars].encode("utf-8")
                )
                chars += min(len(text), train_chars - chars)
                out.write(keep)
                view = np.frombuffer(keep, dtype=np.uint8)
                # Count line ends per fixed block of the output, so `locate` reads at most a block.
                offset = 0
                while offset < len(view):
                    room = LINE_BLOCK - (written % LINE_BLOCK)
                    part = view[offset : offset + room]
                    block_lines += int(np.count_nonzero(part == 10))
                    written += len(part)
                    offset += len(part)
                    if written % LINE_BLOCK == 0:
                        line_counts.append(block_lines)
                        block_lines = 0
            if on_progress is not None:
                on_progress(f"copying the training text: {read * 100 // max(1, scan.num_bytes)}%")
    if read != scan.num_bytes or digest.hexdigest() != scan.fingerprint:
        raise CorpusError(
            f"the corpus {describe_source(scan.corpus.source)} changed while it was being read: "
            "nothing was cached; try again once it no longer changes"
        )
    lines_before = [0]
    for count in line_counts:
        lines_before.append(lines_before[-1] + count)
    return files, starts, lines_before[: written // LINE_BLOCK + 1], written


def _sort_suffixes(text_path: Path, num_bytes: int) -> np.ndarray:
    """The suffix array of the first `num_bytes` bytes of the file (libdivsufsort)."""
    try:
        from pydivsufsort import divsufsort  # type: ignore[import-untyped]  # no type information
    except ImportError:
        raise CharrnnError(
            "charrnn novelty needs pydivsufsort: pip install 'charrnn[novelty]' (or pip install pydivsufsort)"
        ) from None
    # Copy-on-write: pydivsufsort asks for a writable buffer, libdivsufsort only reads it.
    text = np.memmap(text_path, dtype=np.uint8, mode="c", shape=(num_bytes,))
    try:
        return np.asarray(divsufsort(text))
    finally:
        del text


def _build(
    scan: CorpusScan, val_fraction: float | None, path: Path, on_progress: BuildProgress | None
) -> SuffixIndex:
    """Copy the training text, sort its suffixes, write both (temp file + fsync + rename), sidecar last."""
    train_chars = scan.num_chars if val_fraction is None else split_char_index(scan.num_chars, val_fraction)
    text_path = path.with_suffix(".utf8")
    temps: list[Path] = []
    try:
        handle, temp = create_temp_file(path.parent, text_path.name, 0o666)
        temps.append(temp)
        with os.fdopen(handle, "wb") as out:
            files, starts, lines_before, num_bytes = _copy_training_text(scan, train_chars, out, on_progress)
            out.write(bytes(PAD_BYTES))
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, text_path)
        temps.remove(temp)
        sa_dtype = np.dtype(np.int32)
        if num_bytes:
            if on_progress is not None:
                on_progress(f"sorting the suffixes of {num_bytes:,} bytes")
            suffixes = _sort_suffixes(text_path, num_bytes)
            sa_dtype = suffixes.dtype
            handle, temp = create_temp_file(path.parent, path.name, 0o666)
            temps.append(temp)
            with os.fdopen(handle, "wb") as out:
                suffixes.tofile(out)
                del suffixes
                out.flush()
                os.fsync(out.fileno())
            os.replace(temp, path)
            temps.remove(temp)
    except OSError as error:
        for temp in temps:
            remove_quietly(temp)
        raise _cache_write_error(path, error) from None
    except BaseException:
        for temp in temps:
            remove_quietly(temp)
        raise
    info = {
        "format": INDEX_FORMAT,
        "fingerprint": scan.fingerprint,
        "val_fraction": val_fraction,
        "train_chars": train_chars,
        "num_bytes": num_bytes,
        "sa_dtype": sa_dtype.name,
        "source": scan.corpus.source,
        "files": files,
        "file_starts": starts,
        "lines_before_block": lines_before,
    }
    try:
        atomic_write_bytes(path.with_suffix(".json"), json.dumps(info, ensure_ascii=False).encode("utf-8"))
    except DiskFullError:
        remove_quietly(path)
        remove_quietly(text_path)
        raise CharrnnError(f"disk full while writing the suffix index {path.with_suffix('.json')}") from None
    found = _read_sidecar(path, scan.fingerprint, val_fraction)
    if found is None:  # pragma: no cover - only if another process removed it at once
        raise CharrnnError(f"the suffix index {path} vanished while it was being written")
    return found


def cached_suffix_index(
    scan: CorpusScan,
    val_fraction: float | None,
    cache_dir: Path | None = None,
    on_progress: BuildProgress | None = None,
) -> tuple[SuffixIndex, bool]:
    """The index of the scanned corpus's training part, reused when cached, else built: (index, reused).

    `val_fraction` None indexes the whole text (a corpus that is not a run's training text).
    """
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    _make_folder(folder)
    remove_stale_files(folder)
    path = index_path(folder, scan.corpus.name, scan.fingerprint, val_fraction)
    cached = _read_sidecar(path, scan.fingerprint, val_fraction)
    if cached is not None:
        return cached, True
    with _CacheLock(path.with_suffix(".lock")):
        cached = _read_sidecar(path, scan.fingerprint, val_fraction)  # another process may have built it
        if cached is not None:
            return cached, True
        return _build(scan, val_fraction, path, on_progress), False
