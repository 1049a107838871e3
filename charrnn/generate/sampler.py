"""Writing text with a trained model, one token at a time. No printing here.

Samples are generated side by side as one batch, each with its own random
generator and seed, so a sample is the same whatever company it keeps: the
record of any sample (`SampleRecord.seed`) reproduces it alone. A sample ends
at a stop string or at its length; finished samples leave the batch, so they
do not slow down the others. The time step itself is `RecurrentStepper`.

A prime is read through the model a window of tokens at a time (`model.read_tokens`), keeping
only the recurrent state: a prime of a megabyte, or an `--each-line` line of ten, costs the
memory of its text, not of the model's work on every one of its characters.
"""

from __future__ import annotations

import dataclasses
import hashlib
import secrets
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import cast

import numpy as np
import torch

from charrnn.config import SampleConfig
from charrnn.data.tokenizers import Tokenizer, describe_char
from charrnn.errors import UsageProblem
from charrnn.export.runtime import OnnxCharRNN, OnnxStepper
from charrnn.generate.blas_threads import blas_threads_restored
from charrnn.generate.stepper import RecurrentStepper
from charrnn.generate.stop_strings import StopMatcher
from charrnn.generate.token_choice import (
    TokenChooser,
    UniformStream,
    filtered_logits,
    log2_probabilities,
    tempered_logits,
)
from charrnn.model import CharRNN, State, read_tokens

__all__ = [
    "RecurrentStepper",
    "SampleRecord",
    "choose_next_tokens",
    "generate_records",
    "generate_text",
    "sample_seed",
    "draw_seed",
    "silent_token_ids",
]

STOPPED_AT_STOP_STRING = "stop"
STOPPED_AT_LENGTH = "length"


@dataclass
class SampleRecord:
    """One finished sample, with what it takes to write it again exactly."""

    index: int  # position among the samples (or input lines) of the run
    prime: str  # the text the model was warmed up with ("" = the start of a line)
    text: str  # what the model wrote after the prime (without the stop string)
    stop_reason: str  # "stop" (a stop string) or "length" (--length reached)
    stop: str | None  # the stop string that ended it
    chars: int  # characters of `text`
    log2_prob: float  # log2 of the probability the model (temperature 1) gave every token it sampled
    seed: int  # `--seed` that writes this sample alone (same prime and options)

    def to_dict(self) -> dict:
        """The record as JSON-safe values."""
        return dataclasses.asdict(self)


def draw_seed() -> int:
    """A fresh random seed for an unseeded run (62 bits: a valid --seed)."""
    return secrets.randbits(62)


