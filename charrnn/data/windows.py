"""The windows training and evaluation read from a token array.

`BatchStream`: contiguous streams cut into windows of `seq_len` tokens, window i of every
stream following window i-1 of that stream, which is what lets training carry the hidden
state across windows. `EvaluationWindows`: every token predicted once.

Stream groups. The text is cut into `batch_size * stream_groups` streams (per process), and a
step trains one group of `batch_size` of them: step i trains group i % stream_groups, on that
group's next window. Group g holds streams g, g + G, g + 2G, ..., spread over the whole text, so
at every point of a pass the model is reading every part of the text. With one group (the layout
before groups existed) each stream holds a contiguous 1/B of the text, read in order over the
pass: the last part of the training text is then only ever read at the end of a pass, and the
validation loss rose and fell with each pass as that part (next to the validation split) came
round (docs/experiments/2026-12-04-validation-over-a-pass.md). Each group carries its own hidden
state; the trainer keeps one per group.

Every pass over the text after the first is shifted by a random offset. `BatchStream` cuts the
same windows on every pass: the same tokens always sit at the start of a window, where the
carried state is freshest, and the same token pairs are never split across a truncation.
`ShiftedPasses` moves every stream's start by an offset drawn from (seed, pass number) for each
pass after the first, so the cuts fall elsewhere each time. The offset is a pure function of the
seed and the step, which keeps resuming exact without saving anything more than whether the
shift is on.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np

from charrnn.errors import CorpusError


def fit_stream_layout(
    num_tokens: int, batch_size: int, stream_groups: int, seq_len: int, world_size: int = 1
) -> tuple[int, int]:
    """The largest (batch per process, stream groups) within the asked ones that gives every
    stream one whole window: the groups are lowered first, then the batch.

    Raises `CorpusError` when even one stream per process is shorter than a window.
    """
    if num_tokens - 1 < seq_len * world_size:
        raise CorpusError(
            f"the training part of the corpus has {num_tokens} tokens, shorter than one "
            f"training window (--seq-len {seq_len}"
            f"{f' x {world_size} processes' if world_size > 1 else ''}): "
            "use a longer corpus or a smaller --seq-len"
        )
    streams_per_process = (num_tokens - 1) // (seq_len * world_size)
    if streams_per_process >= batch_size:
        return batch_size, min(stream_groups, streams_per_process // batch_size)
    return streams_per_process, 1


class BatchStream:
    """Truncated-BPTT windows over `batch_size * stream_groups` contiguous streams of a token array.

    The array is cut into `batch_size * stream_groups * world_size` equal streams. Step `index`
    trains group `index % stream_groups` (see `group_of`); of each group's streams, this process
    (rank) owns `batch_size` consecutive ones, so the ranks' windows side by side are the
    one-process windows. `window(i)` returns inputs and next-token targets of shape
    (batch_size, seq_len). The array may be a NumPy memmap: only the rows a window needs are read.
    """

    def __init__(
        self,
        tokens: np.ndarray,
        batch_size: int,
        seq_len: int,
        rank: int = 0,
        world_size: int = 1,
        stream_groups: int = 1,
    ) -> None:
        total_streams = batch_size * stream_groups * world_size
        self.tokens = tokens
        self.batch_size = batch_size
        self.seq_len = seq_len
        self.stream_groups = stream_groups
        self.stream_len = (len(tokens) - 1) // total_streams
        self.windows_per_stream = self.stream_len // seq_len
        if self.windows_per_stream < 1:
            raise CorpusError(
                f"{len(tokens)} tokens cannot make {total_streams} streams of one {seq_len}-token window each"
            )
        # Steps in a pass: every group reads each of its windows once.
        self.windows_per_epoch = self.windows_per_stream * stream_groups
        # Group g's streams, in the order of the global batch: g, g + G, g + 2G, ...; this rank's
        # block of them is the one at rank * batch_size.
        global_batch = np.arange(rank * batch_size, (rank + 1) * batch_size)
        self._offsets = [
            ((global_batch * stream_groups + group) * self.stream_len)[:, None]
            + np.arange(seq_len + 1)[None, :]
            for group in range(stream_groups)
        ]

    def locate(self, index: int) -> tuple[int, int]:
        """The pass that step `index` belongs to, and the step's number within that pass."""
        return index // self.windows_per_epoch, index % self.windows_per_epoch

    def offset(self, pass_number: int) -> int:
        """How many tokens later than in pass 0 every stream starts in this pass (0: never shifted)."""
        return 0

    def group_of(self, index: int) -> int:
        """The stream group step `index` trains (each group carries its own hidden state)."""
        return self.locate(index)[1] % self.stream_groups

    def starts_epoch(self, index: int) -> bool:
        """True when step `index` reads its group's first window of a pass (reset that group's state)."""
        return self.locate(index)[1] < self.stream_groups

    def window(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Inputs and targets (int64, shape (batch_size, seq_len)) of step `index`."""
        pass_number, within = self.locate(index)
        group, window_of_stream = within % self.stream_groups, within // self.stream_groups
        position = self.offset(pass_number) + window_of_stream * self.seq_len
        chunk = self.tokens[self._offsets[group] + position].astype(np.int64)
        return chunk[:, :-1], chunk[:, 1:]


IGNORE_TARGET = -1


class EvaluationWindows:
    """Windows that predict every token of `tokens` after the first, exactly once.

    The array is cut into `num_streams` contiguous streams and the state is
    carried from window to window, as in training. With `warmup` > 0 the
    first window holds, for each stream, the tokens just before its start,
    so that no stream but the first begins cold; its targets are all
    `IGNORE_TARGET` and the caller should clear the state of row
    `cold_row` after it (`first_is_warmup`). The tail of the last stream is
    padded with `IGNORE_TARGET`, which the loss skips.

    Windows are cut from `tokens` on demand (it may be a memmap), and with
    `world_size` > 1 this process (rank) gets a contiguous block of the
    streams: the ranks' windows together are exactly the one-process windows.

    With a `limit` below the number of predictions, only about `limit` tokens are
    predicted: the streams become pieces of `limit / num_streams` tokens spread evenly
    over the whole array, each warmed up on the text just before it. A big corpus's
    split is often many documents one after another (a code base's files, a chat log's
    days); its first `limit` tokens would be a few of them, and a model that drifts
    towards what it read last would score very differently from one evaluation to the next.
    """

    def __init__(
        self,
        tokens: np.ndarray,
        num_streams: int,
        window_len: int,
        warmup: int = 0,
        rank: int = 0,
        world_size: int = 1,
        limit: int = 0,
    ) -> None:
        self.tokens = tokens
        self.num_predictions = len(tokens) - 1
        sampled = 0 < limit < self.num_predictions
        self.num_streams = max(1, min(num_streams, limit if sampled else self.num_predictions))
        # A sample never predicts more than `limit` tokens (the pieces round down).
        self.stream_len = (
            limit // self.num_streams if sampled else math.ceil(self.num_predictions / self.num_streams)
        )
        # Tokens from one stream's start to the next: the stream's own length when the streams
        # cover the array end to end, more when they are pieces spread over it.
        self.stride = self.num_predictions // self.num_streams if sampled else self.stream_len
        self.window_len = window_len
        # One warm-up window at most, no longer than the others (bounded memory for large vocabularies).
        self.warmup = min(warmup, self.stream_len, window_len) if self.num_streams > 1 else 0
        self.first_is_warmup = self.warmup > 0
        per_rank = math.ceil(self.num_streams / world_size)
        first = min(self.num_streams, rank * per_rank)
        self.streams = np.arange(first, min(self.num_streams, first + per_rank))
        # Only the stream that starts the text must start cold after the warm-up window.
        self.cold_row: int | None = 0 if len(self.streams) and self.streams[0] == 0 else None

    def __len__(self) -> int:
        """Number of windows this rank yields (0 when it owns no stream)."""
        if not len(self.streams):
            return 0
        return math.ceil(self.stream_len / self.window_len) + (1 if self.first_is_warmup else 0)

    def scored_spans(self) -> list[tuple[int, int]]:
        """The (first, end) positions in `tokens` of the targets each stream predicts (every rank's)."""
        spans = []
        for stream in range(self.num_streams):
            first = stream * self.stride
            spans.append((first + 1, min(first + self.stream_len, self.num_predictions) + 1))
        return spans

    def _cut(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        valid = positions < self.num_predictions
        clipped = np.where(valid, positions, 0)
        inputs = np.where(valid, self.tokens[clipped].astype(np.int64), 0)
        targets = np.where(valid, self.tokens[clipped + 1].astype(np.int64), IGNORE_TARGET)
        return inputs, targets

    def _warmup_window(self) -> tuple[np.ndarray, np.ndarray]:
        # Each stream is warmed up on the text just before it; the first stream on zeros.
        positions = self.streams[:, None] * self.stride + np.arange(-self.warmup, 0)[None, :]
        context, _ = self._cut(np.where(positions >= 0, positions, self.num_predictions))
        return context, np.full_like(context, IGNORE_TARGET)

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        if not len(self.streams):
            return
        if self.first_is_warmup:
            yield self._warmup_window()
        starts = self.streams[:, None] * self.stride
        for start in range(0, self.stream_len, self.window_len):
            end = min(start + self.window_len, self.stream_len)
            yield self._cut(starts + np.arange(start, end)[None, :])


class ShiftedPasses(BatchStream):
    """`BatchStream` windows; pass 0 as before, later passes start every stream `offset(pass)` tokens later.

    To make room for an offset of up to a window, passes after the first are one
    window per stream shorter (when a stream holds more than one window).
    """

    def __init__(
        self,
        tokens: np.ndarray,
        batch_size: int,
        seq_len: int,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        stream_groups: int = 1,
    ) -> None:
        super().__init__(tokens, batch_size, seq_len, rank, world_size, stream_groups)
        self.seed = seed
        later_windows_per_stream = max(1, self.windows_per_stream - 1)
        # Steps in the first pass and in each later one.
        self.first_pass_windows = self.windows_per_epoch
        self.later_pass_windows = later_windows_per_stream * stream_groups
        # Offsets 0..max_offset keep the last stream's last window inside the array.
        self.max_offset = self.stream_len - later_windows_per_stream * seq_len

    def locate(self, index: int) -> tuple[int, int]:
        """The pass that step `index` belongs to, and the step's number within that pass."""
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
