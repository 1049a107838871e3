"""Input lines for `sample --each-line`: read lazily, checked as UTF-8 by the one decoder, cut into batches.

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

from charrnn.data.reader import Utf8Decoder, read_failure
from charrnn.errors import CorpusError, UsageProblem

READ_BYTES = 1 << 16


def _file_descriptor(stream: BinaryIO) -> int | None:
    try:
        return stream.fileno()
    except (AttributeError, OSError, io.UnsupportedOperation):
        return None  # an in-memory stream (tests): always ready


def _decode_line(decoder: Utf8Decoder, raw: bytes) -> str:
    """The text of one line (`raw` with its line end, if it has one), without the line end."""
    try:
        line = decoder.decode(raw)
    except CorpusError as error:
        raise UsageProblem(str(error)) from None  # the input of a command-line option: exit 2
    line = line[:-1] if line.endswith("\n") else line
    return line[:-1] if line.endswith("\r") else line  # a file with Windows line ends


def read_line_batches(stream: BinaryIO, batch_size: int, what: str) -> Iterator[list[str]]:
    """Lists of up to `batch_size` lines of `stream` (without their line ends), in order.

    `what` names the stream in messages (the file, or "standard input").
    """
    descriptor = _file_descriptor(stream)
    decoder = Utf8Decoder(what)
    lines: deque[bytes] = deque()  # each with its line end: the decoder counts every byte
    # The unfinished last line, grown in place: `tail + chunk` at each read of a long line copied
    # it again every time (a 50 MB line took 44 s to read).
    tail = bytearray()
    ended = False

    def read_more(wait: bool) -> bool:
        """Read what is there (waiting for input only if `wait`); False if nothing was ready."""
        nonlocal tail, ended
        try:
            if descriptor is None:
                chunk = stream.read(READ_BYTES)
            else:
                if not wait and not select.select([descriptor], [], [], 0)[0]:
                    return False
                chunk = os.read(descriptor, READ_BYTES)
        except OSError as error:
            raise UsageProblem(str(read_failure(what, error))) from None
        if not chunk:
            ended = True
            if tail:
                lines.append(bytes(tail))
                tail = bytearray()
            return True
        tail += chunk
        if b"\n" not in chunk:
            return True
        parts = tail.split(b"\n")
        tail = parts.pop()
        lines.extend(bytes(part) + b"\n" for part in parts)
        return True

    while True:
        batch: list[str] = []
        while len(batch) < batch_size:
            if lines:
                batch.append(_decode_line(decoder, lines.popleft()))
            elif ended or not read_more(wait=not batch) or (batch and not lines and not ended):
                break
        if not batch:
            return
        yield batch