def sample_seed(run_seed: int, index: int) -> int:
    """The seed of sample `index` of a run seeded with `run_seed`.

    The first sample uses the run seed itself, so `--seed S` alone writes it; the
    others get seeds derived by hashing, each written in its record.
    """
    if index == 0:
        return run_seed
    digest = hashlib.blake2b(f"{run_seed}/{index}".encode("ascii"), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def silent_token_ids(tokenizer: Tokenizer) -> list[int]:
    """Ids that decode to no text at all (sentencepiece's <unk> and control ids).

    Encoding never produces them, but a model still gives them a little probability;
    sampling one writes nothing, and a model that prefers them would loop without
    output, so sampling never picks them.
    """
    return [token for token in range(tokenizer.vocab_size) if tokenizer.decode([token]) == ""]


def check_stops(tokenizer: Tokenizer, stops: Sequence[str]) -> None:
    """Refuse a stop string the model can never write (characters outside its vocabulary)."""
    for stop in stops:
        missing = tokenizer.unencodable(stop)
        if missing:
            shown = ", ".join(describe_char(char) for char in missing[:10])
            raise UsageProblem(f"--stop {stop!r} can never be written: the model never saw {shown}")


def choose_next_tokens(
    logits: torch.Tensor, config: SampleConfig, generator: torch.Generator | Sequence[torch.Generator]
) -> torch.Tensor:
    """Pick one token per row of `logits` (batch, vocab) by greedy, temperature, top-k and top-p.

    `generator` is one generator for the whole batch, or one per row (then each row's
    draw depends on its own generator only). Sampling itself uses `TokenChooser`, the same
    draws on NumPy buffers; this torch version is its reference (tests compare the two).
    """
    if config.greedy or config.top_k == 1:
        return logits.argmax(dim=1)
    logits = filtered_logits(tempered_logits(logits, config.temperature), config)
    # Inverse-CDF sampling: a quarter of torch.multinomial's cost at batch 1. `right=True`
    # never lands on a token whose probability is zero.
    cumulative = torch.softmax(logits, dim=1).cumsum_(dim=1)
    if isinstance(generator, torch.Generator):
        uniform = torch.rand((logits.shape[0], 1), generator=generator)
    elif len(generator) == 1:
        uniform = torch.rand((1, 1), generator=generator[0])
    else:
        uniform = torch.cat([torch.rand((1, 1), generator=row_generator) for row_generator in generator])
    uniform = uniform * cumulative[:, -1:]
    return torch.searchsorted(cumulative, uniform, right=True).squeeze(1).clamp_(max=logits.shape[1] - 1)


class _Sample:
    """One sample while it is being written."""

    def __init__(self, index: int, prime: str, seed: int, tokenizer: Tokenizer, config: SampleConfig) -> None:
        self.index, self.prime, self.seed = index, prime, seed
        self.generator = torch.Generator().manual_seed(seed)
        self.start_ids, self.echo = start_tokens(tokenizer, prime, self.generator)
        # Samples with the same start share its reading: the prime itself, or the start ids
        # when there is none (a newline, or a random first token).
        self.start_key: tuple = (prime,) if self.start_ids is None else tuple(self.start_ids.tolist())
        self.uniforms = UniformStream(self.generator)  # the draws that pick its tokens
        self.decoder = tokenizer.stream_decoder()
        self.matcher = StopMatcher(config.stop, config.keep_stop)
        self.written = 0
        self.log2_prob = 0.0
        self.parts: list[str] = [] if self.echo == prime else [self.echo]
        self.stop: str | None = None
        self.stop_reason: str | None = None

    def start_pieces(self, tokenizer: Tokenizer) -> Iterable[np.ndarray]:
        """The ids the model reads before writing, a piece at a time."""
        if self.start_ids is not None:
            return [self.start_ids]
        return tokenizer.encode_pieces(self.prime)

    def record(self) -> SampleRecord:
        text = "".join(self.parts)
        return SampleRecord(
            index=self.index,
            prime=self.prime,
            text=text,
            stop_reason=self.stop_reason or STOPPED_AT_LENGTH,
            stop=self.stop,
            chars=len(text),
            log2_prob=self.log2_prob,
            seed=self.seed,
        )


def start_tokens(
    tokenizer: Tokenizer, prime: str | None, generator: torch.Generator
) -> tuple[np.ndarray | None, str]:
    """The ids that warm the model up (None: the prime's, encoded a piece at a time when it is
    read), and the text echoed for them."""
    if prime:
        tokenizer.check_encodable(prime, "prime text")
        return None, prime
    # No prime: start as if at the beginning of a line, which is how most text begins.
    if not tokenizer.unencodable("\n"):
        return np.asarray(tokenizer.encode("\n"), dtype=np.int64), ""
    first = int(torch.randint(tokenizer.vocab_size, (1,), generator=generator))
    return np.array([first], dtype=np.int64), tokenizer.decode([first])


def new_stepper(model: CharRNN) -> RecurrentStepper | OnnxStepper:
    """The batched time step for `model`: an exported model (`sample model.onnx`) steps on
    onnxruntime, any other on NumPy; both have the same interface."""
    return OnnxStepper(model) if isinstance(model, OnnxCharRNN) else RecurrentStepper(model)


def concatenate_states(states: list[State]) -> State:
    """One state of many rows from the states of single streams (batch dimension 1)."""
    # One model's states are all pairs (LSTM) or all tensors (GRU, RNN).
    if isinstance(states[0], tuple):
        pairs = cast(list[tuple[torch.Tensor, torch.Tensor]], states)
        return (
            torch.cat([hidden for hidden, _ in pairs], dim=1),
            torch.cat([cell for _, cell in pairs], dim=1),
        )
    return torch.cat(cast(list[torch.Tensor], states), dim=1)


def _run_batch(
    model: CharRNN,
    tokenizer: Tokenizer,
    stepper: RecurrentStepper | OnnxStepper,
    samples: list[_Sample],
    config: SampleConfig,
    banned: list[int],
    score: bool,
) -> Iterator[tuple[str, int, object]]:
    """Write a batch of samples side by side.

    Yields ("prime" | "text", position, str) as text is written and ("done", position, record)
    when a sample ends. Each distinct prime is run once at batch 1, so a sample's start does not depend on
    the other samples of the batch.
    """
    warmed: dict[tuple, tuple[torch.Tensor, State]] = {}
    for sample in samples:
        if sample.start_key not in warmed:
            last_logits, state = read_tokens(model, sample.start_pieces(tokenizer))
            warmed[sample.start_key] = (last_logits.float(), state)
    logits = torch.cat([warmed[sample.start_key][0] for sample in samples]).numpy()
    stepper.load_state(concatenate_states([warmed[sample.start_key][1] for sample in samples]))
    if banned:
        logits[:, banned] = float("-inf")
    for position, sample in enumerate(samples):
        yield "prime", position, sample.echo
    limit = config.length
    if limit == 0:
        for position, sample in enumerate(samples):
            sample.stop_reason = STOPPED_AT_LENGTH
            yield "done", position, sample.record()
        return
    rows = list(range(len(samples)))  # batch row -> position in `samples`
    streams = [sample.uniforms for sample in samples]
    chooser = TokenChooser(config)
    while rows:
        tokens = chooser.choose(logits, streams)
        if score:
            bits = log2_probabilities(logits, tokens)
        finished = []
        for row, token in enumerate(tokens.tolist()):
            position = rows[row]
            sample = samples[position]
            if score:
                sample.log2_prob += bits[row]
            piece = sample.decoder.feed(token)
            if not piece:
                continue
            if limit > 0:
                piece = piece[: limit - sample.written]
            sample.written += len(piece)
            text, stop = sample.matcher.feed(piece)
            if stop is not None:
                sample.stop, sample.stop_reason = stop, STOPPED_AT_STOP_STRING
            elif 0 < limit <= sample.written:
                text += sample.matcher.finish()
                sample.stop_reason = STOPPED_AT_LENGTH
            if text:
                sample.parts.append(text)
                yield "text", position, text
            if sample.stop_reason is not None:
                finished.append(row)
                yield "done", position, sample.record()
        if finished:
            gone = set(finished)
            kept = [row for row in range(len(rows)) if row not in gone]
            if not kept:
                return
            rows = [rows[row] for row in kept]
            streams = [streams[row] for row in kept]
            stepper.keep_rows(kept)
            tokens = tokens[kept]
        logits = stepper.step(tokens)


def _events(
    model: CharRNN,
    tokenizer: Tokenizer,
    config: SampleConfig,
    prime_batches: Iterable[Sequence[str | None]],
    score: bool,
) -> Iterator[tuple[str, int, object]]:
    """Events of every batch, with positions counted across batches (the sample's index)."""
    config.validate()
    check_stops(tokenizer, config.stop)
    run_seed = config.seed if config.seed is not None else draw_seed()
    banned = silent_token_ids(tokenizer)
    was_training = model.training
    model.eval()
    first_index = 0
    stepper: RecurrentStepper | OnnxStepper | None = None
    try:
        with torch.inference_mode(), blas_threads_restored():
            for primes in prime_batches:
                samples = [
                    _Sample(
                        first_index + offset,
                        prime or "",
                        sample_seed(run_seed, first_index + offset),
                        tokenizer,
                        config,
                    )
                    for offset, prime in enumerate(primes)
                ]
                if not samples:
                    continue
                if stepper is None:  # laid out once for every batch of the run (tens of milliseconds)
                    stepper = new_stepper(model)
                    stepper.ban_tokens(banned)
                for kind, position, value in _run_batch(
                    model, tokenizer, stepper, samples, config, banned, score
                ):
                    yield kind, first_index + position, value
                first_index += len(samples)
    finally:
        model.train(was_training)


def generate_text(model: CharRNN, tokenizer: Tokenizer, config: SampleConfig) -> Iterator[str]:
    """Yield the text of `config.num_samples` samples as it is written, joined by `config.separator`.

    `model` must be on the CPU. All samples are generated as one batch. Each sample is the
    prime (echoed) and what follows it. The first is streamed as it grows; each next one
    is streamed from the moment the one before it has ended. `config.length` counts the
    characters written after the prime; -1 writes forever.
    """
    batch = [config.prime] * config.num_samples
    waiting: dict[int, list[str]] = {index: [] for index in range(config.num_samples)}
    done: set[int] = set()
    current = 0
    for kind, index, value in _events(model, tokenizer, config, [batch], score=False):
        if kind == "done":
            done.add(index)
            while current in done:
                current += 1
                if current < config.num_samples:
                    yield config.separator
                    yield "".join(waiting.pop(current))
        elif index == current:
            yield value  # type: ignore[misc]
        else:
            waiting[index].append(value)  # type: ignore[arg-type]


def generate_records(
    model: CharRNN,
    tokenizer: Tokenizer,
    config: SampleConfig,
    primes: Iterable[str | None] | None = None,
    prime_batches: Iterable[Sequence[str | None]] | None = None,
) -> Iterator[SampleRecord]:
    """Yield one `SampleRecord` per sample, in order, each as soon as it and those before it are done.

    Without primes: `config.num_samples` samples of `config.prime`. With `primes` (for
    example the lines of a file, read lazily): one sample per prime, generated
    `config.batch_size` at a time; an empty prime starts at the beginning of a line.
    `prime_batches` gives the batches ready-made instead (the CLI cuts a batch short
    when its input pauses).
    """
    if prime_batches is not None:
        batches: Iterable[Sequence[str | None]] = prime_batches
    elif primes is not None:
        batches = batched(primes, config.batch_size)
    else:
        batches = [[config.prime] * config.num_samples]
    finished: dict[int, SampleRecord] = {}
    next_index = 0
    for kind, index, value in _events(model, tokenizer, config, batches, score=True):
        if kind != "done":
            continue
        finished[index] = value  # type: ignore[assignment]
        while next_index in finished:
            yield finished.pop(next_index)
            next_index += 1


def batched(items: Iterable, size: int) -> Iterator[list]:
    """Lists of up to `size` consecutive items (the last may be shorter); lazy, for endless input."""
    batch: list = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
