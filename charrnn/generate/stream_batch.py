"""Independent streams stepped together: a batch that streams join and leave at any step.

`charrnn sample` writes a batch that starts together and shares its options. A server gets
requests one at a time, each with its own prompt, temperature, stop strings and length, and
a client may go away at any moment. `StreamBatch` keeps such streams side by side: every
`step()` picks one token for each stream (each with its own options and its own random
generator) and runs one batched time step for all of them (`RecurrentStepper`, or `OnnxStepper`
for an exported `.onnx` model, as `charrnn sample` picks); a new stream
joins before the next step, and a finished or cancelled one leaves at once.

A stream is exactly a sample of `charrnn sample` with the same prompt, options and seed:
it is warmed up alone on its prompt (`model.read_tokens`, as the sampler does), its tokens
are drawn by `TokenChooser` from its own generator's uniform numbers, and a row of the
batched step computes what the same row alone computes. So its text does not depend on
which other streams share the batch, and a seed reproduces it.
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from charrnn.config import SampleConfig
from charrnn.data.tokenizers import Tokenizer
from charrnn.generate.sampler import concatenate_states, new_stepper, silent_token_ids, start_tokens
from charrnn.generate.stop_strings import StopMatcher
from charrnn.generate.token_choice import TokenChooser, UniformStream
from charrnn.model import CharRNN, State, read_tokens

WARM_CACHE_ENTRIES = 64  # prompts whose reading is kept (a state and a logits row each)
WARM_CACHE_MAX_CHARS = 4096  # longer prompts are read each time
FINISHED_AT_STOP = "stop"
FINISHED_AT_LENGTH = "length"
CANCELLED = "cancelled"


@dataclass
class TokenLogprob:
    """One written token: its text, where it starts in the completion, and the model's log-probabilities."""

    text: str
    offset: int  # characters of the completion before this token
    logprob: float  # natural log of the probability the model (temperature 1) gave it
    top: dict[str, float]  # the most likely tokens at this position and their log-probabilities


@dataclass
class StreamUpdate:
    """What one step did for one stream: the text now released, its tokens, and whether it ended."""

    stream: Stream
    text: str
    tokens: list[TokenLogprob] = field(default_factory=list)
    finish_reason: str | None = None


def _choice_key(config: SampleConfig) -> tuple:
    return (config.greedy or config.top_k == 1, config.temperature, config.top_k, config.top_p)


class Stream:
    """One text being written: its prompt, options, seed and how far it has got.

    `config` supplies temperature, top_k, top_p, greedy and the stop strings (its length,
    prime and seed fields are not read); `max_tokens` ends the stream after that many tokens
    (for a character model, characters: `charrnn sample --length`). A prompt character the
    model never saw raises `UsageProblem` naming it.
    """

    def __init__(
        self,
        tokenizer: Tokenizer,
        prompt: str,
        config: SampleConfig,
        seed: int,
        max_tokens: int,
        logprobs: int | None = None,
        tag: Any = None,
    ) -> None:
        self.prompt, self.config, self.seed, self.max_tokens = prompt, config, seed, max_tokens
        self.logprobs = logprobs
        self.tag = tag  # the owner's label (the server: the choice's index)
        self.sink: Any = None  # where the runner sends this stream's updates (the server's request)
        self.generator = torch.Generator().manual_seed(seed)
        self.start_ids, self.echo = start_tokens(tokenizer, prompt, self.generator)
        self.uniforms = UniformStream(self.generator)
        self.decoder = tokenizer.stream_decoder()
        self.matcher = StopMatcher(config.stop, config.keep_stop)
        self.choice_key = _choice_key(config)
        self.tokens_written = 0
        self.decoded_chars = 0  # characters decoded so far (some may still be held back)
        self.released_chars = 0  # characters handed out
        self.finish_reason: str | None = None
        self.cancelled = False  # set by `StreamBatch.cancel`, from any thread
        self._held_tokens: deque[TokenLogprob] = deque()

    def start_pieces(self, tokenizer: Tokenizer) -> Iterable[np.ndarray]:
        """The ids the model reads before writing, a piece at a time."""
        if self.start_ids is not None:
            return [self.start_ids]
        return tokenizer.encode_pieces(self.prompt)

    def _released_tokens(self, final: bool) -> list[TokenLogprob]:
        # A token goes out with the first of its characters that is released; those of text
        # that turned into a stop string never do.
        out = []
        while self._held_tokens:
            token = self._held_tokens[0]
            if token.offset < self.released_chars or (not token.text and token.offset <= self.released_chars):
                out.append(self._held_tokens.popleft())
            else:
                break
        if final:
            self._held_tokens.clear()
        return out


