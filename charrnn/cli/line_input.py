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
from collections.abc import Callable, Iterator
from typing import BinaryIO

from charrnn.data.reader import Utf8Decoder, read_failure
from charrnn.errors import CharrnnError, CorpusError, UsageProblem

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


def read_line_batches(
    stream: BinaryIO,
    batch_size: int,
    what: str,
    check: Callable[[str, int], None] | None = None,
) -> Iterator[list[str]]:
    """Lists of up to `batch_size` lines of `stream` (without their line ends), in order.

    `what` names the stream in messages (the file, or "standard input"). `check(line, number)`
    (numbers from 1) raises a `CharrnnError` for a line that cannot be completed. A bad line
    (not UTF-8, or refused by `check`) ends the batch before it: that batch is yielded whole,
    and the error is raised only when the next batch is asked for, so the completions of every
    line before the bad one are written first.
    """
    descriptor = _file_descriptor(stream)
    decoder = Utf8Decoder(what)
    lines: deque[bytes] = deque()  # each with its line end: the decoder counts every byte
    # The start of a line still without its end, in pieces: joined once, when the end comes
    # (joining at every read would copy a long line once per read).
    tail: list[bytes] = []
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
                lines.append(b"".join(tail))
                tail = []
            return True
        if b"\n" not in chunk:
            tail.append(chunk)
            return True
        parts = chunk.split(b"\n")
        tail.append(parts[0])
        lines.append(b"".join(tail) + b"\n")
        lines.extend(part + b"\n" for part in parts[1:-1])
        tail = [parts[-1]] if parts[-1] else []
        return True

    number = 0
    while True:
        batch: list[str] = []
        bad_line: CharrnnError | None = None
        while len(batch) < batch_size:
            if lines:
                number += 1
                try:
                    line = _decode_line(decoder, lines.popleft())
                    if check is not None:
                        check(line, number)
                except CharrnnError as error:
                    bad_line = error
                    break
                batch.append(line)
            elif ended or not read_more(wait=not batch) or (batch and not lines and not ended):
                break
        if batch:
            yield batch
        if bad_line is not None:
            raise bad_line
        if not batch:
            return
