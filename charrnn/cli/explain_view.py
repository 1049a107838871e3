"""Colour a text by surprise or by one unit's activation: Rich text for a terminal, plain data for JSON/HTML.

One colour scale serves the terminal and the HTML page (the page's script repeats these
few lines): surprise runs from white (0 bits per character) to red (`SURPRISE_MAX_BITS`
and more); an activation runs from blue (negative) through white (0) to red (positive),
relative to the unit's largest absolute value over the text (1 for a hidden state, which
a tanh bounds to -1..1, so a saturated unit looks saturated).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from charrnn.inspect.activations import TextAnalysis, UnitRef

SURPRISE_MAX_BITS = 8.0
WHITE = (255, 255, 255)
RED = (224, 64, 48)
BLUE = (64, 112, 232)
UNPREDICTED = (210, 210, 210)  # the first segment: nothing came before it to predict it
NEWLINE_MARK = "\u21b5"  # shown before a line break, so its colour is visible
# Segments rendered, or turned into JSON, at a time: the answer is written as it is made, so a
# long text's answer never sits in memory whole (as Rich objects, say, at a few hundred bytes a
# character).
SEGMENTS_PER_PIECE = 4096


@dataclass
class ColourView:
    """One way to colour the text: per-segment values and the scale they are read on."""

    key: str  # "surprise" or a unit such as "0:42:cell"
    label: str
    kind: str  # "surprise" or "unit"
    values: np.ndarray  # one per segment (surprise: bits per character of the segment)
    scale: float  # surprise: bits at full red; unit: |activation| at full colour


def surprise_view(analysis: TextAnalysis) -> ColourView:
    """Colour by bits per character (a segment's bits spread evenly over its characters)."""
    return ColourView(
        "surprise",
        "surprise (bits per character)",
        "surprise",
        analysis.bits / np.maximum(1, analysis.char_counts),
        SURPRISE_MAX_BITS,
    )


def unit_view(analysis: TextAnalysis, unit: UnitRef, note: str = "") -> ColourView:
    """Colour by one unit's activation after each segment."""
    values = analysis.unit_values(unit)
    largest = float(np.abs(values).max()) if len(values) else 0.0
    scale = 1.0 if unit.part == "hidden" else max(largest, 1e-6)
    state = (
        "cell state"
        if unit.part == "cell"
        else ("output" if analysis.model_kind == "lstm" else "hidden state")
    )
    label = f"layer {unit.layer} unit {unit.index} {state}" + (f" ({note})" if note else "")
    return ColourView(str(unit), label, "unit", values, scale)


def colour(view: ColourView, value: float) -> tuple[int, int, int]:
    """The background colour of one value on the view's scale."""
    if value is None or not math.isfinite(value):
        return UNPREDICTED
    if view.kind == "surprise":
        return _blend(WHITE, RED, min(1.0, max(0.0, value / view.scale)))
    amount = min(1.0, abs(value) / view.scale)
    return _blend(WHITE, RED if value > 0 else BLUE, amount)


def _blend(start: tuple[int, int, int], end: tuple[int, int, int], amount: float) -> tuple[int, int, int]:
    return tuple(round(a + (b - a) * amount) for a, b in zip(start, end))  # type: ignore[return-value]


def visible(text: str, mark_newlines: bool = True) -> str:
    """A segment's text as the terminal shows it: a mark before each newline, control characters as '·'."""
    shown = []
    for char in text:
        if char == "\n":
            shown.append(NEWLINE_MARK + "\n" if mark_newlines else "\n")
        elif char == "\t" or char.isprintable():
            shown.append(char)
        else:
            shown.append("\u00b7")
    return "".join(shown)


def render_text(
    analysis: TextAnalysis,
    view: ColourView,
    mark_newlines: bool = True,
    start: int = 0,
    stop: int | None = None,
):
    """The text (segments `start` to `stop`) as a Rich `Text`, each segment's background coloured
    (black letters, readable on it).

    `mark_newlines` shows a coloured mark where a line ends (the newline's own colour);
    leave it off for plain text, which should read as the original.
    """
    from rich.text import Text

    stop = len(analysis.segment_ends) if stop is None else stop
    rendered = Text()
    for segment, value in zip(analysis.segments[start:stop], view.values[start:stop].tolist()):
        red, green, blue = colour(view, value)
        shown = visible(segment, mark_newlines)
        if shown.endswith("\n"):
            # Colour the mark, not the rest of the terminal line.
            rendered.append(shown[:-1], style=f"black on rgb({red},{green},{blue})")
            rendered.append("\n")
        else:
            rendered.append(shown, style=f"black on rgb({red},{green},{blue})")
    return rendered


def legend(view: ColourView):
    """A one-line key to the colours, as Rich `Text`."""
    from rich.text import Text

    line = Text(f"{view.label}: ")
    if view.kind == "surprise":
        steps = [0.0, view.scale / 4, view.scale / 2, 3 * view.scale / 4, view.scale]
        for value in steps:
            line.append("  ", style="on rgb({},{},{})".format(*colour(view, value)))
        line.append(f" 0 to {view.scale:g}+ bits")
    else:
        for value in (-view.scale, -view.scale / 2, 0.0, view.scale / 2, view.scale):
            line.append("  ", style="on rgb({},{},{})".format(*colour(view, value)))
        line.append(f" -{view.scale:.3g} to +{view.scale:.3g}")
    return line


def _rounded(value: float, digits: int = 4) -> float | None:
    return None if value is None or not math.isfinite(value) else round(float(value), digits)


def render_pieces(analysis: TextAnalysis, view: ColourView, mark_newlines: bool = True) -> Iterator:
    """`render_text` of the whole text, as Rich `Text`s of a few thousand segments each, in order."""
    for start in range(0, len(analysis.segment_ends), SEGMENTS_PER_PIECE):
        yield render_text(analysis, view, mark_newlines, start, start + SEGMENTS_PER_PIECE)


def explanation_json(
    analysis: TextAnalysis,
    views: list[ColourView],
    model_path: str,
    tokenizer_kind: str,
    found: list[dict[str, Any]] | None = None,
) -> Iterator[str]:
    """Everything the views show, as JSON text (what `--json` prints and the HTML page embeds),
    made a few thousand segments at a time: the pieces joined are `json.dumps` of

        {"model", "model_kind", "tokenizer", "characters", "bits_per_char",
         "segments": [{"text", "bits", "top": [[label, probability], ...]}, ...],
         "views": [{"key", "label", "kind", "scale", "values": [one per segment]}, ...],
         "units_found": [...]}
    """

    def dumps(value: Any) -> str:
        return json.dumps(value, ensure_ascii=False)

    head = {
        "model": model_path,
        "model_kind": analysis.model_kind,
        "tokenizer": tokenizer_kind,
        "characters": len(analysis.text),
        "bits_per_char": _rounded(analysis.bits_per_char),
    }
    yield dumps(head)[:-1] + ', "segments": ['
    count = len(analysis.segment_ends)
    tops = analysis.predictions if analysis.top_ids is not None else None
    for start in range(0, count, SEGMENTS_PER_PIECE):
        stop = min(count, start + SEGMENTS_PER_PIECE)
        segments = zip(
            analysis.segments[start:stop],
            analysis.bits[start:stop].tolist(),
            tops[start:stop] if tops is not None else [[]] * (stop - start),
        )
        records = (
            dumps(
                {"text": text, "bits": _rounded(bits), "top": [[label, _rounded(p, 5)] for label, p in top]}
            )
            for text, bits, top in segments
        )
        yield (", " if start else "") + ", ".join(records)
    yield '], "views": ['
    for number, view in enumerate(views):
        described = {"key": view.key, "label": view.label, "kind": view.kind, "scale": _rounded(view.scale)}
        yield (", " if number else "") + dumps(described)[:-1] + ', "values": ['
        for start in range(0, count, SEGMENTS_PER_PIECE):
            values = [_rounded(value) for value in view.values[start : start + SEGMENTS_PER_PIECE].tolist()]
            yield (", " if start else "") + dumps(values)[1:-1]
        yield "]}"
    yield '], "units_found": ' + dumps(found or []) + "}"


def found_units_data(results) -> list[dict[str, Any]]:
    """The unit finder's answer (`unit_finder.find_units`) as JSON-safe rows, best first per property."""
    rows = []
    for result in results:
        for rank, match in enumerate(result.matches, start=1):
            rows.append(
                {
                    "property": result.property.name,
                    "description": result.property.description,
                    "rank": rank,
                    "unit": str(match.unit),
                    "correlation": _rounded(match.correlation),
                }
            )
    return rows


def views_for(analysis: TextAnalysis, chosen: UnitRef | None = None, results=()) -> list[ColourView]:
    """Surprise, the chosen unit, then every unit the finder listed (each once, labelled with why)."""
    views = [surprise_view(analysis)]
    seen = set()
    if chosen is not None:
        views.append(unit_view(analysis, chosen))
        seen.add(chosen)
    for result in results:
        for match in result.matches:
            if match.unit in seen:
                continue
            seen.add(match.unit)
            views.append(
                unit_view(
                    analysis, match.unit, f"{result.property.description}, r = {match.correlation:+.2f}"
                )
            )
    return views
