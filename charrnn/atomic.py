"""Writing files: atomically, and never over something that is not a plain file.

Two promises hold for every file charrnn writes:

* A reader sees the old file or the new one, never half of one. The bytes go to a temporary
  file in the same folder (so `os.replace` is a rename within one file system, which is
  atomic), are fsynced, and only then replace the target.
* What stands at the path is respected. A symlink is followed: the file it points to is
  written (atomically) and the link stays a link. A folder is refused. A FIFO or a character
  device named as an output (`--html /dev/stdout`, a pipe made with `mkfifo`) is written to
  directly, as the shell's `>` does (`write_output`); a block device or a socket is refused with
  one line. None of them is ever replaced by a regular file. The files charrnn names itself
  (checkpoints, the token cache) refuse every special file (`atomic_write`).

Every temporary file charrnn makes, here and elsewhere (token cache parts, spooled standard
input, evaluation spills, these writes), gets its name from `temp_name`:
`.charrnn-tmp-HOST-PID-START-RANDOM-LABEL`, naming the machine, the process (and when it
started, so a reused pid is not mistaken for the owner) and what it is for. However a process
ends (Ctrl-C, SIGTERM, SIGKILL, a power cut), `remove_stale_temp_files` recognises what it left
and removes it; each folder charrnn writes in is swept when charrnn next uses it.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import os
import re
import secrets
import socket
import stat
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from charrnn.errors import CharrnnError

TEMP_PREFIX = ".charrnn-tmp-"
WRITE_BUFFER_BYTES = 1 << 20
# A temp file's name must fit in NAME_MAX (255 bytes) whatever the target's name: the label
# (the target's name, for a human reading the folder) is cut to this many characters.
LABEL_CHARS = 60

# Test-only hook: when set to a number of seconds, every atomic write sleeps that long after the
# temp file is complete and before it replaces the target, so a test can kill the process or
# interrupt it at exactly that moment. It does nothing unless the variable is set.
TEST_PAUSE_ENV = "CHARRNN_TEST_PAUSE_IN_SAVE"

_TEMP_NAME = re.compile(r"(?P<host>[0-9a-f]{8})-(?P<pid>\d+)-(?P<start>\d+)-[0-9a-f]+-(?P<label>.*)", re.S)


class DiskFullError(CharrnnError):
    """The disk filled up while a file was being written (the previous file is unchanged)."""


# -- temporary files ---------------------------------------------------------------------------


def _host_tag() -> str:
    # A hash, not the name: fixed length (NAME_MAX), and no two machines' names cut to the same tag.
    return hashlib.blake2b(socket.gethostname().encode("utf-8", "replace"), digest_size=4).hexdigest()


def _process_start(pid: int) -> int:
    """When `pid` started (clock ticks since boot, Linux); 0 where that cannot be told."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as status:
            fields = status.read().rsplit(b")", 1)[1].split()
        return int(fields[19])  # field 22 of proc(5); the split starts at field 3
    except (OSError, IndexError, ValueError):
        return 0


_owner_cache: dict[int, str] = {}


def _owner() -> str:
    pid = os.getpid()  # looked up each time: a forked child is a new owner
    if pid not in _owner_cache:
        _owner_cache[pid] = f"{_host_tag()}-{pid}-{_process_start(pid)}"
    return _owner_cache[pid]


def temp_name(label: str) -> str:
    """A fresh name for a temporary file of this process; `label` says what it is for."""
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in label)[:LABEL_CHARS]
    return f"{TEMP_PREFIX}{_owner()}-{secrets.token_hex(4)}-{safe}"


def create_temp_file(folder: Path, label: str, mode: int = 0o600) -> tuple[int, Path]:
    """Create a new temporary file in `folder` (named by `temp_name`); return its descriptor and path.

    `mode` 0o600 keeps spooled text private; a file that will replace a user's file asks for 0o666
    (the umask applies, as for any new file). Raises OSError.
    """
    while True:
        path = Path(folder) / temp_name(label)
        try:
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
        except FileExistsError:
            continue  # another thread drew the same random part: draw again
        return descriptor, path


def is_temp_file(path: Path) -> bool:
    """True for a temporary file charrnn made (live, or left by a process that was killed)."""
    return Path(path).name.startswith(TEMP_PREFIX)


@dataclass(frozen=True)
class _TempOwner:
    host: str
    pid: int
    start: int
    label: str


def _parse_temp_name(name: str) -> _TempOwner | None:
    if not name.startswith(TEMP_PREFIX):
        return None
    match = _TEMP_NAME.fullmatch(name[len(TEMP_PREFIX) :])
    if match is None:
        return None
    return _TempOwner(match["host"], int(match["pid"]), int(match["start"]), match["label"])


