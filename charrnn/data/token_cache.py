"""Corpora of any size in bounded memory: cache the token ids as a file, memory-map it.

Preparing a corpus takes two streaming passes over the file(s), a few MB at a time:

1. `corpus.scan_corpus`: check the UTF-8, hash the text (the corpus fingerprint),
   count its characters and find its character vocabulary.
2. `prepare_streamed_corpus`: encode the text chunk by chunk
   (`corpus_encoding.encode_corpus`, which stops if the corpus changed since the
   scan) into a flat file of token ids (uint8 / uint16 / uint32, the smallest that
   holds the vocabulary), written atomically into a cache folder beside a small
   JSON sidecar. The cache key is sha256(text) + the tokeniser's description, never
   file times: changing the corpus (or the tokeniser) makes a new entry, and the
   same corpus with the same tokeniser reuses the file without encoding.

Training then reads windows from a read-only `np.memmap` of that file, so its
resident memory does not grow with the corpus (beyond the page cache). The split
and tokeniser fitting are `corpus_encoding.prepare_tokens`, shared with the small
in-memory path (`data.prepare_corpus`).

The cache folder also holds standard input while it is read (`spool_stream`) and the
temporary files of evaluations and half-written entries, all named by `atomic.temp_name`.
Those left by a killed process are removed by the next run that uses the folder
(`remove_stale_files`), once their owner is known to be gone.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import mmap
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, TextIO

import numpy as np

from charrnn.atomic import (
    DiskFullError,
    atomic_write_bytes,
    create_temp_file,
    remove_quietly,
    remove_stale_temp_files,
)

# Re-exported: the train command reads corpora through this module.
from charrnn.data.corpus import (
    CHUNK_BYTES,
    CorpusFiles,
    CorpusScan,
    ProgressCallback,
    corpus_files,
    iter_corpus_chunks,
    scan_corpus,
)
from charrnn.data.encoding import PreparedCorpus, encode_corpus, prepare_tokens
from charrnn.data.tokenizers import Tokenizer, token_dtype
from charrnn.errors import CharrnnError, CorpusError
from charrnn.events import CorpusProgress

__all__ = [
    "CorpusFiles",
    "CorpusScan",
    "corpus_files",
    "iter_corpus_chunks",
    "scan_corpus",
    "default_cache_dir",
    "spool_stream",
    "remove_stale_files",
    "cache_key",
    "TokenFile",
    "cached_token_file",
    "prepare_streamed_corpus",
]

CACHE_FORMAT = 1
SPOOL_LABEL = "stdin.txt"


def default_cache_dir() -> Path:
    """Where token files live: $CHARRNN_CACHE_DIR, else $XDG_CACHE_HOME/charrnn, else ~/.cache/charrnn."""
    explicit = os.environ.get("CHARRNN_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "charrnn"


def _make_folder(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        reason = "it is not a folder" if isinstance(error, FileExistsError) else error.strerror
        raise CharrnnError(
            f"cannot create the token cache folder {folder}: {reason or error} "
            "(choose another with --cache-dir or CHARRNN_CACHE_DIR)"
        ) from None


# -- standard input ----------------------------------------------------------------------------


def spool_stream(stream: BinaryIO, folder: Path) -> Path:
    """Copy a byte stream (stdin) to a temporary file in `folder`, a chunk at a time; return its path.

    Spooling lets stdin take the same streaming path as a file; the caller deletes the
    file. It is named as every charrnn temp file is (`atomic.temp_name`: this machine and
    process), so that when the process is killed, the next run here knows it is litter. An
    error or an interruption (Ctrl-C, SIGTERM) during the copy deletes it at once.
    """
    _make_folder(folder)
    remove_stale_files(folder)
    try:
        handle, path = create_temp_file(folder, SPOOL_LABEL)
    except OSError as error:
        raise CorpusError(
            f"cannot store standard input in {folder}: {error.strerror or error} "
            "(choose another folder with --cache-dir or CHARRNN_CACHE_DIR)"
        ) from None
    try:
        with os.fdopen(handle, "wb") as out:
            shutil.copyfileobj(stream, out, CHUNK_BYTES)
    except OSError as error:
        remove_quietly(path)
        raise CorpusError(f"cannot store standard input in {folder}: {error.strerror or error}") from None
    except BaseException:
        remove_quietly(path)  # Ctrl-C while copying: leave no litter
        raise
    return path


def remove_stale_files(folder: Path) -> None:
    """Delete what killed processes left in the cache folder, never what a live one is writing.

    The one sweep of `atomic.remove_stale_temp_files`: a temp file (a half-written token
    file or sidecar, a spooled stdin, an evaluation's spilled tokens) is stale when the
    process named in it is gone. Best effort: a folder we cannot list or change is left alone.
    """
    remove_stale_temp_files(folder)


# -- the token file ----------------------------------------------------------------------------


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
        mapping = getattr(tokens, "_mmap", None)  # numpy keeps the mmap object here
        if mapping is not None and hasattr(mmap, "MADV_RANDOM"):
            with contextlib.suppress(OSError):  # only advice: correctness does not depend on it
                mapping.madvise(mmap.MADV_RANDOM)
        return tokens


def _read_sidecar(path: Path, fingerprint: str, tokenizer: Tokenizer) -> TokenFile | None:
    """The cached entry at `path` if it is complete and matches; None otherwise (re-encode)."""
    sidecar = path.with_suffix(".json")
    try:
        info = json.loads(sidecar.read_text(encoding="utf-8"))
        dtype = np.dtype(info["dtype"])
        num_tokens = int(info["num_tokens"])
        if (
            info.get("format") != CACHE_FORMAT
            or info.get("fingerprint") != fingerprint
            or info.get("tokenizer") != tokenizer.to_dict()
            or dtype != token_dtype(tokenizer.vocab_size)
            or path.stat().st_size != num_tokens * dtype.itemsize
        ):
            return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return TokenFile(path=path, dtype=dtype, num_tokens=num_tokens)


def _encode_to_file(
    scan: CorpusScan, tokenizer: Tokenizer, path: Path, on_progress: ProgressCallback | None
) -> TokenFile:
    """Encode the corpus chunk by chunk into `path` (temp file + fsync + rename); then the sidecar.

    Nothing is kept when the encoding fails, is interrupted, or finds that the corpus
    changed since the scan: the temp file is removed and `path` is not created.
    """
    dtype = token_dtype(tokenizer.vocab_size)
    total, done = scan.num_bytes, 0

    def advance(count: int) -> None:
        nonlocal done
        done += count
        if on_progress is not None:
            on_progress(CorpusProgress(phase="encoding", done_bytes=min(done, total), total_bytes=total))

    temp: Path | None = None
    num_tokens = 0
    try:
        handle, temp = create_temp_file(path.parent, path.name, 0o666)
        with os.fdopen(handle, "wb") as out:
            # The iterator checks the corpus against the scan when it ends: rename only after that.
            for ids in encode_corpus(scan, tokenizer, advance):
                out.write(ids.tobytes())
                num_tokens += len(ids)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, path)
    except OSError as error:
        if temp is not None:
            remove_quietly(temp)
        raise _cache_write_error(path, error) from None
    except BaseException:
        if temp is not None:
            remove_quietly(temp)
        raise
    info = {
        "format": CACHE_FORMAT,
        "fingerprint": scan.fingerprint,
        "tokenizer": tokenizer.to_dict(),
        "dtype": dtype.name,
        "num_tokens": num_tokens,
        "num_chars": scan.num_chars,
        "source": scan.corpus.source,
    }
    # The sidecar goes last: it is what marks the entry complete.
    try:
        atomic_write_bytes(path.with_suffix(".json"), json.dumps(info, ensure_ascii=False).encode("utf-8"))
    except DiskFullError:
        remove_quietly(path)  # no sidecar: the token file alone is only waste
        raise CharrnnError(f"disk full while writing the token cache {path.with_suffix('.json')}") from None
    except BaseException:
        remove_quietly(path)
        raise
    return TokenFile(path=path, dtype=dtype, num_tokens=num_tokens)


def _cache_write_error(path: Path, error: OSError) -> CharrnnError:
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return CharrnnError(f"disk full while writing the token cache {path}")
    return CharrnnError(
        f"cannot write the token cache {path}: {error.strerror or error} "
        "(choose another folder with --cache-dir or CHARRNN_CACHE_DIR)"
    )


class _CacheLock:
    """An exclusive flock on one cache entry, so processes on one machine encode it once.

    Every failure is one `CharrnnError`: a lock file we may not create or open, or a
    file system that refuses locks (ENOLCK, e.g. some network file systems).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._handle: TextIO | None = None

    def _lock(self, blocking: bool) -> bool:
        import fcntl  # POSIX only

        try:
            # The handle outlives this call: it holds the flock until release() closes it.
            self._handle = open(self.path, "a+")  # noqa: SIM115
        except OSError as error:
            raise CharrnnError(
                f"cannot lock the token cache entry {self.path}: {error.strerror or error} "
                "(choose another folder with --cache-dir or CHARRNN_CACHE_DIR)"
            ) from None
        try:
            fcntl.flock(self._handle.fileno(), fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            self.release()
            return False
        except OSError as error:
            self.release()
            if error.errno == errno.ENOLCK:
                raise CharrnnError(
                    f"the file system of the token cache {self.path.parent} refuses file locks: "
                    "choose a local folder with --cache-dir or CHARRNN_CACHE_DIR"
                ) from None
            raise CharrnnError(
                f"cannot lock the token cache entry {self.path}: {error.strerror or error}"
            ) from None
        return True

    def release(self) -> None:
        """Let go of the lock (closing the file releases the flock)."""
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def __enter__(self) -> _CacheLock:
        self._lock(blocking=True)
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def cached_token_file(
    scan: CorpusScan,
    tokenizer: Tokenizer,
    cache_dir: Path | None = None,
    on_progress: ProgressCallback | None = None,
) -> tuple[TokenFile, bool]:
    """The token file of this corpus and tokeniser: reused when cached, else encoded. Returns (file, reused).

    A complete entry is read without the lock (entries are renamed into place whole, the
    sidecar last), so a read-only cache that already holds the entry still works.
    """
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    _make_folder(folder)
    remove_stale_files(folder)
    safe_name = "".join(c if c.isalnum() or c in "-_." else "_" for c in scan.corpus.name)[:40]
    path = folder / f"{safe_name}-{cache_key(scan.fingerprint, tokenizer)}.tokens"
    cached = _read_sidecar(path, scan.fingerprint, tokenizer)
    if cached is not None:
        return cached, True
    with _CacheLock(path.with_suffix(".lock")):
        cached = _read_sidecar(path, scan.fingerprint, tokenizer)  # another process may have made it
        if cached is not None:
            return cached, True
        return _encode_to_file(scan, tokenizer, path, on_progress), False


def prepare_streamed_corpus(
    scan: CorpusScan,
    tokenizer_kind: str,
    val_fraction: float,
    vocab_size: int | None = None,
    tokenizer: Tokenizer | None = None,
    cache_dir: Path | None = None,
    on_progress: ProgressCallback | None = None,
) -> PreparedCorpus:
    """A `PreparedCorpus` whose token arrays are memory-mapped slices of the cached token file."""

    def store(scan: CorpusScan, tokenizer: Tokenizer) -> np.ndarray:
        token_file, _ = cached_token_file(scan, tokenizer, cache_dir, on_progress)
        return token_file.open()

    return prepare_tokens(scan, tokenizer_kind, val_fraction, store, vocab_size, tokenizer)
