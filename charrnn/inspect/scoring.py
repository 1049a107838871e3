"""Score lines one by one, many at a time: what `charrnn score` streams.

Each line is scored on its own, from a fresh state primed with a newline (as if it began a
line of the corpus), so a score never depends on the lines around it. A line is scored
with its line end: `total_bits` is -log2 of the probability the model gives to the line
followed by a newline, and `bits_per_char` divides it by the characters scored (the
line's, plus one for the newline). So an empty line is scored too, and a name that ends
where names end scores better than one cut short.

Lines are read in blocks, sorted by length within a block, and run as padded batches
(padding goes after a line's end, where it cannot change the line's own predictions),
then given back in input order. A long line is scored alone, encoded a piece at a time and read
a window of tokens at a time (as `--carry-state` reads every line): besides its own text, which
the answer repeats, it costs no more memory than a short one.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from charrnn.data.tokenizer_interface import PIECE_CHARS
from charrnn.data.tokenizers import UNKNOWN_ID, CharTokenizer, Tokenizer
from charrnn.errors import TokenizerError
from charrnn.loss import MAX_CHUNK_LOGITS
from charrnn.model import CharRNN, State, token_windows

BLOCK_LINES = 512  # lines read before they are scored (and written) together
BLOCK_CHARS = 1 << 20  # ... or fewer, when they are long
BATCH_TOKENS = 1 << 15  # rows x padded length of one batch
MAX_BATCH_ROWS = 256
WINDOW = 256  # time steps per forward call: bounds the logits held at once
# A line at least this long is scored alone, a piece at a time (in a batch it would be alone anyway).
LONG_LINE_CHARS = BATCH_TOKENS
IGNORE = -1


@dataclass
class LineScore:
    """The score of one line."""

    line: str
    total_bits: float  # inf when the line has characters the model never saw (and they are kept)
    chars: int  # characters scored: the line's (less any left out) plus its newline
    unknown_chars: int = 0  # characters the model never saw (left out with skip_unknown)

    @property
    def bits_per_char(self) -> float:
        """Bits per character scored (inf for a line the model cannot produce)."""
        return self.total_bits / self.chars if self.chars else math.inf

    def to_dict(self) -> dict:
        """JSON-safe (an infinite score is null)."""
        finite = math.isfinite(self.total_bits)
        return {
            "bits_per_char": self.bits_per_char if finite else None,
            "total_bits": self.total_bits if finite else None,
            "chars": self.chars,
            "unknown_chars": self.unknown_chars,
            "line": self.line,
        }


class LineScorer:
    """Scores lines with one model; holds the primed state every line starts from."""

    def __init__(
        self, model: CharRNN, tokenizer: Tokenizer, device: torch.device, skip_unknown: bool = False
    ) -> None:
        if tokenizer.unencodable("\n"):
            raise TokenizerError("this model never saw a newline, so it cannot score lines")
        self.model, self.tokenizer, self.device = model, tokenizer, torch.device(device)
        self.skip_unknown = skip_unknown
        prime = [int(i) for i in tokenizer.encode("\n")]
        self.prime_last = prime[-1]
        self.prime_state: State | None = None
        if len(prime) > 1:
            with torch.inference_mode():
                _, self.prime_state = model(torch.tensor([prime[:-1]], device=self.device))

    def score(self, lines: Iterable[str], carry_state: bool = False) -> Iterator[LineScore]:
        """A `LineScore` per line, in order, computed a block at a time.

        With `carry_state`, each line is scored after all the lines before it (one stream,
        as the text reads), one line at a time.
        """
        if carry_state:
            yield from self._score_carrying_state(lines)
            return
        block: list[str] = []
        size = 0
        for line in lines:
            block.append(line)
            size += len(line)
            if len(block) >= BLOCK_LINES or size >= BLOCK_CHARS:
                yield from self._score_block(block)
                block, size = [], 0
        if block:
            yield from self._score_block(block)

    # -- one block --------------------------------------------------------------------------

    def _encode(self, line: str) -> tuple[np.ndarray, int]:
        """The ids of the line and its newline, and how many characters are unknown."""
        text = line + "\n"
        if not isinstance(self.tokenizer, CharTokenizer):
            return np.asarray(self.tokenizer.encode(text), dtype=np.int64), 0
        ids = self.tokenizer.ids_or_unknown(text)
        known = ids != UNKNOWN_ID
        return ids[known], int(len(ids) - known.sum())

    def _score_block(self, block: list[str]) -> list[LineScore]:
        scores = [self._blank_score(line, 0) for line in block]
        encoded: dict[int, np.ndarray] = {}
        for index, line in enumerate(block):
            if len(line) >= LONG_LINE_CHARS:
                scores[index] = self._score_alone(line)
                continue
            encoded[index], scores[index].unknown_chars = self._encode(line)
            scores[index].chars = self._chars_scored(line, scores[index].unknown_chars)
        todo = [index for index in encoded if scores[index].unknown_chars == 0 or self.skip_unknown]
        todo.sort(key=lambda index: len(encoded[index]), reverse=True)
        start = 0
        while start < len(todo):
            longest = max(1, len(encoded[todo[start]]))
            rows = max(1, min(MAX_BATCH_ROWS, BATCH_TOKENS // longest, len(todo) - start))
            batch = todo[start : start + rows]
            bits = self._score_batch([encoded[index] for index in batch])
            for index, value in zip(batch, bits):
                scores[index].total_bits = value
            start += rows
        return scores

    def _blank_score(self, line: str, unknown: int) -> LineScore:
        """The score of a line before it is read (infinite: not scored)."""
        return LineScore(
            line=line, total_bits=math.inf, unknown_chars=unknown, chars=self._chars_scored(line, unknown)
        )

    def _chars_scored(self, line: str, unknown: int) -> int:
        # The line's characters and its newline, less those left out by skip_unknown.
        return len(line) + 1 - (unknown if self.skip_unknown else 0)

    # -- a line a piece at a time ---------------------------------------------------------------

    def _count_unknown(self, line: str) -> int:
        """Characters of `line` the model never saw, counted a piece at a time."""
        if not isinstance(self.tokenizer, CharTokenizer):
            return 0
        return sum(
            int((self.tokenizer.ids_or_unknown(line[start : start + PIECE_CHARS]) == UNKNOWN_ID).sum())
            for start in range(0, len(line), PIECE_CHARS)
        )

    def _line_pieces(self, line: str) -> Iterator[np.ndarray]:
        """The ids of the line and its newline (unknown characters left out), a piece at a time."""
        if not isinstance(self.tokenizer, CharTokenizer):
            yield from self.tokenizer.encode_pieces(line + "\n")
            return
        for start in range(0, len(line), PIECE_CHARS):
            ids = self.tokenizer.ids_or_unknown(line[start : start + PIECE_CHARS])
            yield ids[ids != UNKNOWN_ID]
        yield self.tokenizer.ids_or_unknown("\n")

    def _score_alone(self, line: str) -> LineScore:
        """A long line's score, read after the primed newline a window at a time."""
        score = self._blank_score(line, self._count_unknown(line))
        if score.unknown_chars and not self.skip_unknown:
            return score
        nats, _, _ = self._read_pieces(
            self._line_pieces(line), self._expanded_prime_state(1), self.prime_last
        )
        score.total_bits = nats / math.log(2)
        return score

    def _window(self, rows: int) -> int:
        # rows x window x vocabulary logits at once: fewer steps for a big vocabulary.
        return max(1, min(WINDOW, MAX_CHUNK_LOGITS // (rows * self.model.config.vocab_size)))

    def _read_pieces(
        self, pieces: Iterable[np.ndarray], state: State | None, previous: int
    ) -> tuple[float, State | None, int]:
        """Nats of the ids of `pieces` read one stream after token `previous` from `state`, a window
        at a time (the windows of a one-row batch, so a line scores the same either way); also the
        state after them and their last id."""
        total = torch.zeros(1, dtype=torch.float64, device=self.device)
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.inference_mode():
                for targets in token_windows(pieces, self._window(1)):
                    inputs = np.concatenate([[previous], targets[:-1]])
                    previous = int(targets[-1])
                    logits, state = self.model(torch.from_numpy(inputs).to(self.device).unsqueeze(0), state)
                    nats = F.cross_entropy(
                        logits.float().reshape(-1, logits.shape[-1]),
                        torch.from_numpy(targets).to(self.device),
                        reduction="none",
                    )
                    total += nats.view(1, -1).sum(dim=1).double()
        finally:
            self.model.train(was_training)
        return float(total), state, previous

    def _expanded_prime_state(self, rows: int) -> State | None:
        """The primed state, once per row of a batch."""
        if self.prime_state is None:
            return None
        if isinstance(self.prime_state, tuple):
            return tuple(part.expand(-1, rows, -1).contiguous() for part in self.prime_state)  # type: ignore[return-value]
        return self.prime_state.expand(-1, rows, -1).contiguous()

    def _score_batch(self, sequences: list[np.ndarray]) -> list[float]:
        """Total bits of each id sequence, each read after the primed newline."""
        rows, length = len(sequences), max(len(s) for s in sequences)
        targets = np.full((rows, length), IGNORE, dtype=np.int64)
        inputs = np.zeros((rows, length), dtype=np.int64)
        inputs[:, 0] = self.prime_last
        for row, ids in enumerate(sequences):
            targets[row, : len(ids)] = ids
            inputs[row, 1 : len(ids)] = ids[:-1]
        inputs_t = torch.from_numpy(inputs).to(self.device)
        targets_t = torch.from_numpy(targets).to(self.device)
        state = self._expanded_prime_state(rows)
        totals = torch.zeros(rows, dtype=torch.float64, device=self.device)
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.inference_mode():
                window = self._window(rows)
                for begin in range(0, length, window):
                    logits, state = self.model(inputs_t[:, begin : begin + window], state)
                    nats = F.cross_entropy(
                        logits.float().reshape(-1, logits.shape[-1]),
                        targets_t[:, begin : begin + window].reshape(-1),
                        ignore_index=IGNORE,
                        reduction="none",
                    )
                    totals += nats.view(rows, -1).sum(dim=1).double()
        finally:
            self.model.train(was_training)
        return (totals / math.log(2)).tolist()

    def _score_carrying_state(self, lines: Iterable[str]) -> Iterator[LineScore]:
        state, previous = self.prime_state, self.prime_last
        for line in lines:
            pieces: Iterable[np.ndarray]
            if len(line) >= LONG_LINE_CHARS:
                score = self._blank_score(line, self._count_unknown(line))
                pieces = self._line_pieces(line)
            else:
                ids, unknown = self._encode(line)
                score, pieces = self._blank_score(line, unknown), [ids]
            if score.unknown_chars == 0 or self.skip_unknown:
                nats, state, previous = self._read_pieces(pieces, state, previous)
                score.total_bits = nats / math.log(2)
            yield score
