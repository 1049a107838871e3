"""Atomic file writes: a reader sees the old file or the new one, never half of one.

The bytes go to a temp file in the same folder (so `os.replace` is a rename
within one file system, which is atomic), are fsynced, and only then replace
the target. Killing the process at any moment leaves either the previous file
or the new one, plus at worst a stray temp file that `is_temp_file` recognises
and the next run removes.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from charrnn.errors import CharrnnError

TEMP_MARKER = ".tmp-"
WRITE_BUFFER_BYTES = 1 << 20

# Test-only hook: when set to a number of seconds, every atomic write sleeps that long after the
# temp file is complete and before it replaces the target, so a test can kill the process or
# interrupt it at exactly that moment. It does nothing unless the variable is set.
TEST_PAUSE_ENV = "CHARRNN_TEST_PAUSE_IN_SAVE"


class DiskFullError(CharrnnError):
    """The disk filled up while a file was being written (the previous file is unchanged)."""


def temp_path_for(path: Path) -> Path:
    """The temporary name a write of `path` goes through (same folder, so `os.replace` is atomic)."""
    return path.with_name(f".{path.name}{TEMP_MARKER}{os.getpid()}")


def is_temp_file(path: Path) -> bool:
    """True for a file left by an interrupted atomic write."""
    return path.name.startswith(".") and TEMP_MARKER in path.name


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` via temp file + fsync + `os.replace`, then fsync the folder.

    A full disk or other OS error removes the temp file, leaves any previous
    `path` untouched, and raises a one-line `CharrnnError` (`DiskFullError` for ENOSPC).
    """
    atomic_write(path, lambda out: out.write(data))


class _DescriptorWriter(io.RawIOBase):
    """A file object over an open descriptor whose every write goes through `write_all`."""

    def __init__(self, descriptor: int) -> None:
        self.descriptor = descriptor

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        write_all(self.descriptor, data)
        return len(data)


def atomic_write(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Like `atomic_write_bytes`, for a writer that streams into a file object (`torch.save`):
    the bytes never need to sit in memory whole (a big vocabulary's state is gigabytes)."""
    path = Path(path)
    temp = temp_path_for(path)
    try:
        descriptor = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
        try:
            with io.BufferedWriter(_DescriptorWriter(descriptor), WRITE_BUFFER_BYTES) as out:
                write(out)
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        _test_pause()
        os.replace(temp, path)
    except OSError as error:
        remove_quietly(temp)
        if error.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFullError(
                f"disk full while saving {path}: the previous checkpoint is unchanged; "
                "free some space, then resume"
            ) from None
        raise CharrnnError(f"cannot write {path}: {error.strerror or error}") from None
    except BaseException:
        remove_quietly(temp)  # e.g. a second Ctrl-C: stop at once, but leave no litter behind
        raise
    fsync_directory(path.parent)


def write_all(descriptor: int, data: bytes) -> None:
    """Write all of `data` to an open file descriptor."""
    # os.write may write less than asked (signals, pipes, some file systems): loop until done.
    view = memoryview(data)
    while view:
        written = os.write(descriptor, view)
        view = view[written:]


def _test_pause() -> None:
    seconds = os.environ.get(TEST_PAUSE_ENV)
    if seconds:
        time.sleep(float(seconds))


def remove_quietly(path: Path) -> None:
    """Delete a file if it can be deleted; a file already gone (or kept by the OS) is not an error."""
    with contextlib.suppress(OSError):
        path.unlink()


def fsync_directory(folder: Path) -> None:
    """Make a rename in, or a new file's name in, `folder` durable.

    Quietly skipped where a folder cannot be opened.
    """
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
