"""Picking the next token from NumPy logits, with each sample's own torch random stream.

The draws are those of `choose_next_tokens` (sampling.py): softmax of the
logits over the temperature (top-k / top-p applied first), its cumulative sum,
and the first token whose cumulative probability exceeds a uniform number
from the sample's `torch.Generator` times the total. Only the arithmetic moves
to NumPy, with preallocated buffers, because at batch 1 torch's per-call cost
is larger than the work. A batch of rows and a single row go through the
same element-wise operations, so a sample picks the same tokens alone or in
company.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from charrnn.config import SampleConfig
from charrnn.errors import CheckpointError

UNIFORM_BLOCK = 256


def tempered_logits(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """`logits` over `temperature`, float32, with overflowed rows redone as `TokenChooser` does.

    The torch counterpart of `TokenChooser`'s arithmetic (see `_temper_overflowed_rows`).
    """
    scaled = logits / temperature
    overflowed = ~torch.isfinite(scaled.max(dim=1).values)
    if bool(overflowed.any()):
        rows = logits[overflowed].double()
        scaled[overflowed] = ((rows - rows.max(dim=1, keepdim=True).values) / temperature).float()
    return scaled


def _temper_overflowed_rows(logits: np.ndarray, work: np.ndarray, temperature: float) -> None:
    """Redo, in float64 and with the row's largest logit subtracted first, each row of `work`
    (`logits` over `temperature` in float32) whose largest value is not finite.

    A tiny temperature (1e-40) overflows float32: the largest quotient becomes inf (or nan when
    the temperature itself rounds to 0 in float32), and inf - inf is nan, which sampled the last
    token ("zzzz"). Subtracting the row's largest logit first leaves it at 0 and every other logit
    at or below 0, so nothing can overflow upwards; a quotient that overflows downwards is -inf,
    probability 0, which is the limit. So a tiny temperature writes what `--greedy` writes (the
    largest logit wins), as its limit should. Only such rows are redone, each from its own logits,
    so a row picks the same token alone or in a batch; ordinary temperatures keep their float32
    arithmetic (and the texts their seeds wrote).
    """
    overflowed = np.flatnonzero(~np.isfinite(work.max(axis=1)))
    for row in overflowed:
        values = logits[row].astype(np.float64)
        work[row] = (values - values.max()) / temperature  # -inf: probability 0, the limit


def filtered_logits(logits: torch.Tensor, config: SampleConfig) -> torch.Tensor:
    """`logits` (already over the temperature) with every token outside top-k and top-p set to -inf."""
    if config.top_k is not None and config.top_k < logits.shape[1]:
        kth_best = torch.topk(logits, config.top_k, dim=1).values[:, -1:]
        logits = logits.masked_fill(logits < kth_best, float("-inf"))
    if config.top_p is not None and config.top_p < 1.0:
        # Only the most likely tokens can be kept: rank the top `candidates` (growing until they
        # hold top_p of the mass) instead of sorting a whole vocabulary of 60,000 for each token.
        probs = torch.softmax(logits, dim=1)
        vocab_size = logits.shape[1]
        candidates = min(vocab_size, 64)
        while True:
            if candidates == vocab_size:  # a flat distribution: one full sort
                top_probs, order = torch.sort(probs, dim=1, descending=True)
                break
            top_probs, order = torch.topk(probs, candidates, dim=1)
            if bool((top_probs.sum(dim=1) >= config.top_p).all()):
                break
            candidates = candidates * 8 if candidates * 8 <= vocab_size // 4 else vocab_size
        # Drop a token when the tokens ranked above it already reach top_p. The first one always
        # stays: a top_p below float32's smallest number (1e-46) rounds to 0 in the comparison,
        # which kept nothing, and the -inf row then sampled the last token.
        keep_top = (top_probs.cumsum(dim=1) - top_probs) < config.top_p
        keep_top[:, 0] = True
        keep = torch.zeros_like(probs, dtype=torch.bool).scatter(1, order, keep_top)
        logits = logits.masked_fill(~keep, float("-inf"))
    return logits


class UniformStream:
    """The uniform numbers `torch.rand` would give one at a time from `generator`, drawn 256 at a time.

    torch's CPU generator gives the same numbers to one call for n values as to n calls
    for one value each (a test checks it), so drawing ahead changes nothing but the cost.
    """

    def __init__(self, generator: torch.Generator) -> None:
        self.generator = generator
        self._block = np.empty(0, np.float32)
        self._next = 0

    def next(self) -> np.float32:
        """The next uniform number in [0, 1), float32."""
        if self._next == len(self._block):
            self._block = torch.rand(UNIFORM_BLOCK, generator=self.generator).numpy()
            self._next = 0
        value = self._block[self._next]
        self._next += 1
        return value


class TokenChooser:
    """Greedy, temperature, top-k and top-p choice for a batch of logits rows, one uniform stream per row."""

    def __init__(self, config: SampleConfig) -> None:
        self.greedy = config.greedy or config.top_k == 1
        # A temperature beyond float32's range (1e308) would overflow when NumPy casts it for the
        # division; float32's largest number divides every logit down to the same exp() of 1.0 as
        # any larger temperature: the uniform choice that is the limit of a huge temperature.
        temperature = min(config.temperature, float(np.finfo(np.float32).max))
        self.temperature = None if temperature == 1.0 else temperature
        self.filtered = (config.top_k is not None) or (config.top_p is not None and config.top_p < 1.0)
        self.config = config
        self._work = np.empty((0, 0), np.float32)
        self._one_token = np.zeros(1, np.int64)  # reused: the caller reads it before the next choice

    def choose(self, logits: np.ndarray, streams: Sequence[UniformStream]) -> np.ndarray:
        """One token id per row of `logits` (batch, vocab); row r draws from `streams[r]`.

        Logits that are not finite (a model whose weights overflow float32) are one
        `CheckpointError`, not a token: they sampled the last token ("zzzz") or gave NaN log-probabilities.
        """
        if self.greedy:
            tokens = logits.argmax(axis=1)
            # argmax takes a nan for the largest: the chosen values tell whether the row was sound.
            if not np.isfinite(logits[np.arange(len(tokens)), tokens]).all():
                raise _overflowed()
            return tokens
        # Overflow below is meant: a logit so far under the largest that it overflows (or a
        # temperature so small that it does, see `_temper_overflowed_rows`) has probability 0;
        # an inf or nan logit is caught by the totals, so NumPy's warnings would only be noise.
        with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
            return self._draw(logits, streams)

    def _draw(self, logits: np.ndarray, streams: Sequence[UniformStream]) -> np.ndarray:
        if self._work.shape != logits.shape:
            self._work = np.empty(logits.shape, np.float32)
        work, source = self._work, logits
        if self.temperature is not None:
            np.divide(logits, self.temperature, out=work)
            if self.temperature < 1:  # only a temperature below 1 can overflow float32
                _temper_overflowed_rows(logits, work, self.temperature)
            source = work
        if self.filtered:
            work[...] = filtered_logits(torch.from_numpy(np.array(source)), self.config).numpy()
            source = work
        last = logits.shape[1] - 1
        if len(streams) == 1:
            # One row: the same element-wise steps on 1-D views, without the batch's reductions.
            row, source_row = work[0], source[0]
            np.subtract(source_row, source_row.max(), out=row)
            np.exp(row, out=row)
            row.cumsum(out=row)
            # The largest logit contributes exp(0) = 1 and each other at most 1: a total outside
            # 1..vocab means a logit that was inf or nan.
            if not 1 <= row[last] < np.inf:
                raise _overflowed()
            target = streams[0].next() * row[last]
            self._one_token[0] = min(int(row.searchsorted(target, side="right")), last)
            return self._one_token
        np.subtract(source, source.max(axis=1, keepdims=True), out=work)
        np.exp(work, out=work)
        np.cumsum(work, axis=1, out=work)
        totals = work[:, last]
        if not ((totals >= 1) & (totals < np.inf)).all():  # as for one row
            raise _overflowed()
        targets = np.fromiter((stream.next() for stream in streams), np.float32, len(streams))
        np.multiply(targets, work[:, last], out=targets)
        # For a nondecreasing row, "how many entries are <= target" is searchsorted(side="right").
        return np.minimum((work <= targets[:, None]).sum(axis=1), last)


def _overflowed() -> CheckpointError:
    return CheckpointError(
        "the model's next-token scores are not finite numbers: its weights are too large for "
        "float32 arithmetic (a damaged checkpoint)"
    )


def log2_probabilities(logits: np.ndarray, tokens: np.ndarray) -> list[float]:
    """log2 of the probability (temperature 1) each row of `logits` gave its token."""
    rows = logits.astype(np.float64)
    top = rows.max(axis=1, keepdims=True)
    log_total = np.log(np.exp(rows - top).sum(axis=1)) + top[:, 0]
    chosen = rows[np.arange(len(tokens)), tokens]
    return ((chosen - log_total) / np.log(2.0)).tolist()
