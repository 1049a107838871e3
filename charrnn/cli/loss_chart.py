"""Loss curves of one or several runs on one chart, from their `metrics.jsonl` (matplotlib, optional extra).

matplotlib is imported only when a chart is drawn, so charrnn works without it; a
missing matplotlib is one `PlottingUnavailable` error that says how to install it.
Metrics are read by `metrics_log` (tolerant on purpose: a run still training, or one whose
file was damaged, is still plotted from every line that reads).
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from charrnn.cli.console import terminal_safe
from charrnn.errors import CharrnnError, UsageProblem
from charrnn.store.metrics_log import read_metrics_file

INSTALL_HINT = 'pip install "charrnn[plot]"'
FORMATS = {".png": "png", ".svg": "svg", ".pdf": "pdf"}
X_AXES = {"steps": "step", "time": "elapsed", "chars": "chars_seen"}
# The fields the chart draws. Each is a count, a duration, a loss or bits: never below 0, and
# never above this: a loss per token is a mean of float32 results (below 3.4e38), bits per
# character at most 4 / ln 2 times that (4 bytes a character), and steps, seconds and characters
# are far smaller. Larger values overflowed matplotlib's scaling (1e308) or collapsed its layout
# (1e200). A record holding such a value, or one of another type, is damaged; null (or a missing
# field) is a gap.
DRAWN_FIELDS = ("elapsed", "chars_seen", "train_loss", "val_loss", "val_bpc")
LARGEST_VALUE = 1e40


class PlottingUnavailable(CharrnnError):
    """matplotlib is not installed."""


@dataclass
class RunCurves:
    """The evaluation records of one run, in step order."""

    name: str
    path: Path
    records: list[dict[str, Any]]
    damaged_lines: list[int] = field(default_factory=list)  # 1-based numbers of lines that did not read

    def series(self, key: str) -> list[float]:
        """One field of every record (missing or null: nan, so the line has a gap there)."""
        return [_number(record.get(key)) for record in self.records]


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return math.nan
    return float(value)


def metrics_file(run: str) -> Path:
    """The metrics file of a run: RUN/metrics.jsonl, or RUN itself when it names a file."""
    if run == "":  # Path("") is the current folder, which the user did not name
        raise UsageProblem('a run is an empty name (""): give a run directory or its metrics.jsonl')
    path = Path(run)
    if path.is_dir():
        return path / "metrics.jsonl"
    if path.is_file():
        return path
    raise UsageProblem(f"run not found: {run} (give a run directory or its metrics.jsonl)")


def _possible(value: Any) -> bool:
    """Whether `value` can be a drawn field's: a number from 0 to `LARGEST_VALUE`."""
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and 0 <= value <= LARGEST_VALUE  # False for nan too
    )


def plottable(record: dict[str, Any]) -> bool:
    """Whether a record can be drawn: an integer step, and every drawn field possible or null."""
    step = record.get("step")
    if not (isinstance(step, int) and not isinstance(step, bool) and _possible(step)):
        return False
    return all(record.get(key) is None or _possible(record[key]) for key in DRAWN_FIELDS)


def read_run(run: str) -> RunCurves:
    """Read a run's metrics (`metrics_log.read_metrics_file`); a record that cannot be placed on a
    curve (no step) or holds an impossible value (`plottable`: a step of -5, a loss of 1e308) is
    skipped and counted with the damaged lines."""
    path = metrics_file(run)
    name = path.parent.name if path.name == "metrics.jsonl" else path.stem
    reading = read_metrics_file(path)
    records, damaged = [], list(reading.damaged_lines)
    for number, record in zip(reading.record_lines, reading.records):
        if plottable(record):
            records.append(record)
        else:
            damaged.append(number)
    records.sort(key=lambda record: record["step"])
    return RunCurves(name, path, records, sorted(damaged))


