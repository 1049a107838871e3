"""Find units that track simple properties of the text (inside quotes, bracket depth, column, ...).

For every property, each unit's activation over the text (one value per character, the
state after reading it) is correlated with the property; the units with the largest
absolute correlation are listed. A property that does not vary in the text (no quotes at
all) has no correlation and is reported as absent.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from charrnn.inspect.activations import TextAnalysis, UnitRef

OPENING_QUOTES = {'"': '"', "\u201c": "\u201d"}
OPENING_BRACKETS = {"(": ")", "[": "]", "{": "}"}
CLOSING_BRACKETS = set(OPENING_BRACKETS.values())


def inside_quotes(text: str) -> np.ndarray:
    """1 from an opening quote up to (not including) its closing quote, else 0.

    Double quotes (straight or curly) may span lines. A single quote opens only when it
    does not follow a letter or digit (so the apostrophe of "don't" opens nothing), and a
    single-quoted string also ends at a newline, as it does in most programming languages.
    """
    values = np.zeros(len(text))
    closing = None
    previous = ""
    for position, char in enumerate(text):
        if closing is not None and (char == closing or (closing == "'" and char == "\n")):
            closing = None
        elif closing is None and char in OPENING_QUOTES:
            closing = OPENING_QUOTES[char]
        elif closing is None and char == "'" and not previous.isalnum():
            closing = "'"
        values[position] = closing is not None
        previous = char
    return values


def bracket_depth(text: str) -> np.ndarray:
    """How many (, [ or { are open after each character (an unmatched closing one is ignored)."""
    values = np.zeros(len(text))
    depth = 0
    for position, char in enumerate(text):
        if char in OPENING_BRACKETS:
            depth += 1
        elif char in CLOSING_BRACKETS and depth:
            depth -= 1
        values[position] = depth
    return values


def position_in_line(text: str) -> np.ndarray:
    """Characters since the last newline (the newline itself: 0)."""
    values = np.zeros(len(text))
    column = 0
    for position, char in enumerate(text):
        column = 0 if char == "\n" else column + 1
        values[position] = column
    return values


def word_start(text: str) -> np.ndarray:
    """1 at the first character of a word (a letter or digit after anything else), else 0."""
    values = np.zeros(len(text))
    previous_in_word = False
    for position, char in enumerate(text):
        in_word = char.isalnum()
        values[position] = in_word and not previous_in_word
        previous_in_word = in_word
    return values


def after_newline(text: str) -> np.ndarray:
    """1 at the first character of a line (the one after a newline), else 0."""
    values = np.zeros(len(text))
    for position in range(1, len(text)):
        values[position] = text[position - 1] == "\n"
    return values


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


def find_units(analysis: TextAnalysis, top: int = 3) -> list[PropertyResult]:
    """For each property, the `top` units whose activation correlates best (by absolute value) with it."""
    features = {prop.name: prop.compute(analysis.text) for prop in PROPERTIES}
    varying = {
        name: (feature - feature.mean()) / feature.std()
        for name, feature in features.items()
        if feature.std() > 0
    }
    units: list[UnitRef] = []
    correlations: dict[str, list[np.ndarray]] = {name: [] for name in varying}
    # One (layer, state) block at a time: memory stays one block's worth of per-character values.
    for (layer, part), values in sorted(analysis.activations.items()):
        block = _standardise(analysis.per_char(values.astype(np.float64)))
        units.extend(UnitRef(layer, index, part) for index in range(values.shape[1]))
        for name, feature in varying.items():
            correlations[name].append(feature @ block / len(feature))
    results = []
    for text_property in PROPERTIES:
        if text_property.name not in varying:
            results.append(PropertyResult(text_property, []))
            continue
        every = np.concatenate(correlations[text_property.name])
        best = np.argsort(-np.abs(every), kind="stable")[:top]
        results.append(
            PropertyResult(text_property, [UnitMatch(text_property, units[i], float(every[i])) for i in best])
        )
    return results


def _standardise(values: np.ndarray) -> np.ndarray:
    """Each column to mean 0 and standard deviation 1; a constant column becomes all zeros."""
    centred = values - values.mean(axis=0)
    spread = values.std(axis=0)
    return np.divide(centred, spread, out=np.zeros_like(centred), where=spread > 1e-12)
