"""Atomic file writes: a reader sees the old file or the new one, never half of one."""

from __future__ import annotations

import errno
import os
from pathlib import Path

from .errors import CharrnnError

TEMP_MARKER = ".tmp-"


def temp_path_for(path: Path) -> Path:
    """The temporary name a write of `path` goes through (same folder, so `os.replace` is atomic)."""
    return path.with_name(f".{path.name}{TEMP_MARKER}{os.getpid()}")


def is_temp_file(path: Path) -> bool:
    """True for a file left by an interrupted atomic write."""
    return path.name.startswith(".") and TEMP_MARKER in path.name


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` via temp file + fsync + `os.replace`, then fsync the folder.

    A full disk or other OS error removes the temp file, leaves any previous
    `path` untouched, and raises a one-line `CharrnnError`.
    """
    path = Path(path)
    temp = temp_path_for(path)
    try:
        with open(temp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except OSError as error:
        try:
            temp.unlink()
        except OSError:
            pass
        if error.errno == errno.ENOSPC:
            raise CharrnnError(f"disk full while saving {path}; the previous file is unchanged") from None
        raise CharrnnError(f"cannot write {path}: {error.strerror or error}") from None
    _fsync_directory(path.parent)


def _fsync_directory(folder: Path) -> None:
    # Makes the rename itself durable; not every platform can open a folder.
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)
