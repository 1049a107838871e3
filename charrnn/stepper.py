"""One time step of a trained model for a batch of streams: what sampling runs once per token.

Sampling at batch 1 is dominated by per-call overhead, not arithmetic: the
fused `nn.LSTM` costs far more per single step than the maths needs. So
`RecurrentStepper` re-implements one time step of the trained layers with
pre-transposed weights and plain matrix products, and folds the embedding
and the first layer's input weights into one lookup table. It computes the
same function as the training-time layers (a test checks the logits).
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from .model import CharRNN, State


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
        self.hidden_size = config.hidden_size
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

    def keep_rows(self, rows: Sequence[int]) -> None:
        """Go on with only these streams (in this order): finished samples leave the batch."""
        index = torch.tensor(list(rows), dtype=torch.long)
        state = self.state()
        if isinstance(state, tuple):
            self.load_state((state[0].index_select(1, index), state[1].index_select(1, index)))
        else:
            self.load_state(state.index_select(1, index))

    def ban_tokens(self, token_ids: Sequence[int]) -> None:
        """Never predict these ids: their output bias becomes -inf (the logits then give them probability 0)."""
        if token_ids:
            self.head_bias[list(token_ids)] = float("-inf")

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