def unique_names(runs: list[RunCurves]) -> None:
    """Label runs by folder name, or by their path where two share a name."""
    names = [run.name for run in runs]
    for run in runs:
        if names.count(run.name) > 1:
            run.name = str(run.path.parent if run.path.name == "metrics.jsonl" else run.path)


def image_format(output: Path) -> str:
    """The image format a file name asks for (by its extension)."""
    kind = FORMATS.get(output.suffix.lower())
    if kind is None:
        raise UsageProblem(f"cannot tell the image format of {output}: name it .png, .svg or .pdf")
    return kind


def require_matplotlib():
    """matplotlib and its Figure class, or one `PlottingUnavailable` error saying how to install it."""
    try:
        import matplotlib
        from matplotlib.figure import Figure
    except ImportError:
        raise PlottingUnavailable(f"plotting needs matplotlib, an optional extra: {INSTALL_HINT}") from None
    return matplotlib, Figure


def chart_text(text: str) -> str:
    """A run's name as matplotlib should draw it: what `terminal_safe` makes of it, with `$` taken
    literally (a name such as `a$\\frac$b` is not TeX to parse, which failed)."""
    return terminal_safe(text).replace("$", r"\$")


def draw_curves(runs: list[RunCurves], x_axis: str = "steps", image: str = "png") -> bytes:
    """The chart as image bytes: validation bits/char on top, train and validation loss below."""
    if x_axis not in X_AXES:
        raise UsageProblem(f"--x must be one of {', '.join(X_AXES)}, got {x_axis!r}")
    _, Figure = require_matplotlib()
    from matplotlib.ticker import EngFormatter

    figure = Figure(figsize=(8, 6.5), dpi=100, layout="constrained")
    bpc_axes, loss_axes = figure.subplots(2, 1, sharex=True, height_ratios=[1, 1])
    key = X_AXES[x_axis]
    longest = max((max(run.series(key), default=0) for run in runs), default=0)
    in_minutes = x_axis == "time" and longest > 300
    legend_lines, legend_labels = [], []
    for index, run in enumerate(runs):
        colour = f"C{index % 10}"
        name = chart_text(run.name)
        xs = run.series(key)
        if in_minutes:
            xs = [x / 60 for x in xs]
        bpc = run.series("val_bpc")
        finite = [(b, x) for x, b in zip(xs, bpc) if math.isfinite(b)]
        best = min(finite) if finite else None
        label = name + (f" (best {best[0]:.3f})" if best else "")
        # The legend is given its lines and labels: matplotlib leaves out a label of its own
        # choosing that starts with "_", and a run's folder may be named so.
        legend_lines += bpc_axes.plot(xs, bpc, marker="o", markersize=3, color=colour)
        legend_labels.append(label)
        if best:
            bpc_axes.plot([best[1]], [best[0]], marker="*", markersize=11, color=colour)
        loss_axes.plot(xs, run.series("train_loss"), color=colour)
        loss_axes.plot(xs, run.series("val_loss"), color=colour, linestyle="--", marker="o", markersize=2)
    bpc_axes.set_ylabel("validation bits/char")
    names = ", ".join(chart_text(run.name) for run in runs)
    bpc_axes.set_title(f"charrnn: {names}" if len(names) <= 90 else f"charrnn: {len(runs)} runs", fontsize=10)
    loss_axes.set_ylabel("loss (nats/token)\ntrain solid, validation dashed")
    loss_axes.set_xlabel(
        {
            "steps": "training step",
            "chars": "characters of corpus seen",
            "time": f"training time ({'minutes' if in_minutes else 'seconds'})",
        }[x_axis]
    )
    if x_axis == "chars":
        loss_axes.xaxis.set_major_formatter(EngFormatter())
    for axes in (bpc_axes, loss_axes):
        axes.grid(True, alpha=0.3)
    bpc_axes.legend(legend_lines, legend_labels, fontsize=8, loc="upper right")
    buffer = io.BytesIO()
    figure.savefig(buffer, format=image)
    return buffer.getvalue()
