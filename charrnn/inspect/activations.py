"""What a trained model does while it reads a text: surprise, predictions and every unit's activation.

The text is cut into *segments*: the smallest runs of tokens that decode to whole
characters (one character for `char`, one piece for `bpe`/`unigram`, the bytes of
one character for `byte`). Everything is reported per segment, so a subword piece
colours all of its characters and a multi-byte character is never split.

Activations are computed with the fused recurrent layers, one layer at a time (so the
numbers are the ones the model computes, not a re-implementation); an LSTM's cell state,
which the fused layer does not return per time step, is rebuilt from its gates.
No printing here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from charrnn.data.tokenizers import Tokenizer
from charrnn.errors import UsageProblem
from charrnn.model import CharRNN

TOP_PREDICTIONS = 5
# Logits of one chunk are positions x vocab floats: keep a chunk near 64 MB whatever the vocabulary.
MAX_LOGITS_PER_CHUNK = 1 << 24
UNIT_PARTS = ("cell", "hidden")


@dataclass(frozen=True)
class UnitRef:
    """One recurrent unit: layer (from 0), index in the layer (from 0), and which state (cell or hidden)."""

    layer: int
    index: int
    part: str

    def __str__(self) -> str:
        return f"{self.layer}:{self.index}:{self.part}"


@dataclass
class TextAnalysis:
    """A text as the model read it, segment by segment."""

    text: str
    segments: list[str]  # decoded text of each segment; "".join == text
    bits: np.ndarray  # surprise of each segment in bits (nan: the first, unpredicted)
    predictions: list[list[tuple[str, float]]]  # the model's top tokens before each segment (first: empty)
    activations: dict[tuple[int, str], np.ndarray]  # (layer, part) -> (segments, hidden_size)
    model_kind: str
    num_layers: int
    hidden_size: int
    tokens: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0, dtype=np.int64))

    @property
    def char_counts(self) -> np.ndarray:
        """Characters in each segment."""
        return np.array([len(segment) for segment in self.segments], dtype=np.int64)

    @property
    def bits_per_char(self) -> float:
        """Total surprise over the predicted characters, divided by their number."""
        predicted = ~np.isnan(self.bits)
        chars = int(self.char_counts[predicted].sum())
        return float(self.bits[predicted].sum() / chars) if chars else math.nan

    def unit_values(self, unit: UnitRef) -> np.ndarray:
        """One unit's activation after each segment."""
        return self.activations[(unit.layer, unit.part)][:, unit.index]

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


def split_segments(tokenizer: Tokenizer, tokens: np.ndarray) -> tuple[list[str], list[int]]:
    """Group tokens into segments of whole characters: their texts, and the index of each one's last token."""
    decoder = tokenizer.stream_decoder()
    texts: list[str] = []
    last_tokens: list[int] = []
    for position, token in enumerate(tokens.tolist()):
        piece = decoder.feed(int(token))
        if piece:
            texts.append(piece)
            last_tokens.append(position)
    rest = decoder.flush()
    if rest:
        if texts and last_tokens[-1] == len(tokens) - 1:
            texts[-1] += rest
        else:
            texts.append(rest)
            last_tokens.append(len(tokens) - 1)
    return texts, last_tokens


def token_label(tokenizer: Tokenizer, token: int) -> str:
    """How a predicted token reads: its text, or `<0xNN>` for a byte that is only part of a character."""
    text = tokenizer.decode([token])
    if text == "\ufffd":
        return f"<0x{token:02X}>" if tokenizer.kind == "byte" else "<byte>"
    return text


