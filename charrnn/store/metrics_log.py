"""metrics.jsonl: one JSON line per evaluation, appended as they come, never lost in silence.

Appending (not rewriting) means a crash can at worst tear the last line; the next record then
starts on a new line, so the torn line stays alone. Readers get every readable record and the
numbers of the lines they could not read, so a command can say "2 damaged lines" instead of
quietly drawing a curve with holes. Only a resume cuts the file back (atomically).
"""

from __future__ import annotations

import errno
import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from charrnn.atomic import DiskFullError, atomic_write_bytes, fsync_directory, write_all
from charrnn.errors import RunDirError

# A record is a few hundred bytes; a line a thousand times longer is not one (a hostile or
# damaged file), and reading it whole would cost its size in memory.
MAX_LINE_BYTES = 1 << 20


@dataclass
class MetricsReading:
    """What a metrics.jsonl holds: the records, and the lines that are not a JSON object.

    `damaged_lines` are 1-based line numbers (a write torn by a crash, a hand edit);
    `record_lines[i]` is the line number of `records[i]`.
    """

    records: list[dict[str, Any]] = field(default_factory=list)
    damaged_lines: list[int] = field(default_factory=list)
    record_lines: list[int] = field(default_factory=list)


def parse_metrics_line(line: bytes) -> dict[str, Any] | None:
    """The record one line of metrics.jsonl holds, or None when the line is not a JSON object."""
    try:
        record = json.loads(line.decode("utf-8"))
    except ValueError:  # UnicodeDecodeError is a ValueError too
        return None
    return record if isinstance(record, dict) else None


def read_metrics_file(path: Path) -> MetricsReading:
    """Read a metrics.jsonl (a missing file has no records); blank lines carry nothing and are skipped.

    The file is read a line at a time, and a line longer than `MAX_LINE_BYTES` is damaged without
    being held whole, so reading costs the records and one line, not the file's size.
    """
    path = Path(path)
    reading = MetricsReading()
    try:
        with open(path, "rb") as handle:
            for number, line in enumerate(_lines(handle), start=1):
                if line is not None and not line.strip():
                    continue
                record = None if line is None else parse_metrics_line(line)
                if record is None:
                    reading.damaged_lines.append(number)
                else:
                    reading.records.append(record)
                    reading.record_lines.append(number)
    except FileNotFoundError:
        return reading
    except OSError as error:
        raise RunDirError(f"cannot read {path}: {error.strerror or error}") from None
    return reading


def _lines(handle: BinaryIO) -> Iterator[bytes | None]:
    """The lines of a binary file without their newline; None for a line over `MAX_LINE_BYTES`,
    which is read past in pieces."""
    while line := handle.readline(MAX_LINE_BYTES + 1):
        if len(line) > MAX_LINE_BYTES:
            while line and not line.endswith(b"\n"):
                line = handle.readline(MAX_LINE_BYTES)
            yield None
        else:
            yield line.removesuffix(b"\n")


def append_metrics_record(path: Path, record: dict[str, Any]) -> None:
    """Append one record as a JSON line and fsync it; earlier lines are never rewritten.

    Strict JSON, so that jq, pandas and browsers read it: a value that is not a finite number
    (the train loss of an interval whose every step was skipped) becomes null. When the file
    does not end with a newline (a write torn by a crash), the record starts on a new line, so
    the torn line stays alone (and is reported as damaged) instead of spoiling this record.
    """
    path = Path(path)
    line = (json.dumps(_finite_or_null(record), allow_nan=False) + "\n").encode("utf-8")
    try:
        created = not path.exists()
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o666)
        try:
            if _ends_without_newline(descriptor):
                line = b"\n" + line
            write_all(descriptor, line)
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
    except OSError as error:
        if error.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFullError(f"disk full while writing {path}: free some space, then resume") from None
        raise RunDirError(f"cannot write {path}: {error.strerror or error}") from None
    if created:
        fsync_directory(path.parent)


def forget_records_after(path: Path, step: int) -> None:
    """Drop the records of steps after `step` (a resumed run evaluates them again), atomically.

    Only readable records whose integer step is after `step` go. Every other line is kept byte
    for byte, in its place: a damaged line is not ours to judge, so it stays (and readers keep
    reporting it). Blank lines carry nothing and are not kept. The file is rewritten (temp file,
    fsync, rename) only when something changes.
    """
    path = Path(path)
    data = _read_or_empty(path)
    kept = []
    for line in data.split(b"\n"):
        if not line.strip():
            continue
        record = parse_metrics_line(line)
        step_of_record = record.get("step") if record is not None else None
        later = (
            isinstance(step_of_record, int) and not isinstance(step_of_record, bool) and step_of_record > step
        )
        if not later:
            kept.append(line)
    text = b"".join(line + b"\n" for line in kept)
    if text != data:
        atomic_write_bytes(path, text)


def _read_or_empty(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return b""
    except OSError as error:
        raise RunDirError(f"cannot read {path}: {error.strerror or error}") from None


def _ends_without_newline(descriptor: int) -> bool:
    size = os.fstat(descriptor).st_size
    return size > 0 and os.pread(descriptor, 1, size - 1) != b"\n"


def _finite_or_null(record: dict[str, Any]) -> dict[str, Any]:
    return {
        key: None if isinstance(value, float) and not math.isfinite(value) else value
        for key, value in record.items()
    }
