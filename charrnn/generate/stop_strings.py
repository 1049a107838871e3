"""Stop strings: find them in text that arrives a piece at a time, holding back as little as possible.

A stop string can span several tokens, or sit inside one subword piece, so the
search runs on the decoded text, not on token ids. Text that might still turn
out to be the start of a stop string is held back; everything else is released
at once, so a sample streams as it is written.
"""

from __future__ import annotations

from collections.abc import Sequence


class StopMatcher:
    """Releases the text of one sample up to (and without, unless `keep_stop`) the first stop string."""

    def __init__(self, stops: Sequence[str], keep_stop: bool = False) -> None:
        self.stops = tuple(stops)
        self.keep_stop = keep_stop
        self._longest_hold = max((len(stop) for stop in self.stops), default=1) - 1
        self._pending = ""

    def feed(self, text: str) -> tuple[str, str | None]:
        """Add text; return what may be written now, and the stop string if one has just completed.

        Once a stop string is returned, the sample is over: the text returned with it
        is the last of the sample.
        """
        if not self.stops:
            return text, None
        pending = self._pending + text
        # The stop string completed first ends the sample (on a tie, the longer one).
        found_at, found, found_end = -1, None, 0
        for stop in self.stops:
            position = pending.find(stop)
            end = position + len(stop)
            if position >= 0 and (found is None or (end, position) < (found_end, found_at)):
                found_at, found, found_end = position, stop, end
        if found is not None:
            self._pending = ""
            return pending[:found_at] + (found if self.keep_stop else ""), found
        held = self._held_suffix_length(pending)
        self._pending = pending[len(pending) - held :]
        return pending[: len(pending) - held], None

    def finish(self) -> str:
        """The text still held back, when the sample ends for another reason (its length)."""
        rest, self._pending = self._pending, ""
        return rest

    def _held_suffix_length(self, text: str) -> int:
        # The longest end of `text` that begins some stop string: it must wait for more text.
        for length in range(min(len(text), self._longest_hold), 0, -1):
            suffix = text[-length:]
            if any(stop.startswith(suffix) for stop in self.stops):
                return length
        return 0
