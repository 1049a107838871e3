"""What every command that writes to stdout shares: escapes, and a pipe that may close."""

from __future__ import annotations

import contextlib
import io
import sys
import time
from typing import cast

from charrnn.cli.console import discard_further_output


def unescape(text: str) -> str:
    """Turn the two escapes users type on a command line (\\n, \\t) into the characters."""
    return text.replace("\\n", "\n").replace("\\t", "\t")


def write_stream(chunks) -> None:
    """Stream text to stdout, flushing at line ends and at least every 50 ms; a closed pipe ends quietly."""
    out = sys.stdout
    # A terminal that cannot show a character gets '?', not a crash (a replaced stdout may lack reconfigure).
    with contextlib.suppress(AttributeError, ValueError):
        cast(io.TextIOWrapper, out).reconfigure(errors="replace")
    last_flush = time.monotonic()
    wrote_anything = ended_with_newline = False
    try:
        for chunk in chunks:
            if not chunk:
                continue
            out.write(chunk)
            wrote_anything, ended_with_newline = True, chunk.endswith("\n")
            now = time.monotonic()
            if "\n" in chunk or now - last_flush > 0.05:
                out.flush()
                last_flush = now
        if out.isatty() and wrote_anything and not ended_with_newline:
            out.write("\n")  # leave the shell prompt on a line of its own
        out.flush()
    except BrokenPipeError:
        # The reader (head, less, ...) has gone: that is a normal end.
        discard_further_output(out)
        sys.exit(0)
