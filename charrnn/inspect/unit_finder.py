"""Find units that track simple properties of the text (inside quotes, bracket depth, column, ...).

For every property, each unit's activation over the text (one value per character, the
state after reading it) is correlated with the property; the units with the largest
absolute correlation are listed. A property that does not vary in the text (no quotes at
all) has no correlation and is reported as absent.

The finder watches `analyse_text` read the text (a `StateObserver`) and keeps, per unit and
property, running sums of a window's worth of characters at a time (counts, means and
co-moments, merged as Chan et al. merge variances, which stays exact where summing squares
would cancel), never the activations themselves: its memory is the model's size, whatever the
length of the text.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from charrnn.data.tokenizers import Tokenizer
from charrnn.inspect.activations import StateKey, UnitRef, analyse_text, unit_parts
from charrnn.model import CharRNN

OPENING_QUOTES = {'"': '"', "\u201c": "\u201d"}
OPENING_BRACKETS = {"(": ")", "[": "]", "{": "}"}
CLOSING_BRACKETS = set(OPENING_BRACKETS.values())


class TextFeatures:
    """The properties of each character of a text given a piece at a time (what the pieces before
    left open, a quote or a bracket, is carried on), one column per property of `PROPERTIES`.

    - inside quotes: 1 from an opening quote up to (not including) its closing quote, else 0.
      Double quotes (straight or curly) may span lines. A single quote opens only when it
      does not follow a letter or digit (so the apostrophe of "don't" opens nothing), and a
      single-quoted string also ends at a newline, as it does in most programming languages.
    - bracket depth: how many (, [ or { are open after each character (an unmatched closing
      one is ignored).
    - position in the line: characters since the last newline (the newline itself: 0).
    - start of a word: 1 at the first character of a word (a letter or digit after anything else).
    - just after a newline: 1 at the first character of a line (the one after a newline), else 0.
    """

    def __init__(self) -> None:
        self.closing: str | None = None
        self.previous = ""
        self.depth = 0
        self.column = 0

    def feed(self, text: str) -> np.ndarray:
        """The properties of the characters of `text`, (characters, properties) float64."""
        values = np.zeros((len(text), len(PROPERTIES)))
        closing, previous, depth, column = self.closing, self.previous, self.depth, self.column
        for position, char in enumerate(text):
            if closing is not None and (char == closing or (closing == "'" and char == "\n")):
                closing = None
            elif closing is None and char in OPENING_QUOTES:
                closing = OPENING_QUOTES[char]
            elif closing is None and char == "'" and not previous.isalnum():
                closing = "'"
            if char in OPENING_BRACKETS:
                depth += 1
            elif char in CLOSING_BRACKETS and depth:
                depth -= 1
            column = 0 if char == "\n" else column + 1
            row = values[position]
            row[0] = closing is not None
            row[1] = depth
            row[2] = column
            row[3] = char.isalnum() and not previous.isalnum()
            row[4] = previous == "\n"
            previous = char
        self.closing, self.previous, self.depth, self.column = closing, previous, depth, column
        return values


def inside_quotes(text: str) -> np.ndarray:
    """1 from an opening quote up to (not including) its closing quote, else 0 (see `TextFeatures`)."""
    return TextFeatures().feed(text)[:, 0]


def bracket_depth(text: str) -> np.ndarray:
    """How many (, [ or { are open after each character (an unmatched closing one is ignored)."""
    return TextFeatures().feed(text)[:, 1]


def position_in_line(text: str) -> np.ndarray:
    """Characters since the last newline (the newline itself: 0)."""
    return TextFeatures().feed(text)[:, 2]


def word_start(text: str) -> np.ndarray:
    """1 at the first character of a word (a letter or digit after anything else), else 0."""
    return TextFeatures().feed(text)[:, 3]


def after_newline(text: str) -> np.ndarray:
    """1 at the first character of a line (the one after a newline), else 0."""
    return TextFeatures().feed(text)[:, 4]


@dataclass(frozen=True)
class TextProperty:
    name: str
    description: str
    compute: Callable[[str], np.ndarray]


PROPERTIES = (
    TextProperty("quotes", "inside quotes", inside_quotes),
    TextProperty("brackets", "bracket depth", bracket_depth),
    TextProperty("column", "position in the line", position_in_line),
    TextProperty("word-start", "start of a word", word_start),
    TextProperty("line-start", "just after a newline", after_newline),
)


@dataclass
class UnitMatch:
    """A unit that tracks a property, and how well (Pearson correlation over the text's characters)."""

    property: TextProperty
    unit: UnitRef
    correlation: float


@dataclass
class PropertyResult:
    property: TextProperty
    matches: list[UnitMatch]  # best first; empty when the property does not vary in the text


class _Moments:
    """Count, means, sums of squared deviations and co-moments of per-character values, merged a
    batch at a time."""

    def __init__(self, width: int) -> None:
        self.count = 0
        self.mean = np.zeros(width)
        self.squares = np.zeros(width)  # sum of squared deviations from the mean

    def merge(self, count: int, mean: np.ndarray, squares: np.ndarray) -> np.ndarray:
        """Add a batch's moments; return the shift factor its co-moments need (see `UnitFinder`)."""
        total = self.count + count
        delta = mean - self.mean
        weight = self.count * count / total
        self.mean += delta * (count / total)
        self.squares += squares + delta * delta * weight
        self.count = total
        return delta * weight


class UnitFinder:
    """Correlates every unit with every text property while `analyse_text` reads the text.

    Pass it as an observer (`analyse_text(..., observers=[finder])`), then ask `results(top)`.
    """

    def __init__(self, model_kind: str, num_layers: int, hidden_size: int) -> None:
        # Units in a fixed order, (layer, part) blocks sorted, so ties are broken the same way.
        self.blocks: list[StateKey] = sorted(
            (layer, part) for layer in range(num_layers) for part in unit_parts(model_kind)
        )
        self.hidden_size = hidden_size
        self.features = TextFeatures()
        self.feature_moments = _Moments(len(PROPERTIES))
        self.unit_moments = {block: _Moments(hidden_size) for block in self.blocks}
        self.co_moments = {block: np.zeros((len(PROPERTIES), hidden_size)) for block in self.blocks}

    def observe(self, text: str, char_counts: np.ndarray, states: dict[StateKey, np.ndarray]) -> None:
        """Take in the characters of some segments and the states after each (a `StateObserver`)."""
        features = self.features.feed(text)
        count = len(features)
        if count == 0:
            return
        feature_mean = features.mean(axis=0)
        centred = features - feature_mean
        # Every character of a segment has the segment's activation: the co-moment needs, per
        # segment, only the sum of its characters' centred features.
        starts = np.concatenate([[0], np.cumsum(char_counts)[:-1]])
        per_segment = np.add.reduceat(centred, starts, axis=0)
        weights = char_counts.astype(np.float64)
        feature_shift = self.feature_moments.merge(count, feature_mean, (centred * centred).sum(axis=0))
        for block in self.blocks:
            values = states[block].astype(np.float64)
            mean = weights @ values / count
            deviations = values - mean
            moments = self.unit_moments[block]
            old_mean = moments.mean.copy()
            moments.merge(count, mean, weights @ (deviations * deviations))
            # Chan's merge of co-moments: C = C_a + C_b + d_f d_x n_a n_b / n.
            unit_delta = mean - old_mean
            self.co_moments[block] += per_segment.T @ deviations + np.outer(feature_shift, unit_delta)

    def results(self, top: int = 3) -> list[PropertyResult]:
        """For each property, the `top` units whose activation correlates best (by absolute value) with it."""
        units = [
            UnitRef(layer, index, part) for layer, part in self.blocks for index in range(self.hidden_size)
        ]
        count = max(1, self.feature_moments.count)
        results = []
        for row, text_property in enumerate(PROPERTIES):
            feature_squares = self.feature_moments.squares[row]
            if not feature_squares > 0:
                results.append(PropertyResult(text_property, []))
                continue
            every = []
            for block in self.blocks:
                unit_squares = self.unit_moments[block].squares
                varying = np.sqrt(np.maximum(unit_squares, 0) / count) > 1e-12  # a constant unit: 0
                denominator = np.sqrt(feature_squares * np.where(varying, unit_squares, 1.0))
                every.append(np.where(varying, self.co_moments[block][row] / denominator, 0.0))
            correlations = np.concatenate(every)
            best = np.argsort(-np.abs(correlations), kind="stable")[:top]
            results.append(
                PropertyResult(
                    text_property,
                    [UnitMatch(text_property, units[i], float(correlations[i])) for i in best],
                )
            )
        return results


def find_units(model: CharRNN, tokenizer: Tokenizer, text: str, top: int = 3) -> list[PropertyResult]:
    """For each property, the `top` units of `model` that track it best over `text`."""
    config = model.config
    finder = UnitFinder(config.model, config.num_layers, config.hidden_size)
    analyse_text(model, tokenizer, text, top_predictions=0, observers=[finder])
    return finder.results(top)