def layer_activations(
    model: CharRNN, tokens: torch.Tensor
) -> tuple[dict[tuple[int, str], torch.Tensor], torch.Tensor]:
    """Every layer's states for one token sequence (shape (T,)), and the top layer's output (T, H).

    Each layer runs as its own one-layer fused module with the trained weights, so its
    output per time step is available; dropout is off (the model is in eval mode).
    """
    recurrent = model.recurrent
    kind = model.config.model
    extra = {"nonlinearity": recurrent.nonlinearity} if kind == "rnn" else {}
    inputs = model.embedding(tokens.unsqueeze(0))
    states: dict[tuple[int, str], torch.Tensor] = {}
    for layer in range(model.config.num_layers):
        single = type(recurrent)(
            input_size=inputs.shape[-1],
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
        outputs, _ = single(inputs)
        states[(layer, "hidden")] = outputs[0]
        if kind == "lstm":
            states[(layer, "cell")] = _lstm_cells(inputs[0], outputs[0], weights)
        inputs = outputs
    return states, inputs[0]


def _lstm_cells(
    inputs: torch.Tensor, outputs: torch.Tensor, weights: dict[str, torch.Tensor]
) -> torch.Tensor:
    """An LSTM layer's cell state at every step, from its inputs and outputs (the gates need only those)."""
    previous = torch.cat([torch.zeros_like(outputs[:1]), outputs[:-1]])
    gates = (
        inputs @ weights["weight_ih"].t()
        + weights["bias_ih"]
        + previous @ weights["weight_hh"].t()
        + weights["bias_hh"]
    )
    in_gate, forget_gate, candidate, _ = gates.chunk(4, dim=1)  # PyTorch's order: i, f, g, o
    written = torch.sigmoid(in_gate) * torch.tanh(candidate)
    forget = torch.sigmoid(forget_gate)
    cells = torch.empty_like(outputs)
    cell = torch.zeros_like(outputs[0])
    for step in range(outputs.shape[0]):  # c_t = f_t * c_(t-1) + i_t * g_t: elementwise, cheap
        cell = forget[step] * cell + written[step]
        cells[step] = cell
    return cells


def analyse_text(
    model: CharRNN, tokenizer: Tokenizer, text: str, top_predictions: int = TOP_PREDICTIONS
) -> TextAnalysis:
    """Read `text` with the model: per segment, surprise, the predictions before it, and every state."""
    if not text:
        raise UsageProblem("the text is empty: there is nothing to explain")
    tokens = np.asarray(tokenizer.encode(text), dtype=np.int64)
    segments, last_tokens = split_segments(tokenizer, tokens)
    model.eval()
    with torch.inference_mode():
        states, top_output = layer_activations(model, torch.from_numpy(tokens))
        token_bits, top_ids, top_probs = _predictions(model, top_output, tokens, top_predictions)
    first_tokens = [0] + [last + 1 for last in last_tokens[:-1]]
    bits = np.array(
        [
            np.nan if first == 0 else float(token_bits[first : last + 1].sum())
            for first, last in zip(first_tokens, last_tokens)
        ]
    )
    predictions: list[list[tuple[str, float]]] = []
    for first in first_tokens:
        if first == 0:
            predictions.append([])
            continue
        # What the model expected before reading this segment's first token.
        predictions.append(
            [
                (token_label(tokenizer, int(token)), float(prob))
                for token, prob in zip(top_ids[first - 1], top_probs[first - 1])
            ]
        )
    index = torch.tensor(last_tokens, dtype=torch.long)
    activations = {key: state.index_select(0, index).float().numpy() for key, state in states.items()}
    config = model.config
    return TextAnalysis(
        text="".join(segments),
        segments=segments,
        bits=bits,
        predictions=predictions,
        activations=activations,
        model_kind=config.model,
        num_layers=config.num_layers,
        hidden_size=config.hidden_size,
        tokens=tokens,
    )


def _predictions(
    model: CharRNN, top_output: torch.Tensor, tokens: np.ndarray, top_predictions: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bits of each token given the ones before (token 0: 0), and the top predictions after each token."""
    vocab = model.config.vocab_size
    count = min(top_predictions, vocab)
    token_bits = np.zeros(len(tokens))
    top_ids = np.zeros((len(tokens), count), dtype=np.int64)
    top_probs = np.zeros((len(tokens), count))
    targets = torch.from_numpy(tokens)
    chunk = max(1, MAX_LOGITS_PER_CHUNK // vocab)
    for start in range(0, len(tokens), chunk):
        end = min(len(tokens), start + chunk)
        log_probs = F.log_softmax(model.head(top_output[start:end]).double(), dim=-1)
        # Position t predicts token t + 1.
        following = targets[start + 1 : end + 1]
        picked = -log_probs[: len(following)].gather(1, following.unsqueeze(1)).squeeze(1) / math.log(2)
        token_bits[start + 1 : start + 1 + len(following)] = picked.numpy()
        probs, ids = log_probs.exp().topk(count, dim=-1)
        top_ids[start:end], top_probs[start:end] = ids.numpy(), probs.numpy()
    return token_bits, top_ids, top_probs


def load_for_analysis(model_path: str | None):
    """The checkpoint a command names (resolved the one usual way), loaded on the CPU for analysis."""
    from charrnn.store.checkpoint import load_weights
    from charrnn.store.run_dir import resolve_weights

    return load_weights(resolve_weights(model_path))


__all__ = [
    "TextAnalysis",
    "UnitRef",
    "analyse_text",
    "parse_unit",
    "unit_parts",
    "layer_activations",
    "split_segments",
    "load_for_analysis",
]
