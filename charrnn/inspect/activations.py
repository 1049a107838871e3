"""What a trained model does while it reads a text: surprise, predictions and the activations of units.

The text is cut into *segments*: the smallest runs of tokens that decode to whole
characters (one character for `char`, one piece for `bpe`/`unigram`, the bytes of
one character for `byte`). Everything is reported per segment, so a subword piece
colours all of its characters and a multi-byte character is never split.

The text is read a window of tokens at a time, each layer's state carried from one window to
the next, so the model's work (embeddings, every layer's outputs, gates and logits) is one
window's worth however long the text is. Per segment, only what the answer shows is kept:

- always: where the segment ends in the text and its surprise (two 8-byte numbers);
- with `top_predictions`: the model's top tokens and their probabilities before it (the HTML
  page's hover and `--json`; 25 bytes for the default 5 with a small vocabulary: the ids in
  the vocabulary's smallest integer type, the probabilities to the 5 decimals the answer
  shows, as float32);
- for each unit asked for (`units`, or later `track_units`): its activation after it (4 bytes).

What needs every unit, the unit finder, is an *observer*: it is shown each window's states and
keeps running sums, never the states themselves; a unit it finds is read again in a second pass
(`track_units`) if its values are to be shown. So an explanation costs a few dozen bytes per
character of text, the size of the answer itself, not the model's states at every character.

Activations are computed with the fused recurrent layers, one layer at a time (so the numbers
are the ones the model computes, not a re-implementation); an LSTM's cell state, which the fused
layer does not return per time step, is rebuilt from its gates. No printing here.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol, overload

import numpy as np
import torch
import torch.nn.functional as F

from charrnn.data.tokenizers import Tokenizer, token_dtype
from charrnn.errors import UsageProblem
from charrnn.model import READ_WINDOW, CharRNN, State, token_windows

TOP_PREDICTIONS = 5
# Logits of one window are positions x vocab floats: keep a window near 64 MB whatever the vocabulary.
MAX_LOGITS_PER_CHUNK = 1 << 24
UNIT_PARTS = ("cell", "hidden")

StateKey = tuple[int, str]  # (layer, "cell" | "hidden")


@dataclass(frozen=True)
class UnitRef:
    """One recurrent unit: layer (from 0), index in the layer (from 0), and which state (cell or hidden)."""

    layer: int
    index: int
    part: str

    def __str__(self) -> str:
        return f"{self.layer}:{self.index}:{self.part}"


class StateObserver(Protocol):
    """Shown the states after every segment while a text is read (the unit finder is one)."""

    def observe(self, text: str, char_counts: np.ndarray, states: dict[StateKey, np.ndarray]) -> None:
        """`text`: the characters of the segments just read; `char_counts`: how many each has;
        `states`: (layer, part) -> (segments, hidden_size) values after each of them."""


class Segments(Sequence[str]):
    """The texts of the segments, cut from the text when asked for (a list of them would cost
    about 50 bytes a segment)."""

    def __init__(self, text: str, ends: np.ndarray) -> None:
        self._text, self._ends = text, ends

    def __len__(self) -> int:
        return len(self._ends)

    @overload
    def __getitem__(self, index: int) -> str: ...

    @overload
    def __getitem__(self, index: slice) -> list[str]: ...

    def __getitem__(self, index: int | slice) -> str | list[str]:
        if isinstance(index, slice):
            return [self[position] for position in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(index)
        start = int(self._ends[index - 1]) if index else 0
        return self._text[start : int(self._ends[index])]

    def __iter__(self) -> Iterator[str]:
        start = 0
        for end in self._ends.tolist():
            yield self._text[start:end]
            start = end


class Predictions(Sequence[list[tuple[str, float]]]):
    """Per segment, the model's top tokens (label, probability) before it; the first segment's list is
    empty (nothing came before it)."""

    def __init__(self, ids: np.ndarray, probs: np.ndarray, label: Callable[[int], str]) -> None:
        self._ids, self._probs, self._label = ids, probs, label

    def __len__(self) -> int:
        return len(self._ids)

    @overload
    def __getitem__(self, index: int) -> list[tuple[str, float]]: ...

    @overload
    def __getitem__(self, index: slice) -> list[list[tuple[str, float]]]: ...

    def __getitem__(self, index: int | slice) -> list[tuple[str, float]] | list[list[tuple[str, float]]]:
        if isinstance(index, slice):
            return [self[position] for position in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(index)
        if index == 0:
            return []
        return [
            (self._label(token), prob)
            for token, prob in zip(self._ids[index].tolist(), self._probs[index].tolist())
        ]


@dataclass
class TextAnalysis:
    """A text as the model read it, segment by segment (see the module's docstring for what is kept)."""

    text: str
    segment_ends: np.ndarray  # int64: where each segment ends in `text` (in characters)
    bits: np.ndarray  # surprise of each segment in bits (nan: the first, unpredicted)
    model_kind: str
    num_layers: int
    hidden_size: int
    top_ids: np.ndarray | None = None  # (segments, k): the model's top tokens before each segment
    top_probs: np.ndarray | None = None  # (segments, k): their probabilities
    unit_activations: dict[UnitRef, np.ndarray] = field(default_factory=dict)  # unit -> one per segment
    token_labels: Callable[[int], str] = field(default=str, repr=False)

    @property
    def segments(self) -> Segments:
        """The decoded text of each segment; `"".join(segments) == text`."""
        return Segments(self.text, self.segment_ends)

    @property
    def predictions(self) -> Predictions:
        """The model's top tokens before each segment (kept only when `top_predictions` asked for them)."""
        if self.top_ids is None or self.top_probs is None:
            raise ValueError("the predictions were not kept: analyse_text(top_predictions=N) keeps them")
        return Predictions(self.top_ids, self.top_probs, self.token_labels)

    @property
    def char_counts(self) -> np.ndarray:
        """Characters in each segment."""
        return np.diff(self.segment_ends, prepend=0)

    @property
    def bits_per_char(self) -> float:
        """Total surprise over the predicted characters, divided by their number."""
        predicted = ~np.isnan(self.bits)
        chars = int(self.char_counts[predicted].sum())
        return float(self.bits[predicted].sum() / chars) if chars else math.nan

    def unit_values(self, unit: UnitRef) -> np.ndarray:
        """One unit's activation after each segment (a unit read by `analyse_text` or `track_units`)."""
        try:
            return self.unit_activations[unit]
        except KeyError:
            raise ValueError(f"unit {unit} was not read: pass it to analyse_text or track_units") from None

    def per_char(self, segment_values: np.ndarray) -> np.ndarray:
        """Spread per-segment values over the characters (each character gets its segment's value)."""
        return np.repeat(segment_values, self.char_counts, axis=0)


def unit_parts(model_kind: str) -> tuple[str, ...]:
    """The states a cell kind has: an LSTM has a cell state and an output (hidden);
    GRU and RNN a hidden state."""
    return UNIT_PARTS if model_kind == "lstm" else ("hidden",)


def parse_unit(spec: str, model_kind: str, num_layers: int, hidden_size: int) -> UnitRef:
    """Read `layer:index[:cell|hidden]` (from 0) and check it against the model, one clear error otherwise."""
    parts = spec.split(":")
    if len(parts) not in (2, 3) or not all(part.strip() for part in parts):
        raise UsageProblem(
            f"--unit must look like LAYER:INDEX or LAYER:INDEX:cell|hidden (e.g. 0:42:cell), got {spec!r}"
        )
    try:
        layer, index = int(parts[0]), int(parts[1])
    except ValueError:
        raise UsageProblem(f"--unit layer and index must be whole numbers, got {spec!r}") from None
    allowed = unit_parts(model_kind)
    part = parts[2].strip().lower() if len(parts) == 3 else allowed[0]
    if part not in UNIT_PARTS:
        raise UsageProblem(f"--unit state must be cell or hidden, got {parts[2]!r}")
    if part not in allowed:
        raise UsageProblem(f"a {model_kind} has no cell state: use {layer}:{index}:hidden")
    if not 0 <= layer < num_layers:
        raise UsageProblem(
            f"--unit layer {layer} does not exist: the model has {num_layers} "
            f"layer{'s' if num_layers > 1 else ''} (0-{num_layers - 1})"
        )
    if not 0 <= index < hidden_size:
        raise UsageProblem(
            f"--unit index {index} is out of range: each layer has {hidden_size} units (0-{hidden_size - 1})"
        )
    return UnitRef(layer, index, part)


def token_label(tokenizer: Tokenizer, token: int) -> str:
    """How a predicted token reads: its text, or `<0xNN>` for a byte that is only part of a character."""
    text = tokenizer.decode([token])
    if text == "\ufffd":
        return f"<0x{token:02X}>" if tokenizer.kind == "byte" else "<byte>"
    return text


@dataclass
class _Window:
    """One window of the text as the model read it."""

    tokens: np.ndarray  # the ids read, (W,)
    top_output: torch.Tensor | None  # the top layer's outputs, (W, hidden); None if not read that far
    states: dict[StateKey, np.ndarray]  # (layer, part) -> (W, hidden) float32, when asked for
    ends: list[int]  # the positions in the window where a segment ends
    lengths: list[int]  # the characters of each of those segments


class _LayerReader:
    """The model's layers run one at a time on a window, each carrying its own state to the next.

    Each layer is its own one-layer fused module with the trained weights, so its output at every
    time step is there to read; dropout is off (the model is in eval mode).
    """

    def __init__(self, model: CharRNN, layers: int, cells: bool) -> None:
        recurrent = model.recurrent
        self.model, self.kind, self.cells = model, model.config.model, cells
        extra = {"nonlinearity": recurrent.nonlinearity} if self.kind == "rnn" else {}
        self.layers: list[torch.nn.Module] = []
        self.weights: list[dict[str, torch.Tensor]] = []
        input_size = model.config.embedding_size
        for layer in range(layers):
            single = type(recurrent)(
                input_size=input_size,
                hidden_size=model.config.hidden_size,
                num_layers=1,
                batch_first=True,
                **extra,
            )
            weights = {
                name: getattr(recurrent, f"{name}_l{layer}")
                for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
            }
            single.load_state_dict({f"{name}_l0": tensor for name, tensor in weights.items()})
            self.layers.append(single.eval())
            self.weights.append(weights)
            input_size = model.config.hidden_size
        self.layer_states: list[State | None] = [None] * layers

    def read(self, tokens: torch.Tensor) -> tuple[torch.Tensor, dict[StateKey, np.ndarray]]:
        """The last layer read's outputs (W, hidden) and every layer's states for one window (W,)."""
        inputs = self.model.embedding(tokens.unsqueeze(0))
        states: dict[StateKey, np.ndarray] = {}
        for layer, single in enumerate(self.layers):
            before = self.layer_states[layer]
            outputs, self.layer_states[layer] = single(inputs, before)
            states[(layer, "hidden")] = outputs[0].float().numpy()
            if self.kind == "lstm" and self.cells:
                states[(layer, "cell")] = _lstm_cells(inputs[0], outputs[0], self.weights[layer], before)
            inputs = outputs
        return inputs[0], states


def _lstm_cells(
    inputs: torch.Tensor,
    outputs: torch.Tensor,
    weights: dict[str, torch.Tensor],
    before: State | None,
) -> np.ndarray:
    """An LSTM layer's cell state at every step of a window, from its inputs, its outputs and its
    state before the window (the gates need only those)."""
    hidden_before = torch.zeros_like(outputs[:1]) if before is None else before[0][0]
    previous = torch.cat([hidden_before, outputs[:-1]])
    gates = (
        inputs @ weights["weight_ih"].t()
        + weights["bias_ih"]
        + previous @ weights["weight_hh"].t()
        + weights["bias_hh"]
    )
    in_gate, forget_gate, candidate, _ = gates.chunk(4, dim=1)  # PyTorch's order: i, f, g, o
    written = (torch.sigmoid(in_gate) * torch.tanh(candidate)).float().numpy()
    forget = torch.sigmoid(forget_gate).float().numpy()
    cells = np.empty_like(written)
    cell = (
        np.zeros(written.shape[1], np.float32) if before is None else before[1][0, 0].float().numpy().copy()
    )
    for step in range(len(written)):  # c_t = f_t * c_(t-1) + i_t * g_t: elementwise, cheap
        np.multiply(forget[step], cell, out=cell)
        np.add(cell, written[step], out=cell)
        cells[step] = cell
    return cells


def _read_windows(
    model: CharRNN, tokenizer: Tokenizer, text: str, layers: int | None, cells: bool = False
) -> Iterator[_Window]:
    """The text read a window of tokens at a time, with where its segments end.

    `layers`: how many layers' states to give (from the bottom; None: none, and the fused stack
    gives the top layer's outputs); `cells`: an LSTM's cell states too.
    """
    window = max(1, min(READ_WINDOW, MAX_LOGITS_PER_CHUNK // model.config.vocab_size))
    decoder = tokenizer.stream_decoder()
    windows = token_windows(tokenizer.encode_pieces(text), window)
    reader = _LayerReader(model, layers, cells) if layers else None
    fused_state: State | None = None
    current = next(windows, None)
    while current is not None:
        following = next(windows, None)
        ends: list[int] = []
        lengths: list[int] = []
        for position, token in enumerate(current.tolist()):
            piece = decoder.feed(token)
            if piece:
                ends.append(position)
                lengths.append(len(piece))
        if following is None:
            rest = decoder.flush()  # characters still held back at the very end
            if rest and ends and ends[-1] == len(current) - 1:
                lengths[-1] += len(rest)
            elif rest:
                ends.append(len(current) - 1)
                lengths.append(len(rest))
        tokens = torch.from_numpy(current)
        states: dict[StateKey, np.ndarray] = {}
        if reader is None:
            top_output, fused_state = model.features(tokens.unsqueeze(0), fused_state)
            top_output = top_output[0]
        else:
            top_output, states = reader.read(tokens)
        complete = layers is None or layers == model.config.num_layers
        yield _Window(current, top_output if complete else None, states, ends, lengths)
        current = following


def analyse_text(
    model: CharRNN,
    tokenizer: Tokenizer,
    text: str,
    top_predictions: int = TOP_PREDICTIONS,
    units: Iterable[UnitRef] = (),
    observers: Sequence[StateObserver] = (),
) -> TextAnalysis:
    """Read `text` with the model: per segment, its surprise, the model's `top_predictions` tokens
    before it (0: none kept), and the activation of each of `units`; `observers` are shown every
    state after every segment."""
    if not text:
        raise UsageProblem("the text is empty: there is nothing to explain")
    config = model.config
    units = list(dict.fromkeys(units))
    count_top = min(top_predictions, config.vocab_size)
    capacity = len(text)  # a segment holds at least one character
    ends = np.empty(capacity, np.int64)
    bits = np.empty(capacity, np.float64)
    top_ids = np.zeros((capacity, count_top), token_dtype(config.vocab_size)) if count_top else None
    top_probs = np.zeros((capacity, count_top), np.float32) if count_top else None
    values = {unit: np.empty(capacity, np.float32) for unit in units}
    cells = bool(observers) or any(unit.part == "cell" for unit in units)
    layers = config.num_layers if (units or observers) else None
    count = chars = 0
    open_bits = math.nan  # the first segment holds the first token, which nothing predicts
    last_log_probs: torch.Tensor | None = None
    pending: tuple[np.ndarray, np.ndarray] | None = None  # top tokens after the last segment read
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for window in _read_windows(model, tokenizer, text, layers, cells):
                assert window.top_output is not None
                log_probs = F.log_softmax(model.head(window.top_output).double(), dim=-1)
                token_bits = _token_bits(log_probs, last_log_probs, window.tokens)
                last_log_probs = log_probs[-1]
                segment_bits = []
                start = 0
                for end in window.ends:
                    segment_bits.append(open_bits + float(token_bits[start : end + 1].sum()))
                    open_bits, start = 0.0, end + 1
                open_bits += float(token_bits[start:].sum())
                if not window.ends:
                    continue
                span = slice(count, count + len(window.ends))
                ends[span] = chars + np.cumsum(window.lengths)
                bits[span] = segment_bits
                if top_ids is not None and top_probs is not None:
                    probs, ids = log_probs[window.ends].exp().topk(count_top, dim=-1)
                    # A segment's predictions are the ones made after the segment before it.
                    if pending is not None:
                        top_ids[count], top_probs[count] = pending
                    # To the 5 decimals shown: float32 holds those exactly enough to print them back.
                    shown = np.round(probs.numpy(), 5)
                    top_ids[count + 1 : span.stop] = ids[:-1].numpy()
                    top_probs[count + 1 : span.stop] = shown[:-1]
                    pending = (ids[-1].numpy(), shown[-1])
                for unit in units:
                    values[unit][span] = window.states[(unit.layer, unit.part)][window.ends, unit.index]
                if observers:
                    at_ends = {key: state[window.ends] for key, state in window.states.items()}
                    counts = np.asarray(window.lengths, dtype=np.int64)
                    for observer in observers:
                        observer.observe(text[chars : int(ends[span.stop - 1])], counts, at_ends)
                chars = int(ends[span.stop - 1])
                count = span.stop
    finally:
        model.train(was_training)

    def kept(array: np.ndarray) -> np.ndarray:
        # Fewer segments than characters (several characters to a piece): give the spare room back.
        return array[:count].copy() if count < capacity else array

    labels: dict[int, str] = {}

    def label(token: int) -> str:
        if token not in labels:
            labels[token] = token_label(tokenizer, token)
        return labels[token]

    return TextAnalysis(
        text=text,
        segment_ends=kept(ends),
        bits=kept(bits),
        model_kind=config.model,
        num_layers=config.num_layers,
        hidden_size=config.hidden_size,
        top_ids=None if top_ids is None else kept(top_ids),
        top_probs=None if top_probs is None else kept(top_probs),
        unit_activations={unit: kept(array) for unit, array in values.items()},
        token_labels=label,
    )


def _token_bits(log_probs: torch.Tensor, before: torch.Tensor | None, tokens: np.ndarray) -> np.ndarray:
    """Bits of each token of a window given the ones before it (nan for the text's first token).

    Position t predicts token t + 1; the window's first token was predicted by the last position
    of the window before (`before`).
    """
    targets = torch.from_numpy(tokens)
    token_bits = np.empty(len(tokens))
    token_bits[0] = math.nan if before is None else -float(before[int(tokens[0])]) / math.log(2)
    token_bits[1:] = (-log_probs[:-1].gather(1, targets[1:, None])[:, 0] / math.log(2)).numpy()
    return token_bits


def track_units(
    model: CharRNN, tokenizer: Tokenizer, analysis: TextAnalysis, units: Iterable[UnitRef]
) -> None:
    """Read the text again for the activations of `units` after each segment (those the analysis
    has not kept yet, such as the units the finder found), and keep them in `analysis`."""
    units = [unit for unit in dict.fromkeys(units) if unit not in analysis.unit_activations]
    if not units:
        return
    values = {unit: np.empty(len(analysis.segment_ends), np.float32) for unit in units}
    layers = max(unit.layer for unit in units) + 1  # the layers above are not needed
    cells = any(unit.part == "cell" for unit in units)
    count = 0
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for window in _read_windows(model, tokenizer, analysis.text, layers, cells):
                span = slice(count, count + len(window.ends))
                for unit in units:
                    values[unit][span] = window.states[(unit.layer, unit.part)][window.ends, unit.index]
                count = span.stop
    finally:
        model.train(was_training)
    analysis.unit_activations.update(values)


def load_for_analysis(model_path: str | None):
    """The checkpoint a command names (resolved the one usual way), loaded on the CPU for analysis."""
    from charrnn.store.checkpoint import load_weights
    from charrnn.store.run_dir import resolve_weights

    return load_weights(resolve_weights(model_path))


__all__ = [
    "StateObserver",
    "TextAnalysis",
    "UnitRef",
    "analyse_text",
    "parse_unit",
    "track_units",
    "unit_parts",
    "load_for_analysis",
]
