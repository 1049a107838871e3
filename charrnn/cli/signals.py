"""Ctrl-C and SIGTERM during `charrnn train`: the first saves and stops, a second SIGINT stops at once.

Only the command line installs signal handlers (Python allows them in the main thread alone);
the library is asked to stop through its `should_stop` callback, which `StopRequest` is.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from typing import Any

from charrnn.cli.console import StderrConsole

# Keyed by plain numbers too: a handler is given the signal's number as an int.
EXIT_CODE_FOR_SIGNAL: dict[int, int] = {signal.SIGINT: 130, signal.SIGTERM: 143}


class StopRequest:
    """Set by SIGINT/SIGTERM: the first asks the loop to save and stop, a second SIGINT stops at once.

    Also set when the reader of stderr goes away (`charrnn train ... 2>&1 | head`): like
    `sample | head`, the command then ends, but it saves first, so `--resume` loses nothing.
    """

    def __init__(self, console: StderrConsole) -> None:
        self.signal_number: int | None = None
        self._console = console
        self._previous: dict[signal.Signals, Any] = {}

    @property
    def reader_gone(self) -> bool:
        """True once the console found nobody reading stderr any more."""
        return self._console.reader_gone

    @property
    def exit_code(self) -> int:
        """The exit code of a run stopped by this request: 128 + the signal's number, as a shell expects."""
        if self.signal_number is None:  # no signal: stopped because stderr's reader went away
            return EXIT_CODE_FOR_SIGNAL[signal.SIGINT]
        return EXIT_CODE_FOR_SIGNAL.get(self.signal_number, EXIT_CODE_FOR_SIGNAL[signal.SIGINT])

    def __call__(self) -> bool:
        return self.signal_number is not None or self.reader_gone

    def handle(self, signal_number: int, frame: object = None) -> None:
        """The signal handler: note the first signal and say so; a second SIGINT raises KeyboardInterrupt."""
        if self.signal_number is not None and signal_number == signal.SIGINT:
            raise KeyboardInterrupt  # second Ctrl-C: stop now; the last checkpoint is intact
        self.signal_number = signal_number
        self._console.print(
            "stopping after this step and saving (Ctrl-C again to stop at once)", markup=False
        )

    @contextlib.contextmanager
    def installed(self, watch_termination: bool = False) -> Iterator[StopRequest]:
        """Handle SIGINT and SIGTERM for the duration of the block (main thread only).

        `watch_termination` (torchrun workers) also makes sure a SIGTERM ends the process within a
        grace period even when it is blocked in a collective with a dead peer.
        """
        from charrnn.distributed import TerminationWatchdog

        for number in (signal.SIGINT, signal.SIGTERM):
            self._previous[number] = signal.signal(number, self.handle)
        watchdog = TerminationWatchdog() if watch_termination else None
        if watchdog is not None:
            watchdog.install()
        try:
            yield self
        finally:
            if watchdog is not None:
                watchdog.uninstall()
            for number, handler in self._previous.items():
                signal.signal(number, handler)
            self._previous.clear()
