"""The self-contained HTML page of `charrnn explain --html`: text coloured by surprise or a unit.

One file, with its CSS, script and data inline: it opens from disk, offline, in any
browser. The data is the JSON of `explain_view.explanation_json`, in a
`<script type="application/json" id="explain-data">` element (tests read it back).
"""

from __future__ import annotations

import html
import json
from collections.abc import Iterable, Iterator
from typing import Any

PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>__TITLE__</title>
<style>
body { font-family: system-ui, sans-serif; margin: 1.5em 2em; color: #222; background: #fafafa; }
h1 { font-size: 1.2em; margin: 0 0 .3em; }
.meta { color: #555; font-size: .9em; margin-bottom: .8em; }
.controls { display: flex; gap: 1.5em; align-items: center; flex-wrap: wrap; margin-bottom: .8em; }
select { font-size: 1em; padding: .2em; max-width: 40em; }
.legend { display: flex; align-items: center; gap: .4em; font-size: .9em; }
.legend .bar { width: 12em; height: 1em; border: 1px solid #aaa; }
#text { font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 15px; line-height: 1.55;
        white-space: pre-wrap; word-break: break-all; background: #fff; border: 1px solid #ddd;
        padding: 1em; color: #000; }
#text span { border-radius: 2px; cursor: default; }
#text span.nl::before { content: "\\21B5"; color: #888; }
#text span.hover { outline: 2px solid #333; }
#tip { position: fixed; display: none; background: #fff; border: 1px solid #999; border-radius: 4px;
       box-shadow: 0 2px 8px rgba(0,0,0,.25); padding: .5em .7em; font-size: 13px; pointer-events: none;
       min-width: 14em; z-index: 10; }
#tip table { border-collapse: collapse; width: 100%; }
#tip td { padding: 1px 4px; font-family: ui-monospace, Menlo, Consolas, monospace; }
#tip td.p { text-align: right; width: 4.5em; }
#tip .barcell { width: 6em; }
#tip .pbar { height: .7em; background: #e04030; }
#tip tr.actual td { font-weight: bold; }
#tip .head { margin-bottom: .3em; }
#text span.copied { box-shadow: inset 0 -3px 0 #1a7f37; }
#novelty { font-size: .9em; margin-bottom: .8em; color: #1a5f2f; }
</style>
</head>
<body>
<h1>__TITLE__</h1>
<div class="meta" id="meta"></div>
<div class="controls">
  <label>Colour by <select id="view"></select></label>
  <div class="legend"><span id="low"></span><div class="bar" id="bar"></div><span id="high"></span></div>
</div>
<div id="novelty" data-novelty="__NOVELTY__"></div>
<div id="text"></div>
<div id="tip"></div>
<script type="application/json" id="explain-data">__DATA__</script>
<script>
"use strict";
const data = JSON.parse(document.getElementById("explain-data").textContent);
const WHITE = [255, 255, 255], RED = [224, 64, 48], BLUE = [64, 112, 232], GREY = [210, 210, 210];
function blend(a, b, t) { return a.map((x, i) => Math.round(x + (b[i] - x) * t)); }
function colour(view, value) {
  if (value === null) return GREY;
  if (view.kind === "surprise") return blend(WHITE, RED, Math.min(1, Math.max(0, value / view.scale)));
  return blend(WHITE, value > 0 ? RED : BLUE, Math.min(1, Math.abs(value) / view.scale));
}
function css(rgb) { return "rgb(" + rgb.join(",") + ")"; }
function shown(piece) {
  if (piece === "\\n") return "\\u21B5";
  if (piece === " ") return "\\u2423";
  if (piece === "\\t") return "\\u21E5";
  return piece.replace(/\\n/g, "\\u21B5").replace(/\\t/g, "\\u21E5");
}
const textBox = document.getElementById("text");
const spans = data.segments.map((segment, index) => {
  const span = document.createElement("span");
  span.dataset.index = index;
  span.textContent = segment.text;
  if (segment.text.endsWith("\\n")) span.classList.add("nl");
  textBox.appendChild(span);
  return span;
});
const select = document.getElementById("view");
data.views.forEach((view, index) => {
  const option = document.createElement("option");
  option.value = index;
  option.textContent = view.label;
  select.appendChild(option);
});
let current = data.views[0];
function paint() {
  current = data.views[Number(select.value)];
  spans.forEach((span, index) => { span.style.background = css(colour(current, current.values[index])); });
  const low = current.kind === "surprise" ? 0 : -current.scale;
  document.getElementById("low").textContent = current.kind === "surprise" ? "0 bits" : low.toPrecision(3);
  document.getElementById("high").textContent = current.kind === "surprise"
    ? current.scale + "+ bits" : "+" + current.scale.toPrecision(3);
  const stops = [0, .25, .5, .75, 1].map(t => css(colour(current, low + t * (current.scale - low))));
  document.getElementById("bar").style.background = "linear-gradient(to right," + stops.join(",") + ")";
}
select.addEventListener("change", paint);
// `explain --novelty`: underline the segments inside spans copied from the training text
// (offsets are in characters, so count code points, not UTF-16 units).
const novelty = JSON.parse(document.getElementById("novelty").dataset.novelty);
const copiedFrom = spans.map(() => null);
if (novelty) {
  let offset = 0, next = 0;  // spans come in order of start and of end: one sweep
  data.segments.forEach((segment, index) => {
    const length = Array.from(segment.text).length;
    const spansLeft = novelty.spans;
    while (next < spansLeft.length && spansLeft[next].start + spansLeft[next].length <= offset) next++;
    const span = next < spansLeft.length && spansLeft[next].start < offset + length ? spansLeft[next] : null;
    if (span) {
      spans[index].classList.add("copied");
      copiedFrom[index] = span.file + ", line " + span.line;
    }
    offset += length;
  });
  const longest = novelty.longest;
  document.getElementById("novelty").textContent = (100 * novelty.copied_share).toFixed(1) +
    "% of the text is in spans of " + novelty.min_span + "+ characters found in the training text " +
    "(underlined in green)" + (longest && longest.length ? "; the longest is " + longest.length +
    " characters, from " + longest.file + ", line " + longest.line : "") + ".";
}
document.getElementById("meta").textContent = data.model + " \\u2014 " + data.model_kind + ", " +
  data.tokenizer + " tokens, " + data.characters.toLocaleString() + " characters, " +
  (data.bits_per_char === null ? "-" : data.bits_per_char.toFixed(3)) +
  " bits per character. Hover a character for the model's top predictions there.";
const tip = document.getElementById("tip");
function showTip(span, event) {
  const index = Number(span.dataset.index), segment = data.segments[index];
  let body = '<div class="head"><b>' + escapeHtml(shown(segment.text)) + "</b> ";
  body += segment.bits === null ? "(first: not predicted)" : segment.bits.toFixed(2) + " bits";
  if (current.kind === "unit") body += ", " + current.key + " = " + current.values[index];
  body += "</div>";
  if (copiedFrom[index]) body += '<div class="head">copied from ' + escapeHtml(copiedFrom[index]) + "</div>";
  if (segment.top.length) {
    body += "<table>";
    segment.top.forEach(([label, p]) => {
      const actual = segment.text.startsWith(label) && label.length > 0;
      body += '<tr class="' + (actual ? "actual" : "") + '"><td>' + escapeHtml(shown(label)) +
        '</td><td class="barcell"><div class="pbar" style="width:' + (100 * p).toFixed(1) +
        '%"></div></td><td class="p">' + (100 * p).toFixed(1) + "%</td></tr>";
    });
    body += "</table>";
  }
  tip.innerHTML = body;
  tip.style.display = "block";
  const x = Math.min(event.clientX + 14, window.innerWidth - tip.offsetWidth - 8);
  const y = event.clientY + 18 + tip.offsetHeight > window.innerHeight
    ? event.clientY - tip.offsetHeight - 10 : event.clientY + 18;
  tip.style.left = x + "px";
  tip.style.top = y + "px";
}
function escapeHtml(text) {
  return text.replace(/[&<>"]/g, c => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"}[c]));
}
let hovered = null;
textBox.addEventListener("mousemove", event => {
  const span = event.target.closest("span");
  if (hovered && hovered !== span) hovered.classList.remove("hover");
  hovered = span;
  if (!span) { tip.style.display = "none"; return; }
  span.classList.add("hover");
  showTip(span, event);
});
textBox.addEventListener("mouseleave", () => {
  tip.style.display = "none";
  if (hovered) hovered.classList.remove("hover");
});
paint();
</script>
</body>
</html>
"""


def embed_json(text: str) -> str:
    """JSON text made safe inside a <script> element: no '<', '>' or '&' can end it early
    (each is escaped alone, so pieces of JSON can be escaped one by one)."""
    return text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")


def page_pieces(
    json_pieces: Iterable[str], title: str, novelty: dict[str, Any] | None = None
) -> Iterator[str]:
    """The page, a piece at a time, around JSON text given a piece at a time (`explanation_json`);
    `novelty` (a `NoveltyReport.to_dict()`) marks the copied spans."""
    # An attribute, not a script element: its quotes and ampersands escaped, it cannot end early.
    page = PAGE.replace("__NOVELTY__", html.escape(json.dumps(novelty, ensure_ascii=False), quote=True))
    before, after = page.replace("__TITLE__", html.escape(title)).split("__DATA__")
    yield before
    for piece in json_pieces:
        yield embed_json(piece)
    yield after


def render_page(data: dict[str, Any], title: str) -> str:
    """The whole page for data shaped like `explanation_json`'s, as one string."""
    return "".join(page_pieces([json.dumps(data, ensure_ascii=False, allow_nan=False)], title))


def read_embedded_data(page: str) -> dict[str, Any]:
    """The data a page embeds (the inverse of `render_page`, for tests and tools)."""
    start_tag = '<script type="application/json" id="explain-data">'
    start = page.index(start_tag) + len(start_tag)
    return json.loads(page[start : page.index("</script>", start)])


def read_novelty_data(page: str) -> Any:
    """The copied spans a page marks (`explain --html --novelty`; None without --novelty)."""
    start_tag = '<div id="novelty" data-novelty="'
    start = page.index(start_tag) + len(start_tag)
    return json.loads(html.unescape(page[start : page.index('"', start)]))
