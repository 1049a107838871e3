"""Evaluation: the loss of a model over a token stream, in nats per token and bits per character.

Training's validation and the `eval` command share this one function, so a figure
measured after training is the figure training reported.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from charrnn.data.encoding import PreparedCorpus, count_chars
from charrnn.data.windows import IGNORE_TARGET, EvaluationWindows
from charrnn.distributed import World
from charrnn.loss import head_cross_entropy
from charrnn.model import CharRNN, State

EVAL_STREAMS = 128  # evaluation batch: large, since no gradients are kept
EVAL_WINDOW = 256
EVAL_WARMUP = 64  # tokens of preceding context that warm up each evaluation stream


@dataclass
class EvaluationResult:
    loss: float  # nats per token
    bits_per_char: float
    seconds: float
    total_nats: float = 0.0  # summed over every predicted token
    num_predictions: int = 0  # tokens predicted (every token after the first)


@dataclass(frozen=True)
class EvaluationSample:
    """What each of a run's evaluations covers: `tokens` (the whole split), and with a `limit`
    about that many of its predictions, in pieces spread over it (`EvaluationWindows`)."""

    tokens: np.ndarray
    limit: int  # 0: every token after the first
    predictions: int  # tokens predicted
    chars: int  # the characters behind those predictions

    @property
    def tokens_covered(self) -> int:
        """Validation tokens this covers: the whole split's, or the predictions of the sample."""
        return self.predictions if self.limit else len(self.tokens)


def evaluate(
    model: CharRNN,
    tokens: np.ndarray,
    num_chars: int,
    device: torch.device,
    world: World = World(),
    limit: int = 0,
) -> EvaluationResult:
    """Loss over every token of `tokens` after the first (about `limit` of them, spread over
    `tokens`, when `limit` is smaller), in nats per token and bits per character.

    `num_chars`: the characters behind the predicted tokens. In a distributed run each rank
    evaluates its share of the streams and the sums are added up, so every rank gets the
    figure of the whole split.
    """
    started = time.perf_counter()
    was_training = model.training
    model.eval()
    total_nats, total_tokens = 0.0, 0
    windows = _windows(tokens, limit, world)
    try:
        with torch.inference_mode():
            state: State | None = None
            for index, (inputs, targets) in enumerate(windows):
                inputs_t = torch.from_numpy(inputs).to(device)
                targets_t = torch.from_numpy(targets).to(device)
                features, state = model.features(inputs_t, state)
                if index == 0 and windows.first_is_warmup:
                    # Stream 0 starts the text: it must start from a blank state, not from padding.
                    if windows.cold_row is not None:
                        state = _zero_stream(state, windows.cold_row)
                    continue
                total_nats += float(
                    head_cross_entropy(
                        features, model.head, targets_t, ignore_index=IGNORE_TARGET, reduction="sum"
                    )
                )
                total_tokens += int((targets_t != IGNORE_TARGET).sum())
    finally:
        model.train(was_training)
    total_nats, summed_tokens = world.sum(total_nats, total_tokens)
    total_tokens = round(summed_tokens)  # a count, summed across ranks as a float
    return EvaluationResult(
        loss=total_nats / max(1, total_tokens),
        bits_per_char=total_nats / math.log(2) / max(1, num_chars),
        seconds=time.perf_counter() - started,
        total_nats=total_nats,
        num_predictions=total_tokens,
    )


def _windows(tokens: np.ndarray, limit: int, world: World = World()) -> EvaluationWindows:
    return EvaluationWindows(
        tokens,
        EVAL_STREAMS,
        EVAL_WINDOW,
        warmup=EVAL_WARMUP,
        rank=world.rank,
        world_size=world.world_size,
        limit=limit,
    )


def evaluation_split(corpus: PreparedCorpus, limit: int) -> EvaluationSample:
    """What each evaluation of a run covers: the whole validation split when `limit` is 0 or the
    split is no longer, else about `limit` tokens of it in pieces spread evenly over it.

    Always the same text, so every evaluation of a run, and every run with the same limit on
    the same corpus, is measured on the same tokens.
    """
    tokens = corpus.val_tokens
    if limit == 0 or len(tokens) <= limit:
        return EvaluationSample(tokens, 0, max(0, len(tokens) - 1), corpus.val_chars)
    spans = _windows(tokens, limit).scored_spans()
    chars = sum(count_chars(corpus.tokenizer, tokens[first:end]) for first, end in spans)
    return EvaluationSample(tokens, limit, sum(end - first for first, end in spans), chars)


def _zero_stream(state: State, stream: int) -> State:
    parts = state if isinstance(state, tuple) else (state,)
    cleared = []
    for part in parts:
        part = part.clone()
        part[:, stream] = 0
        cleared.append(part)
    return tuple(cleared) if isinstance(state, tuple) else cleared[0]  # type: ignore[return-value]
