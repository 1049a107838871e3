"""The language model: embedding -> stacked fused recurrent layers -> dropout -> linear.

No I/O and no printing here. The recurrent state is a tensor (GRU, RNN) or a
pair of tensors (LSTM), each of shape (num_layers, batch, hidden_size).
"""

from __future__ import annotations

import torch
from torch import nn

from charrnn.config import ModelConfig

State = torch.Tensor | tuple[torch.Tensor, torch.Tensor]

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
