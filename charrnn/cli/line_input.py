"""Input lines for `sample --each-line`: read lazily, checked as UTF-8, cut into batches.

A batch takes the lines that are ready and is cut short when the input pauses, so a
slow producer (a person typing, `tail -f`) still gets each answer without waiting
for a full batch, while a file or a fast pipe fills every batch.
"""

from __future__ import annotations

import io
import os
import select
from collections import deque
from collections.abc import Iterator
from typing import BinaryIO

from charrnn.errors import UsageProblem

READ_BYTES = 1 << 16


def _file_descriptor(stream: BinaryIO) -> int | None:
    try:
        return stream.fileno()
    except (AttributeError, OSError, io.UnsupportedOperation):
        return None  # an in-memory stream (tests): always ready


def _decode_line(raw: bytes, line_number: int, what: str) -> str:
    if raw.endswith(b"\r"):
        raw = raw[:-1]  # a file with Windows line ends
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise UsageProblem(
            f"line {line_number} of {what} is not valid UTF-8 (byte 0x{raw[error.start]:02x} "
            f"at byte {error.start + 1} of the line)"
        ) from None


def read_line_batches(stream: BinaryIO, batch_size: int, what: str) -> Iterator[list[str]]:
    """Lists of up to `batch_size` lines of `stream` (without their line ends), in order."""
    descriptor = _file_descriptor(stream)
    lines: deque[bytes] = deque()
    tail = b""
    ended = False
    line_number = 0

    def read_more(wait: bool) -> bool:
        """Read what is there (waiting for input only if `wait`); False if nothing was ready."""
        nonlocal tail, ended
        if descriptor is None:
            chunk = stream.read(READ_BYTES)
        else:
            if not wait and not select.select([descriptor], [], [], 0)[0]:
                return False
            chunk = os.read(descriptor, READ_BYTES)
        if not chunk:
            ended = True
            if tail:
                lines.append(tail)
                tail = b""
            return True
        parts = (tail + chunk).split(b"\n")
        tail = parts.pop()
        lines.extend(parts)
        return True

    while True:
        batch: list[str] = []
        while len(batch) < batch_size:
            if lines:
                line_number += 1
                batch.append(_decode_line(lines.popleft(), line_number, what))
            elif ended or not read_more(wait=not batch) or (batch and not lines and not ended):
                break
        if not batch:
            return
        yield batch