class StreamBatch:
    """Streams written side by side, one batched step at a time (not thread-safe: one thread steps it,
    except `cancel`, which any thread may call)."""

    def __init__(self, model: CharRNN, tokenizer: Tokenizer) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.stepper = new_stepper(model)  # NumPy, or onnxruntime for an exported model, as `sample` does
        self.banned = silent_token_ids(tokenizer)
        self.stepper.ban_tokens(self.banned)
        self.streams: list[Stream] = []
        self._logits = np.zeros((0, model.config.vocab_size), np.float32)  # each stream's next-token logits
        self._choosers: dict[tuple, TokenChooser] = {}
        # Prompts read lately, (logits, state) by start ids: a page or a client that sends the same
        # prompt again joins without reading it again (the numbers are the same either way).
        self._warmed: OrderedDict[tuple, tuple[np.ndarray, State]] = OrderedDict()

    def __len__(self) -> int:
        return len(self.streams)

    def add(self, streams: Sequence[Stream]) -> None:
        """Let these streams join: each reads its prompt alone, then writes from the next step on."""
        if not streams:
            return
        states: list[State] = [self.stepper.state()] if self.streams else []
        rows = [self._logits] if self.streams else []
        for stream in streams:
            row, state = self._warm(stream)
            rows.append(row)
            states.append(state)
        self.stepper.load_state(concatenate_states(states))
        self._logits = np.concatenate(rows)
        self.streams.extend(streams)

    def _warm(self, stream: Stream) -> tuple[np.ndarray, State]:
        key = None
        if stream.start_ids is not None:
            key = ("ids", *stream.start_ids.tolist())
        elif len(stream.prompt) <= WARM_CACHE_MAX_CHARS:
            key = ("text", stream.prompt)
        if key is not None and key in self._warmed:
            self._warmed.move_to_end(key)
            return self._warmed[key]
        last_logits, state = read_tokens(self.model, stream.start_pieces(self.tokenizer))
        row = last_logits.float().numpy().copy()
        if self.banned:
            row[:, self.banned] = float("-inf")
        if key is not None:
            self._warmed[key] = (row, state)
            if len(self._warmed) > WARM_CACHE_ENTRIES:
                self._warmed.popitem(last=False)
        return row, state

    @staticmethod
    def cancel(stream: Stream) -> None:
        """Have `stream` leave the batch before the next step (safe from any thread)."""
        stream.cancelled = True

    def step(self) -> list[StreamUpdate]:
        """One token for every stream, then one batched time step; returns an update per stream.

        A cancelled stream gets an update with finish_reason "cancelled" and writes nothing more.
        """
        updates: list[StreamUpdate] = []
        cancelled = [row for row, stream in enumerate(self.streams) if stream.cancelled]
        if cancelled:
            for row in cancelled:
                self.streams[row].finish_reason = CANCELLED
                updates.append(StreamUpdate(self.streams[row], "", finish_reason=CANCELLED))
            self._keep([row for row, stream in enumerate(self.streams) if not stream.cancelled])
        if not self.streams:
            return updates
        tokens = self._choose()
        kept = []
        for row, stream in enumerate(self.streams):
            updates.append(self._advance(stream, self._logits[row], int(tokens[row])))
            if stream.finish_reason is None:
                kept.append(row)
        if len(kept) < len(self.streams):
            self._keep(kept)
            tokens = tokens[kept]
        if self.streams:
            self._logits = np.array(self.stepper.step(tokens))
        return updates

    def _keep(self, rows: list[int]) -> None:
        self.streams = [self.streams[row] for row in rows]
        self._logits = self._logits[rows]
        if rows:
            self.stepper.keep_rows(rows)

    def _choose(self) -> np.ndarray:
        # Rows that share options are drawn together; each row still draws from its own stream,
        # and `TokenChooser` picks the same token for a row alone or in a batch.
        tokens = np.empty(len(self.streams), np.int64)
        groups: dict[tuple, list[int]] = {}
        for row, stream in enumerate(self.streams):
            groups.setdefault(stream.choice_key, []).append(row)
        for key, rows in groups.items():
            chooser = self._choosers.get(key)
            if chooser is None:
                chooser = self._choosers[key] = TokenChooser(self.streams[rows[0]].config)
            streams = [self.streams[row].uniforms for row in rows]
            tokens[rows] = chooser.choose(self._logits[rows], streams)
        return tokens

    def _advance(self, stream: Stream, logits: np.ndarray, token: int) -> StreamUpdate:
        stream.tokens_written += 1
        piece = stream.decoder.feed(token)
        if stream.logprobs is not None:
            stream._held_tokens.append(self._token_logprob(logits, token, piece, stream))
        stream.decoded_chars += len(piece)
        text, stop = stream.matcher.feed(piece) if piece else ("", None)
        if stop is not None:
            stream.finish_reason = FINISHED_AT_STOP
        elif stream.tokens_written >= stream.max_tokens:
            text += stream.matcher.finish()
            stream.finish_reason = FINISHED_AT_LENGTH
        stream.released_chars += len(text)
        released = stream._released_tokens(final=stream.finish_reason is not None)
        return StreamUpdate(stream, text, released, stream.finish_reason)

    def _token_logprob(self, logits: np.ndarray, token: int, piece: str, stream: Stream) -> TokenLogprob:
        values = logits.astype(np.float64)
        top_value = values.max()
        log_total = math.log(float(np.exp(values - top_value).sum())) + top_value
        top: dict[str, float] = {}
        if stream.logprobs:
            best = np.argsort(-values, kind="stable")[: stream.logprobs]
            for candidate in best.tolist():
                if np.isfinite(values[candidate]):
                    text = self.tokenizer.decode([candidate])
                    top.setdefault(text, float(values[candidate] - log_total))
        return TokenLogprob(piece, stream.decoded_chars, float(values[token] - log_total), top)
