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
    """One time step of a trained `CharRNN` for a batch of streams, without autograd or the fused kernel.

    Weights are laid out once for matrix-vector work: the embedding and the
    first layer's input weights become one lookup table (a row per token);
    a deeper layer multiplies its input and its own hidden state with one
    concatenated matrix; LSTM gate columns are reordered to (i, f, o, g) so
    the three sigmoid gates are one call. The state lives in preallocated
    buffers: `load_state` fills them from the fused layers' state, `step`
    updates them in place.
    """

    def __init__(self, model: CharRNN) -> None:
        config = model.config
        self.kind = config.model
        self.num_layers = config.num_layers
        self.hidden_size = hidden = config.hidden_size
        recurrent = model.recurrent

        def weight(name: str, layer: int) -> torch.Tensor:
            tensor = getattr(recurrent, f"{name}_l{layer}").detach().float()
            if self.kind == "lstm":  # PyTorch's order is (i, f, g, o); make the sigmoids contiguous
                i, f, g, o = tensor.chunk(4, dim=0)
                tensor = torch.cat([i, f, o, g], dim=0)
            return tensor

        with torch.no_grad():
            self.first_layer_table = (model.embedding.weight.detach().float() @ weight("weight_ih", 0).t()
                                      + weight("bias_ih", 0)).contiguous()
            self.hidden_weights_t: list[torch.Tensor] = []   # (H, G*H): the state's contribution
            self.stacked_weights_t: list[Optional[torch.Tensor]] = [None]  # (2H, G*H): [input; state]
            self.input_weights_t: list[Optional[torch.Tensor]] = [None]
            self.biases: list[torch.Tensor] = []
            self.hidden_biases: list[torch.Tensor] = []
            for layer in range(self.num_layers):
                self.hidden_weights_t.append(weight("weight_hh", layer).t().contiguous())
                self.hidden_biases.append(weight("bias_hh", layer).clone())
                if layer == 0:
                    self.biases.append(torch.zeros(0))
                    continue
                input_t = weight("weight_ih", layer).t().contiguous()
                self.input_weights_t.append(input_t)
                self.stacked_weights_t.append(torch.cat([input_t, self.hidden_weights_t[layer]]).contiguous())
                self.biases.append(weight("bias_ih", layer) + (0 if self.kind == "gru" else self.hidden_biases[layer]))
            if self.kind != "gru":
                # LSTM and tanh-RNN just add both biases; a GRU multiplies the state's part of its
                # candidate gate by the reset gate, so its hidden bias must stay apart.
                self.first_layer_table += self.hidden_biases[0]
            self.head_weight_t = model.head.weight.detach().float().t().contiguous()
            self.head_bias = model.head.bias.detach().float().clone()
        self.batch_size = 0

    def load_state(self, state: State) -> None:
        """Start from a state of the fused layers: (num_layers, batch, hidden) tensor(s)."""
        hidden_all = state[0] if isinstance(state, tuple) else state
        self.batch_size = batch = hidden_all.shape[1]
        hidden = self.hidden_size
        # Layer l reads [output of layer l-1, its own state]: one buffer per layer, so the stacked
        # matrix multiplies both in one call.
        self.inputs = [torch.empty(batch, 2 * hidden) for _ in range(self.num_layers)]
        for layer in range(self.num_layers):
            self.inputs[layer][:, hidden:] = hidden_all[layer]
            if layer > 0:
                self.inputs[layer][:, :hidden] = hidden_all[layer - 1]
        if self.kind == "lstm":
            self.cells = [state[1][layer].float().clone() for layer in range(self.num_layers)]  # type: ignore[index]
            # Preallocated results and their views: a step then allocates nothing and slices nothing.
            self._gates = [torch.empty(batch, 4 * hidden) for _ in range(self.num_layers)]
            self._cell_tanh = torch.empty(batch, hidden)
        self.top_hidden = self.inputs[-1][:, hidden:]
        self._logits = torch.empty(batch, self.head_weight_t.shape[1])

    def state(self) -> State:
        """The current state in the fused layers' layout."""
        hidden = torch.stack([buffer[:, self.hidden_size:] for buffer in self.inputs])
        if self.kind == "lstm":
            return hidden.clone(), torch.stack(self.cells)
        return hidden.clone()

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Read one token per stream (int64, shape (batch,)); return the next-token logits (batch, vocab).

        The logits live in a buffer the next step overwrites: use them before stepping again.
        """
        if self.kind == "lstm":
            return self._lstm_step(tokens)
        hidden = self.hidden_size
        for layer in range(self.num_layers):
            buffer = self.inputs[layer]
            state = buffer[:, hidden:]
            if layer == 0:
                projected = self.first_layer_table.index_select(0, tokens)
                if self.kind != "gru":
                    projected.addmm_(state, self.hidden_weights_t[0])
            elif self.kind != "gru":
                projected = torch.addmm(self.biases[layer], buffer, self.stacked_weights_t[layer])
            else:
                projected = torch.addmm(self.biases[layer], buffer[:, :hidden], self.input_weights_t[layer])
            if self.kind == "gru":
                from_state = torch.addmm(self.hidden_biases[layer], state, self.hidden_weights_t[layer])
                reset_update = torch.sigmoid(projected[:, : 2 * hidden] + from_state[:, : 2 * hidden])
                candidate = torch.tanh(projected[:, 2 * hidden:].addcmul_(reset_update[:, :hidden],
                                                                         from_state[:, 2 * hidden:]))
                new_state = candidate.add_(reset_update[:, hidden:] * (state - candidate))
            else:
                new_state = torch.tanh(projected)
            state.copy_(new_state)
            if layer + 1 < self.num_layers:
                self.inputs[layer + 1][:, :hidden] = new_state
        return torch.addmm(self.head_bias, self.top_hidden, self.head_weight_t, out=self._logits)

    def _lstm_step(self, tokens: torch.Tensor) -> torch.Tensor:
        # The LSTM is the default cell, so it gets a path with every result written in place:
        # at batch 1 the per-call overhead is as large as the arithmetic.
        hidden = self.hidden_size
        for layer in range(self.num_layers):
            buffer, gates, cell = self.inputs[layer], self._gates[layer], self.cells[layer]
            state = buffer[:, hidden:]
            if layer == 0:
                torch.index_select(self.first_layer_table, 0, tokens, out=gates)
                gates.addmm_(state, self.hidden_weights_t[0])
            else:
                torch.addmm(self.biases[layer], buffer, self.stacked_weights_t[layer], out=gates)
            gates[:, : 3 * hidden].sigmoid_()                   # input, forget, output gates
            candidate = gates[:, 3 * hidden:].tanh_()
            cell.mul_(gates[:, hidden: 2 * hidden]).addcmul_(gates[:, :hidden], candidate)
            torch.tanh(cell, out=self._cell_tanh)
            torch.mul(gates[:, 2 * hidden: 3 * hidden], self._cell_tanh, out=state)
            if layer + 1 < self.num_layers:
                self.inputs[layer + 1][:, :hidden] = state
        return torch.addmm(self.head_bias, self.top_hidden, self.head_weight_t, out=self._logits)


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
        # Only the most likely tokens can be kept: rank the top `candidates` (growing until they
        # hold top_p of the mass) instead of sorting a whole vocabulary of 60,000 for each token.
        probs = torch.softmax(logits, dim=1)
        vocab_size = logits.shape[1]
        candidates = min(vocab_size, 64)
        while True:
            if candidates == vocab_size:   # a flat distribution: one full sort
                top_probs, order = torch.sort(probs, dim=1, descending=True)
                break
            top_probs, order = torch.topk(probs, candidates, dim=1)
            if bool((top_probs.sum(dim=1) >= config.top_p).all()):
                break
            candidates = candidates * 8 if candidates * 8 <= vocab_size // 4 else vocab_size
        # Drop a token when the tokens ranked above it already reach top_p (the first one always stays).
        keep_top = (top_probs.cumsum(dim=1) - top_probs) < config.top_p
        keep = torch.zeros_like(probs, dtype=torch.bool).scatter(1, order, keep_top)
        logits = logits.masked_fill(~keep, float("-inf"))
    # Inverse-CDF sampling: a quarter of torch.multinomial's cost at batch 1. `right=True`
    # never lands on a token whose probability is zero.
    cumulative = torch.softmax(logits, dim=1).cumsum_(dim=1)
    uniform = torch.rand((logits.shape[0], 1), generator=generator) * cumulative[:, -1:]
    return torch.searchsorted(cumulative, uniform, right=True).squeeze(1).clamp_(max=logits.shape[1] - 1)


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
            stepper.load_state(state)
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
                logits = stepper.step(tokens)
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
