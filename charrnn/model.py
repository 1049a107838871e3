"""The language model: embedding -> stacked fused recurrent layers -> dropout -> linear.

No I/O and no printing here. The recurrent state is a tensor (GRU, RNN) or a
pair of tensors (LSTM), each of shape (num_layers, batch, hidden_size).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from charrnn.config import ModelConfig

State = torch.Tensor | tuple[torch.Tensor, torch.Tensor]

# Tokens per forward call when a long text is read through the model (a prime, a line, a file):
# what one call holds (embeddings, every layer's outputs and gates) is this many tokens' worth,
# however long the text.
READ_WINDOW = 256

_RECURRENT_LAYERS = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}


class CharRNN(nn.Module):
    """A stacked LSTM/GRU/tanh-RNN next-token model."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        config.validate()
        if config.vocab_size < 1:
            raise ValueError("ModelConfig.vocab_size must be set from the tokeniser")
        self.config = config
        self.embedding = nn.Embedding(config.vocab_size, config.embedding_size)
        layer_kind = _RECURRENT_LAYERS[config.model]
        extra = {"nonlinearity": "tanh"} if config.model == "rnn" else {}
        self.recurrent = layer_kind(
            input_size=config.embedding_size,
            hidden_size=config.hidden_size,
            num_layers=config.num_layers,
            # nn.LSTM only applies dropout between layers, and warns if there is one layer.
            dropout=config.dropout if config.num_layers > 1 else 0.0,
            batch_first=True,
            **extra,
        )
        self.output_dropout = nn.Dropout(config.dropout)
        self.head = nn.Linear(config.hidden_size, config.vocab_size)

    def set_output_prior(self, token_counts: torch.Tensor) -> None:
        """Start the output bias at the log of each token's training frequency (add-one smoothed).

        Then the first step already predicts the unigram distribution, instead of
        spending hundreds of Adam steps (each moves a weight by about the learning
        rate) pushing down the logits of tokens that never occur: the byte
        tokeniser has 256 outputs, most of them unused in a given corpus.
        """
        counts = token_counts.to(self.head.bias.dtype) + 1.0
        with torch.no_grad():
            self.head.bias.copy_(torch.log(counts / counts.sum()).to(self.head.bias.device))

    def initial_state(self, batch_size: int, device: torch.device | None = None) -> State:
        """The all-zero state a stream starts from."""
        device = device or self.head.weight.device
        shape = (self.config.num_layers, batch_size, self.config.hidden_size)
        zeros = torch.zeros(shape, device=device)
        if self.config.model == "lstm":
            return zeros, torch.zeros(shape, device=device)
        return zeros

    def forward(
        self, tokens: torch.Tensor, state: State | None = None, features_only: bool = False
    ) -> tuple[torch.Tensor, State]:
        """Logits of shape (batch, time, vocab) for int64 `tokens` of shape (batch, time), and the new state.

        With `features_only`, the inputs of the output layer instead (see `features`); a keyword
        of `forward` so that a DistributedDataParallel-wrapped model can be asked for them too.
        """
        outputs, state = self.features(tokens, state)
        if features_only:
            return outputs, state
        return self.head(outputs), state

    def features(self, tokens: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        """The top layer's outputs after dropout, (batch, time, hidden_size), and the new state.

        `self.head` turns them into logits; `loss.head_cross_entropy` takes them as they are,
        so a large vocabulary's logits never have to exist all at once.
        """
        if state is None:
            state = self.initial_state(tokens.shape[0], tokens.device)
        outputs, state = self.recurrent(self.embedding(tokens), state)
        return self.output_dropout(outputs), state


def detach_state(state: State) -> State:
    """Cut the graph behind the state so backpropagation stops at this window (truncated BPTT)."""
    if isinstance(state, tuple):
        return tuple(part.detach() for part in state)  # type: ignore[return-value]
    return state.detach()


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def token_windows(pieces: Iterable[np.ndarray | Sequence[int]], size: int) -> Iterator[np.ndarray]:
    """The ids of `pieces` (arrays of ids, in order) re-cut into windows of exactly `size` ids
    (the last may be shorter), so where a text was cut to be encoded never changes the windows."""
    pending: list[np.ndarray] = []
    count = 0
    for piece in pieces:
        ids = np.asarray(piece, dtype=np.int64)
        start = 0
        while start < len(ids):
            taken = ids[start : start + size - count]
            pending.append(taken)
            count += len(taken)
            start += len(taken)
            if count == size:
                yield pending[0] if len(pending) == 1 else np.concatenate(pending)
                pending, count = [], 0
    if count:
        yield pending[0] if len(pending) == 1 else np.concatenate(pending)


def read_tokens(
    model: CharRNN,
    pieces: Iterable[np.ndarray | Sequence[int]],
    state: State | None = None,
    window: int = READ_WINDOW,
) -> tuple[torch.Tensor, State]:
    """Read token ids (`pieces`, in order) through `model`, `window` tokens per call, carrying the state.

    Returns the logits after the last token, (1, vocab), and the state after it. Only the
    state and the last window's outputs are kept, so memory does not depend on how many ids
    there are. The result is the one a single call on all the ids gives: the recurrent layers
    compute the same numbers in windows, and the output layer runs on the last `window`
    positions (on all of them for a text shorter than that), since a matrix product of one row
    can round differently from the same row in a taller one.
    """
    device = model.head.weight.device
    tail: torch.Tensor | None = None  # the top layer's last `window` outputs, (1, <= window, hidden)
    with torch.inference_mode():
        for ids in token_windows(pieces, window):
            features, state = model.features(torch.from_numpy(ids).to(device).unsqueeze(0), state)
            tail = features if tail is None else torch.cat([tail, features], dim=1)[:, -window:]
        if tail is None or state is None:
            raise ValueError("read_tokens needs at least one token")
        return model.head(tail)[:, -1, :], state
