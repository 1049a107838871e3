"""Writing text with a trained model, one token at a time. No printing here.

Sampling at batch 1 is dominated by per-call overhead, not arithmetic: the
fused `nn.LSTM` costs far more per single step than the maths needs. So
`RecurrentStepper` re-implements one time step of the trained layers with
pre-transposed weights and plain matrix products, and folds the embedding
and the first layer's input weights into one lookup table. It computes the
same function as the training-time layers (a test checks the logits).
"""

from __future__ import annotations

import secrets
from typing import Iterator, Optional

import torch

from .config import SampleConfig
from .model import CharRNN, State
from .tokenizers import Tokenizer

_GATES = {"lstm": 4, "gru": 3, "rnn": 1}


class RecurrentStepper:
    """One time step of a trained `CharRNN` for a batch of streams, without autograd or the fused kernel."""

    def __init__(self, model: CharRNN) -> None:
        config = model.config
        self.kind = config.model
        self.num_layers = config.num_layers
        self.hidden_size = config.hidden_size
        hidden, gates = config.hidden_size, _GATES[config.model]
        recurrent = model.recurrent
        with torch.no_grad():
            def weight(name: str, layer: int) -> torch.Tensor:
                return getattr(recurrent, f"{name}_l{layer}").detach().float()

            # Embedding followed by the first input projection is a lookup: one row per token.
            table = model.embedding.weight.detach().float() @ weight("weight_ih", 0).t() + weight("bias_ih", 0)
            self.input_weights_t: list[Optional[torch.Tensor]] = [None]
            self.input_bias: list[torch.Tensor] = [torch.zeros(0)]
            for layer in range(1, self.num_layers):
                self.input_weights_t.append(weight("weight_ih", layer).t().contiguous())
                self.input_bias.append(weight("bias_ih", layer).clone())
            self.hidden_weights_t = [weight("weight_hh", layer).t().contiguous()
                                     for layer in range(self.num_layers)]
            self.hidden_bias = [weight("bias_hh", layer).clone() for layer in range(self.num_layers)]
            if self.kind != "gru":
                # LSTM and tanh-RNN simply add both biases, so fold bias_hh in ahead of time.
                # (GRU multiplies the hidden part of its candidate gate by r, so it must stay apart.)
                table += self.hidden_bias[0]
                for layer in range(1, self.num_layers):
                    self.input_bias[layer] += self.hidden_bias[layer]
            self.first_layer_table = table.contiguous()
            self.head_weight_t = model.head.weight.detach().float().t().contiguous()
            self.head_bias = model.head.bias.detach().float().clone()
        assert self.first_layer_table.shape[1] == gates * hidden

    def step(self, tokens: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """Logits (batch, vocab) after reading `tokens` (batch,), and the new state."""
        if self.kind == "lstm":
            hidden_all, cell_all = state  # type: ignore[misc]
            new_hidden, new_cell = [], []
        else:
            hidden_all = state  # type: ignore[assignment]
            new_hidden = []
        layer_input = None
        for layer in range(self.num_layers):
            hidden = hidden_all[layer]
            if layer == 0:
                projected = self.first_layer_table.index_select(0, tokens)
            else:
                projected = torch.addmm(self.input_bias[layer], layer_input, self.input_weights_t[layer])
            if self.kind == "lstm":
                gates = projected.addmm_(hidden, self.hidden_weights_t[layer])
                in_gate, forget_gate, candidate, out_gate = gates.chunk(4, dim=1)
                cell = torch.sigmoid(forget_gate) * cell_all[layer] + torch.sigmoid(in_gate) * torch.tanh(candidate)
                hidden = torch.sigmoid(out_gate) * torch.tanh(cell)
                new_cell.append(cell)
            elif self.kind == "gru":
                from_hidden = torch.addmm(self.hidden_bias[layer], hidden, self.hidden_weights_t[layer])
                input_r, input_z, input_n = projected.chunk(3, dim=1)
                hidden_r, hidden_z, hidden_n = from_hidden.chunk(3, dim=1)
                reset = torch.sigmoid(input_r + hidden_r)
                update = torch.sigmoid(input_z + hidden_z)
                candidate = torch.tanh(input_n + reset * hidden_n)
                hidden = candidate + update * (hidden - candidate)
            else:
                hidden = torch.tanh(projected.addmm_(hidden, self.hidden_weights_t[layer]))
            new_hidden.append(hidden)
            layer_input = hidden
        logits = torch.addmm(self.head_bias, layer_input, self.head_weight_t)
        if self.kind == "lstm":
            return logits, (torch.stack(new_hidden), torch.stack(new_cell))
        return logits, torch.stack(new_hidden)


def choose_next_tokens(logits: torch.Tensor, config: SampleConfig,
                       generator: torch.Generator) -> torch.Tensor:
    """Pick one token per row of `logits` (batch, vocab) by greedy, temperature, top-k and top-p."""
    if config.greedy or config.top_k == 1:
        return logits.argmax(dim=1)
    logits = logits / config.temperature
    if config.top_k is not None and config.top_k < logits.shape[1]:
        kth_best = torch.topk(logits, config.top_k, dim=1).values[:, -1:]
        logits = logits.masked_fill(logits < kth_best, float("-inf"))
    if config.top_p is not None and config.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=1, descending=True)
        sorted_probs = torch.softmax(sorted_logits, dim=1)
        # Drop a token when the tokens ranked above it already reach top_p (the first one always stays).
        drop_sorted = (sorted_probs.cumsum(dim=1) - sorted_probs) >= config.top_p
        drop = torch.zeros_like(drop_sorted).scatter(1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    probabilities = torch.softmax(logits, dim=1)
    return torch.multinomial(probabilities, 1, generator=generator).squeeze(1)


def _start_tokens(tokenizer: Tokenizer, prime: Optional[str],
                  generator: torch.Generator) -> tuple[list[int], str]:
    """The ids that warm the model up, and the text echoed for them."""
    if prime:
        tokenizer.check_encodable(prime, "prime text")
        return [int(i) for i in tokenizer.encode(prime)], prime
    # No prime: start as if at the beginning of a line, which is how most text begins.
    if not tokenizer.unencodable("\n"):
        return [int(i) for i in tokenizer.encode("\n")], ""
    first = int(torch.randint(tokenizer.vocab_size, (1,), generator=generator))
    return [first], tokenizer.decode([first])


def generate_text(model: CharRNN, tokenizer: Tokenizer, config: SampleConfig) -> Iterator[str]:
    """Yield the text of `config.num_samples` samples as it is written, joined by `config.separator`.

    `model` must be on the CPU. All samples are generated as one batch. The first is streamed as it
    grows; the rest follow it. `config.length` counts the characters written
    after the prime (which is echoed first); -1 writes forever.
    """
    config.validate()
    seed = config.seed if config.seed is not None else secrets.randbits(62)
    generator = torch.Generator().manual_seed(seed)
    prime_ids, prime_echo = _start_tokens(tokenizer, config.prime, generator)
    batch = config.num_samples
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            stepper = RecurrentStepper(model)
            prime_tensor = torch.tensor([prime_ids], dtype=torch.long).expand(batch, -1).contiguous()
            logits, state = model(prime_tensor)
            logits = logits[:, -1, :].float()
            yield prime_echo
            decoders = [tokenizer.stream_decoder() for _ in range(batch)]
            written = [0] * batch
            held_back = [[prime_echo] for _ in range(batch)]
            unlimited = config.length < 0
            while unlimited or min(written) < config.length:
                tokens = choose_next_tokens(logits, config, generator)
                for index, token in enumerate(tokens.tolist()):
                    if not unlimited and written[index] >= config.length:
                        continue
                    piece = decoders[index].feed(token)
                    if not unlimited:
                        piece = piece[: config.length - written[index]]
                    written[index] += len(piece)
                    if index == 0:
                        if piece:
                            yield piece
                    else:
                        held_back[index].append(piece)
                logits, state = stepper.step(tokens, state)
            # A stream decoder may still hold the start of an unfinished character: let it out.
            for index in range(batch):
                rest = decoders[index].flush()
                if not unlimited:
                    rest = rest[: config.length - written[index]]
                if index == 0:
                    if rest:
                        yield rest
                else:
                    held_back[index].append(rest)
            for index in range(1, batch):
                yield config.separator
                yield "".join(held_back[index])
    finally:
        model.train(was_training)
