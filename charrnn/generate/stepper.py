"""One time step of a trained model for a batch of streams: what sampling runs once per token.

Sampling at batch 1 is dominated by per-call overhead, not arithmetic: a
torch operation costs a few microseconds however small its tensors, and the
fused `nn.LSTM` costs far more per single step. So `RecurrentStepper`
re-implements one time step of the trained layers in NumPy (well under a
microsecond per small operation), with float32 weights laid out once, every
result written into preallocated buffers, and the embedding folded into the
first layer's input weights. It computes the same function as the
training-time layers (a test checks the logits and the sampled text).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from charrnn.generate.blas_threads import set_blas_threads
from charrnn.model import CharRNN, State


def _float_array(tensor: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(tensor.detach().float().cpu().numpy(), dtype=np.float32)


def _sigmoid_in_place(values: np.ndarray) -> None:
    # sigmoid(x) = tanh(x/2)/2 + 1/2: no exp, so no overflow warning for a large |x|.
    np.multiply(values, 0.5, out=values)
    np.tanh(values, out=values)
    np.multiply(values, 0.5, out=values)
    np.add(values, 0.5, out=values)


# Above this many floats (16 MB), the first layer's per-token table is not worked out in advance.
MAX_FIRST_LAYER_TABLE_FLOATS = 1 << 22


class RecurrentStepper:
    """One time step of a trained `CharRNN` for a batch of streams, in NumPy, without allocating.

    Weights keep PyTorch's (outputs, inputs) layout and buffers are (features,
    batch), so every product is `weights @ inputs` on contiguous memory: at batch
    1 a matrix-vector call over contiguous rows (the fastest form), at batch B one
    matrix product. The hidden states of all layers are stacked in one buffer
    `[h_0; h_1; ...; h_{L-1}; 1]`, so layer l reads `[h_{l-1}; h_l]` (its input
    and its own state) as one block and one product, and the output layer reads
    `[h_{L-1}; 1]` with its bias as one more weight column.
    LSTM gates are reordered to (i, f, o, g) and the rows of i, f and o are
    halved (exact in floating point), so one tanh over all gates gives tanh(x/2)
    for them, and sigmoid(x) = tanh(x/2)/2 + 1/2 is two in-place operations.
    """

    def __init__(self, model: CharRNN) -> None:
        config = model.config
        self.kind = config.model
        self.num_layers = config.num_layers
        self.hidden_size = config.hidden_size
        recurrent = model.recurrent

        def weight(name: str, layer: int) -> np.ndarray:
            array = _float_array(getattr(recurrent, f"{name}_l{layer}"))
            if self.kind == "lstm":  # PyTorch's order is (i, f, g, o); make the sigmoid gates contiguous
                i, f, g, o = np.split(array, 4, axis=0)
                array = np.concatenate([0.5 * i, 0.5 * f, 0.5 * o, g], axis=0)
            return np.ascontiguousarray(array)

        with torch.no_grad():
            embedding = _float_array(model.embedding.weight)
        self.hidden_weights: list[np.ndarray] = []  # (G*H, H): the state's contribution
        self.stacked_weights: list[np.ndarray] = []  # (G*H, 2H): [input, state] of layers >= 1
        self.input_weights: list[np.ndarray] = []  # (G*H, H): a GRU's input part alone
        self.biases: list[np.ndarray] = []  # input bias (+ state bias but for a GRU)
        self.hidden_biases: list[np.ndarray] = []
        for layer in range(self.num_layers):
            self.hidden_weights.append(weight("weight_hh", layer))
            self.hidden_biases.append(weight("bias_hh", layer))
            if layer == 0:
                self.input_weights.append(np.zeros((0, 0), np.float32))
                self.stacked_weights.append(np.zeros((0, 0), np.float32))
                self.biases.append(np.zeros(0, np.float32))
                continue
            input_weight = weight("weight_ih", layer)
            self.input_weights.append(input_weight)
            self.stacked_weights.append(
                np.ascontiguousarray(np.concatenate([input_weight, self.hidden_weights[layer]], axis=1))
            )
            bias = weight("bias_ih", layer)
            self.biases.append(bias if self.kind == "gru" else bias + self.hidden_biases[layer])
        first_bias = weight("bias_ih", 0)
        if self.kind != "gru":
            # LSTM and tanh-RNN just add both biases; a GRU multiplies the state's part of its
            # candidate gate by the reset gate, so its hidden bias must stay apart.
            first_bias = first_bias + self.hidden_biases[0]
        first_weight = weight("weight_ih", 0)
        # The first layer's input for token t is row t of embedding @ W_ih.T + bias. Worked out
        # once for every token, that table is vocabulary x gates floats: a row lookup per step for
        # a small vocabulary, but 368 MB for 60,000 symbols, so a big vocabulary multiplies each time.
        if embedding.shape[0] * first_weight.shape[0] <= MAX_FIRST_LAYER_TABLE_FLOATS:
            with np.errstate(over="ignore", invalid="ignore"):  # see `step`
                self.first_layer_table: np.ndarray | None = np.ascontiguousarray(
                    embedding @ first_weight.T + first_bias, dtype=np.float32
                )
        else:
            self.first_layer_table = None
            self._embedding, self._first_weight, self._first_bias = embedding, first_weight, first_bias
        head_weight, head_bias = _float_array(model.head.weight), _float_array(model.head.bias)
        self.head = np.ascontiguousarray(np.concatenate([head_weight, head_bias[:, None]], axis=1))
        self.vocab_size = head_weight.shape[0]
        self.batch_size = 0
        self._single_weights: list[np.ndarray] | None = None  # laid out when a single stream first runs

    def load_state(self, state: State) -> None:
        """Start from a state of the fused layers: (num_layers, batch, hidden) tensor(s)."""
        hidden_all = (state[0] if isinstance(state, tuple) else state).detach().float().cpu().numpy()
        cells = state[1].detach().float().cpu().numpy() if isinstance(state, tuple) else None
        layers, batch, hidden = hidden_all.shape
        self._allocate(
            hidden_all.transpose(0, 2, 1).reshape(layers * hidden, batch),
            None if cells is None else cells.transpose(0, 2, 1),
        )

    def _allocate(self, hidden_all: np.ndarray, cells: np.ndarray | None) -> None:
        # Buffers are (features, batch): a layer's input is a block of whole rows (contiguous for
        # any batch), every product is weights @ inputs in the weights' own layout, and at batch 1
        # column 0 of each buffer is a contiguous vector, which makes the products matrix-vector calls.
        hidden, layers = self.hidden_size, self.num_layers
        self.batch_size = batch = hidden_all.shape[1]
        self.single = batch == 1
        # One stream: matrix-vector products, where more threads only add waiting. A batch: as many
        # as torch may use (`--threads`).
        set_blas_threads(1 if self.single else torch.get_num_threads())
        self.hidden = np.empty((layers * hidden + 1, batch), np.float32)
        self.hidden[:-1] = hidden_all
        self.hidden[-1] = 1.0
        gate_count = {"lstm": 4, "gru": 3, "rnn": 1}[self.kind]
        self._logits_by_column = np.empty((self.vocab_size, batch), np.float32)
        self._gates = np.empty((gate_count * hidden, batch), np.float32)
        self._scratch = np.empty((gate_count * hidden, batch), np.float32)
        if cells is not None:
            self.cells = np.array(cells, dtype=np.float32, order="C")  # (layers, hidden, batch)
        # Views built once keep slicing out of the step.
        column = (lambda array: array[:, 0]) if self.single else (lambda array: array)
        along = (lambda vector: vector) if self.single else (lambda vector: vector[:, None])
        self._rows_gates = column(self._gates)
        self._rows_scratch = column(self._scratch)
        self._rows_logits = column(self._logits_by_column)
        self._rows_cells = [column(self.cells[layer]) for layer in range(layers)] if cells is not None else []
        self._layer_input = [
            column(self.hidden[max(layer - 1, 0) * hidden : (layer + 1) * hidden]) for layer in range(layers)
        ]
        self._layer_state = [
            column(self.hidden[layer * hidden : (layer + 1) * hidden]) for layer in range(layers)
        ]
        self._head_input = column(self.hidden[(layers - 1) * hidden :])
        gates, scratch = self._rows_gates, self._rows_scratch
        self._lstm_views = (
            gates[: 3 * hidden],
            gates[:hidden],
            gates[hidden : 2 * hidden],
            gates[2 * hidden : 3 * hidden],
            gates[3 * hidden :],
            scratch[:hidden],
        )
        self._biases = [along(bias) for bias in self.biases]
        self._hidden_biases = [along(bias) for bias in self.hidden_biases]
        if self.kind == "lstm":
            # Per layer: (weights, input, bias to add or None). One stream multiplies
            # `input @ weights`, a batch `weights @ inputs` (see `_lstm_step`).
            self._lstm_products = (
                self._single_lstm_products()
                if self.single
                else [
                    (
                        self.hidden_weights[0] if layer == 0 else self.stacked_weights[layer],
                        self._layer_state[0] if layer == 0 else self._layer_input[layer],
                        None if layer == 0 else self._biases[layer],
                    )
                    for layer in range(layers)
                ]
            )

    def _single_lstm_products(self) -> list[tuple[np.ndarray, np.ndarray, np.ndarray | None]]:
        """Per layer: (weights, input, bias to add or None) of one stream's LSTM products.

        One stream reads its weights as (inputs, gates), `input @ weights`: the form of
        OpenBLAS's matrix-vector product that was faster for the default model (docs,
        "Performance", has the times; the weights do not fit in the core's cache, so the
        product goes at the speed of reading them). The last layer's input block runs on into
        the constant 1 at the end of the stacked state, so its bias is one more weight row
        instead of an addition.
        """
        if self._single_weights is None:
            last = self.num_layers - 1
            transposed = [np.ascontiguousarray(self.hidden_weights[0].T)]
            for layer in range(1, self.num_layers):
                rows = [self.stacked_weights[layer].T] + (
                    [self.biases[layer][None, :]] if layer == last else []
                )
                transposed.append(np.ascontiguousarray(np.concatenate(rows, axis=0)))
            self._single_weights = transposed
        hidden, last = self.hidden_size, self.num_layers - 1
        products: list[tuple[np.ndarray, np.ndarray, np.ndarray | None]] = [
            (self._single_weights[0], self._layer_state[0], None)
        ]
        for layer in range(1, self.num_layers):
            if layer == last:  # [h_{l-1}; h_l; 1]
                products.append((self._single_weights[layer], self.hidden[(layer - 1) * hidden :, 0], None))
            else:
                products.append((self._single_weights[layer], self._layer_input[layer], self._biases[layer]))
        return products

    @property
    def logits(self) -> np.ndarray:
        """The logits of the last step, (batch, vocab)."""
        return self._logits_by_column.T

    def state(self) -> State:
        """The current state in the fused layers' layout."""
        layers, hidden = self.num_layers, self.hidden_size

        def fused(array: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(
                np.ascontiguousarray(array.reshape(layers, hidden, self.batch_size).transpose(0, 2, 1))
            )

        hidden_state = fused(self.hidden[:-1])
        if self.kind == "lstm":
            return hidden_state, fused(self.cells)
        return hidden_state

    def keep_rows(self, rows: Sequence[int]) -> None:
        """Go on with only these streams (in this order): finished samples leave the batch."""
        index = np.asarray(list(rows), dtype=np.int64)
        self._allocate(self.hidden[:-1, index], self.cells[:, :, index] if self.kind == "lstm" else None)

    def ban_tokens(self, token_ids: Sequence[int]) -> None:
        """Never predict these ids: their output bias becomes -inf (so their probability is 0)."""
        if token_ids:
            self.head[list(token_ids), -1] = float("-inf")

    def step(self, tokens: Sequence[int] | np.ndarray) -> np.ndarray:
        """Read one token per stream (shape (batch,)); return the next-token logits (batch, vocab), float32.

        The logits live in a buffer the next step overwrites: use them before stepping again.
        """
        if not isinstance(tokens, np.ndarray):
            tokens = np.asarray(tokens, dtype=np.int64)
        # Weights too large for float32 (finite, but a damaged or hostile file's) overflow here:
        # the logits come out inf or nan, which `TokenChooser` refuses with one error, so NumPy's
        # own warnings would only repeat it.
        with np.errstate(over="ignore", invalid="ignore"):
            if self.kind == "lstm":
                self._lstm_step(tokens)
            elif self.kind == "gru":
                self._gru_step(tokens)
            else:
                self._rnn_step(tokens)
            np.dot(self.head, self._head_input, out=self._rows_logits)
        return self._logits_by_column.T

    def _first_layer_inputs(self, tokens: np.ndarray) -> np.ndarray:
        """What the tokens add to the first layer's gates: (gates,) for one stream, else (gates, batch)."""
        table = self.first_layer_table
        if table is None:
            inputs = self._embedding[tokens] @ self._first_weight.T + self._first_bias
            return inputs[0] if self.single else inputs.T
        if self.single:
            return table[tokens[0]]
        return table[tokens].T  # gathering whole rows is faster than columns

    def _lstm_step(self, tokens: np.ndarray) -> None:
        # The LSTM is the default cell: every result is written in place, ten small calls a layer
        # (nine for the last layer of one stream).
        gates = self._rows_gates
        sigmoid_gates, input_gate, forget_gate, output_gate, candidate, cell_tanh = self._lstm_views
        multiply, add, tanh, dot = np.multiply, np.add, np.tanh, np.dot
        single = self.single
        for layer, (weights, inputs, bias) in enumerate(self._lstm_products):
            cell, state = self._rows_cells[layer], self._layer_state[layer]
            if single:  # (inputs, gates) weights
                dot(inputs, weights, out=gates)
            else:
                dot(weights, inputs, out=gates)
            if layer == 0:
                add(gates, self._first_layer_inputs(tokens), out=gates)
            elif bias is not None:
                add(gates, bias, out=gates)
            tanh(gates, out=gates)  # tanh(x/2) for i, f, o; tanh(x) for g
            multiply(sigmoid_gates, 0.5, out=sigmoid_gates)
            add(sigmoid_gates, 0.5, out=sigmoid_gates)
            multiply(cell, forget_gate, out=cell)
            multiply(input_gate, candidate, out=cell_tanh)
            add(cell, cell_tanh, out=cell)
            tanh(cell, out=cell_tanh)
            multiply(output_gate, cell_tanh, out=state)  # the next layer reads it in place

    def _gru_step(self, tokens: np.ndarray) -> None:
        hidden = self.hidden_size
        projected, from_state = self._rows_gates, self._rows_scratch
        for layer in range(self.num_layers):
            state = self._layer_state[layer]
            if layer == 0:
                projected[...] = self._first_layer_inputs(tokens)
            else:
                below = self._layer_input[layer][:hidden]
                np.dot(self.input_weights[layer], below, out=projected)
                np.add(projected, self._biases[layer], out=projected)
            np.dot(self.hidden_weights[layer], state, out=from_state)
            np.add(from_state, self._hidden_biases[layer], out=from_state)
            reset_update = projected[: 2 * hidden]
            np.add(reset_update, from_state[: 2 * hidden], out=reset_update)
            _sigmoid_in_place(reset_update)
            candidate = projected[2 * hidden :]
            state_part = from_state[2 * hidden :]
            np.multiply(reset_update[:hidden], state_part, out=state_part)
            np.add(candidate, state_part, out=candidate)
            np.tanh(candidate, out=candidate)
            difference = from_state[:hidden]  # the gates' part of `from_state` is spent
            np.subtract(state, candidate, out=difference)
            np.multiply(reset_update[hidden:], difference, out=difference)
            np.add(candidate, difference, out=state)

    def _rnn_step(self, tokens: np.ndarray) -> None:
        projected = self._rows_gates
        for layer in range(self.num_layers):
            state = self._layer_state[layer]
            if layer == 0:
                np.dot(self.hidden_weights[0], state, out=projected)
                np.add(projected, self._first_layer_inputs(tokens), out=projected)
            else:
                np.dot(self.stacked_weights[layer], self._layer_input[layer], out=projected)
                np.add(projected, self._biases[layer], out=projected)
            np.tanh(projected, out=state)
