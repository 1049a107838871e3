"""What every command that writes to stdout shares: escapes, and a pipe that may close."""

from __future__ import annotations

import contextlib
import io
import re
import sys
import time
from typing import cast

from charrnn.cli.console import discard_further_output

# The escapes of --stop and --separator: a shell passes '\n' on as a backslash and an n.
ESCAPES = {"n": "\n", "t": "\t", "\\": "\\"}
_ESCAPE = re.compile(r"\\(.)", re.DOTALL)


def unescape(text: str) -> str:
    """Turn the escapes users type on a command line into characters: \\n a newline, \\t a tab,
    \\\\ one backslash (so \\\\n is a backslash and an n). Read left to right; a backslash before
    any other character, or at the end, is itself."""
    return _ESCAPE.sub(lambda match: ESCAPES.get(match.group(1), match.group(0)), text)


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
