"""Simulated file-system failures for in-process tests: they behave the same for root and other users.

File modes cannot make a test fail for root (root reads and writes anything), and CI runs
the tests as root. These helpers make the operating system calls themselves fail, through
`monkeypatch`, for paths inside one folder only.
"""

from __future__ import annotations

import builtins
import errno
import fcntl
import io
import os
from pathlib import Path

WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


def _inside(path, folder: str) -> bool:
    if isinstance(path, int):
        return False
    resolved = os.path.realpath(os.fsdecode(path))
    return resolved == folder or resolved.startswith(folder + os.sep)


def _refusal(error_number: int, path) -> OSError:
    return OSError(error_number, os.strerror(error_number), os.fsdecode(path))  # PermissionError for EACCES


def deny_writes_under(monkeypatch, folder: Path, error_number: int = errno.EACCES) -> None:
    """Creating, opening for writing or making a folder under `folder` fails with `error_number`.

    EACCES is a folder without write permission; EROFS a read-only file system.
    """
    root = os.path.realpath(folder)
    real_open, real_os_open, real_mkdir = builtins.open, os.open, os.mkdir

    def guarded_open(file, mode="r", *args, **kwargs):
        if any(flag in mode for flag in "wax+") and _inside(file, root):
            raise _refusal(error_number, file)
        return real_open(file, mode, *args, **kwargs)

    def guarded_os_open(path, flags, *args, **kwargs):
        if flags & WRITE_FLAGS and _inside(path, root):
            raise _refusal(error_number, path)
        return real_os_open(path, flags, *args, **kwargs)

    def guarded_mkdir(path, *args, **kwargs):
        if _inside(path, root):
            raise _refusal(error_number, path)
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", guarded_open)
    monkeypatch.setattr(io, "open", guarded_open)  # pathlib opens through io.open
    monkeypatch.setattr(os, "open", guarded_os_open)
    monkeypatch.setattr(os, "mkdir", guarded_mkdir)


def deny_opening(monkeypatch, path: Path, error_number: int = errno.EACCES) -> None:
    """Opening `path` in any mode fails with `error_number` (a file without read permission)."""
    target = os.path.realpath(path)
    real_open = builtins.open

    def guarded_open(file, mode="r", *args, **kwargs):
        if not isinstance(file, int) and os.path.realpath(os.fsdecode(file)) == target:
            raise _refusal(error_number, file)
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", guarded_open)
    monkeypatch.setattr(io, "open", guarded_open)


def refuse_locks_under(monkeypatch, folder: Path, error_number: int = errno.ENOLCK) -> None:
    """`fcntl.flock` on a file under `folder` fails with `error_number`
    (ENOLCK: no locks on this file system)."""
    real_flock = fcntl.flock

    def guarded_flock(fd, operation):
        number = fd if isinstance(fd, int) else fd.fileno()
        opened = os.fstat(number)
        for entry in Path(folder).iterdir():
            found = entry.stat()
            if (found.st_dev, found.st_ino) == (opened.st_dev, opened.st_ino):
                raise OSError(error_number, os.strerror(error_number))
        return real_flock(fd, operation)

    monkeypatch.setattr(fcntl, "flock", guarded_flock)