def _owner_is_gone(owner: _TempOwner) -> bool:
    if owner.host != _host_tag():
        return False  # another machine sharing the folder may still be writing it
    try:
        os.kill(owner.pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        pass  # e.g. EPERM: the process exists, owned by someone else
    # The pid is alive: the owner only if it is the process that started then (pids are reused).
    now = _process_start(owner.pid)
    return bool(owner.start and now and now != owner.start)


def remove_stale_temp_files(folder: Path, is_owned: Callable[[str], bool] | None = None) -> None:
    """Delete the temporary files in `folder` whose process is gone, never a live process's.

    A temp file is stale when the machine it names is this one and its process no longer runs
    (or its pid now belongs to a later process). `is_owned(label)` is true for the files only
    the caller writes, under a lock it holds (a run directory's checkpoints): their temp files
    are removed whoever made them (e.g. a training killed on another machine that shares the
    folder). Best effort: a folder that cannot be listed, or a file that cannot be removed, is
    left alone.
    """
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return
    for entry in entries:
        owner = _parse_temp_name(entry.name)
        if owner is None:
            continue
        try:
            if entry.is_dir(follow_symlinks=False):
                continue
        except OSError:
            continue
        owned = is_owned is not None and is_owned(owner.label)
        mine = f"{owner.host}-{owner.pid}-{owner.start}" == _owner()
        if owned or (not mine and _owner_is_gone(owner)):
            remove_quietly(Path(entry.path))


# -- atomic writes -----------------------------------------------------------------------------


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` via temp file + fsync + `os.replace`, then fsync the folder.

    A full disk or other OS error removes the temp file, leaves any previous
    `path` untouched, and raises a one-line `CharrnnError` (`DiskFullError` for ENOSPC).
    A symlink is followed; a special file (FIFO, device, ...) or a folder is refused.
    """
    atomic_write(path, lambda out: out.write(data))


def write_output(path: Path, data: bytes | Iterable[bytes]) -> None:
    """Write a file the user named (`plot -o`, `explain --html`), whatever stands at `path`.

    `data` is the bytes, or pieces of them written one after the other (a page too big to
    hold whole).

    A new or regular file is written atomically (its permissions kept); a symlink is followed
    and its target written, the link kept; a FIFO or a character device is written to directly,
    as `>` does; a folder, a block device or a socket is refused with one line. Leftover temp
    files of killed charrnn processes in the same folder are removed first.
    """
    path = Path(path)
    try:
        pieces = [data] if isinstance(data, bytes) else data
        _write(path, lambda out: out.writelines(pieces), stream_special=True)
    except DiskFullError:
        raise CharrnnError(
            f"disk full while writing {path}: any previous file there is unchanged; free some space"
        ) from None


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
    _write(Path(path), write, stream_special=False)


def kind_of(mode: int) -> str:
    """What a file of this `st_mode` is, in words (\"folder\", \"FIFO (named pipe)\", ...)."""
    for test, name in (
        (stat.S_ISDIR, "folder"),
        (stat.S_ISFIFO, "FIFO (named pipe)"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
        (stat.S_ISSOCK, "socket"),
    ):
        if test(mode):
            return name
    return "special file"


_DESCRIPTOR_FOLDER = re.compile(r"/proc/(\d+|self|thread-self)(/task/\d+)?/fd")


def _through_a_descriptor(path: Path) -> bool:
    """True when following `path`'s symlinks passes through /proc/PID/fd (e.g. /dev/stdout):
    it names a process's open file, not a file of its own, so it is written as `>` would."""
    current = os.path.abspath(path)
    for _ in range(40):  # the kernel's own limit on links followed
        folder = os.path.realpath(os.path.dirname(current))
        if _DESCRIPTOR_FOLDER.fullmatch(folder):
            return True
        if not os.path.islink(current):
            return False
        current = os.path.normpath(os.path.join(folder, os.readlink(current)))
    return False


def _where_to_write(path: Path) -> tuple[Path, os.stat_result | None, bool]:
    """(the path to write, what stands there now or None, whether it can be replaced by a rename).

    A symlink is followed to the file it finally names. A link into a process's open files
    (`/dev/stdout`, `/dev/fd/3`) is written through, as `>` does, never renamed over.
    Raises OSError (e.g. ELOOP for a symlink loop).
    """
    try:
        found = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):  # nothing there yet (its folder is checked next)
        return path, None, True
    if not stat.S_ISLNK(found.st_mode):
        return path, found, True
    if _through_a_descriptor(path):
        return path, os.stat(path), False  # a closed descriptor: FileNotFoundError, reported
    try:
        found = os.stat(path)
    except FileNotFoundError:  # a dangling link: the file it names is created, as `>` does
        return Path(os.path.realpath(path)), None, True
    return Path(os.path.realpath(path)), found, True


def check_output(path: Path, inputs: Sequence[tuple[Path | str, str]] = ()) -> None:
    """Raise the one-line `CharrnnError` that `write_output(path, ...)` would meet before writing
    (a folder, a refused special file, a missing folder, a file we may not write), so a command
    can refuse before its work rather than after it.

    `inputs` are (path, what it is) of the files the command reads: an output that is one of
    them (by another name or through a link, too) is refused, so a slip of the keyboard never
    writes a page over the model or the text it came from.
    """
    _plan(Path(path), stream_special=True)
    for source, what in inputs:
        with contextlib.suppress(OSError):
            if stat.S_ISREG(os.stat(source).st_mode) and os.path.samefile(path, source):
                raise CharrnnError(f"cannot write {path}: it is {what}; choose another file")


def _plan(path: Path, stream_special: bool) -> tuple[Path, os.stat_result | None, bool]:
    """(where to write, what stands there now, whether to replace it atomically), or an error."""
    try:
        target, found, renamable = _where_to_write(path)
    except OSError as error:
        raise CharrnnError(f"cannot write {path}: {error.strerror or error}") from None
    if found is not None and not stat.S_ISREG(found.st_mode):
        kind = kind_of(found.st_mode)
        if stat.S_ISDIR(found.st_mode):
            raise CharrnnError(f"cannot write {path}: it is a folder")
        if not stream_special or stat.S_ISBLK(found.st_mode) or stat.S_ISSOCK(found.st_mode):
            raise CharrnnError(f"cannot write {path}: it is a {kind}, not a regular file (left as it is)")
        return path, found, False
    if not renamable:
        return target, found, False
    if found is not None and not os.access(target, os.W_OK):
        # `>` would refuse a file we may not write; a rename would quietly get past that.
        raise CharrnnError(f"cannot write {path}: Permission denied")
    if not target.parent.is_dir():
        problem = "is not a folder" if os.path.lexists(target.parent) else "does not exist"
        raise CharrnnError(f"cannot write {path}: {target.parent} {problem}")
    return target, found, True


def _write(path: Path, write: Callable[[BinaryIO], object], stream_special: bool) -> None:
    target, found, atomically = _plan(path, stream_special)
    if not atomically:
        _write_through(target, write)
        return
    if stream_special:  # a user's folder: nobody else sweeps it
        remove_stale_temp_files(target.parent)
    _replace_atomically(target, write, found, shown=path)


def _write_through(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Write into what stands at `path` (a FIFO, a device), as the shell's `>` does."""
    try:
        # Blocks until a FIFO has a reader, as `>` does; Ctrl-C or SIGTERM ends the wait.
        descriptor = os.open(path, os.O_WRONLY | os.O_NOCTTY | os.O_CLOEXEC)
        try:
            if stat.S_ISREG(os.fstat(descriptor).st_mode):
                os.ftruncate(descriptor, 0)  # reached through a link the kernel follows: as `>`
            with io.BufferedWriter(_DescriptorWriter(descriptor), WRITE_BUFFER_BYTES) as out:
                write(out)
        finally:
            os.close(descriptor)
    except OSError as error:
        raise CharrnnError(f"cannot write {path}: {error.strerror or error}") from None


def _replace_atomically(
    path: Path, write: Callable[[BinaryIO], object], found: os.stat_result | None, shown: Path
) -> None:
    temp: Path | None = None
    try:
        descriptor, temp = create_temp_file(path.parent, path.name, 0o666)
        try:
            if found is not None:
                _keep_owner_and_mode(descriptor, found)
            with io.BufferedWriter(_DescriptorWriter(descriptor), WRITE_BUFFER_BYTES) as out:
                write(out)
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        _test_pause()
        os.replace(temp, path)
    except OSError as error:
        if temp is not None:
            remove_quietly(temp)
        if error.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFullError(
                f"disk full while saving {shown}: the previous checkpoint is unchanged; "
                "free some space, then resume"
            ) from None
        reason = error.strerror or str(error)
        if temp is None and error.errno in (errno.EACCES, errno.EPERM):
            reason += f" (the file is written beside it first, so its folder {path.parent} must be writable)"
        raise CharrnnError(f"cannot write {shown}: {reason}") from None
    except BaseException:
        if temp is not None:
            remove_quietly(temp)  # e.g. a second Ctrl-C: stop at once, but leave no litter behind
        raise
    fsync_directory(path.parent)


def _keep_owner_and_mode(descriptor: int, found: os.stat_result) -> None:
    # The new file takes the place of the old one: it keeps the old one's permissions (a private
    # 0600 file stays private) and, where allowed (root), its owner.
    with contextlib.suppress(OSError):
        os.fchmod(descriptor, stat.S_IMODE(found.st_mode))
    if (found.st_uid, found.st_gid) != (os.geteuid(), os.getegid()):
        with contextlib.suppress(OSError):
            os.fchown(descriptor, found.st_uid, found.st_gid)


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
