"""The training windows, with every pass over the text after the first shifted by a random offset.

`BatchStream` cuts the same windows on every pass: the same tokens always sit at
the start of a window, where the carried state is freshest, and the same token
pairs are never split across a truncation. `ShiftedPasses` moves every stream's
start by an offset drawn from (seed, pass number) for each pass after the
first, so the cuts fall elsewhere each time. The offset is a pure function of
the seed and the step, which keeps resuming exact without saving anything more
than whether the shift is on.
"""

from __future__ import annotations

import numpy as np

from .data import BatchStream


class ShiftedPasses(BatchStream):
    """`BatchStream` windows; pass 0 as before, later passes start every stream `offset(pass)` tokens later.

    To make room for an offset of up to a window, passes after the first are one
    window shorter (when a stream holds more than one window).
    """

    def __init__(self, tokens: np.ndarray, batch_size: int, seq_len: int, rank: int = 0,
                 world_size: int = 1, seed: int = 0) -> None:
        super().__init__(tokens, batch_size, seq_len, rank, world_size)
        self.seed = seed
        self.first_pass_windows = self.windows_per_epoch
        self.later_pass_windows = max(1, self.windows_per_epoch - 1)
        # Offsets 0..max_offset keep the last stream's last window inside the array.
        self.max_offset = self.stream_len - self.later_pass_windows * seq_len

    def locate(self, index: int) -> tuple[int, int]:
        """The pass that step `index` belongs to, and the window's number within that pass."""
        if index < self.first_pass_windows:
            return 0, index
        later = index - self.first_pass_windows
        return 1 + later // self.later_pass_windows, later % self.later_pass_windows

    def offset(self, pass_number: int) -> int:
        """How many tokens later than in pass 0 every stream starts in this pass (same on every rank)."""
        if pass_number == 0:
            return 0
        generator = np.random.default_rng([self.seed, pass_number])
        return int(generator.integers(0, self.max_offset + 1))

    def starts_epoch(self, index: int) -> bool:
        """True when window `index` is the first of a pass, where streams restart (reset state)."""
        return self.locate(index)[1] == 0

    def window(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Inputs and targets (int64, shape (batch_size, seq_len)) of window `index`."""
        pass_number, within = self.locate(index)
        position = self.offset(pass_number) + within * self.seq_len
        chunk = self.tokens[self._offsets + position].astype(np.int64)
        return chunk[:, :-1], chunk[:, 1:]
