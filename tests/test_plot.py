"""`charrnn plot` and the live sparkline: curves from metrics.jsonl, tolerant of damage and of no data."""

from __future__ import annotations

import io
import json
import re
import shutil
import struct
import sys
from dataclasses import dataclass
from xml.etree import ElementTree

import pytest
from conftest import error_lines, run_cli

from charrnn.cli.console import TrainingDisplay, sparkline
from charrnn.cli.loss_chart import read_run
from charrnn.store.metrics_log import read_metrics_file


def copy_run(trained_run, tmp_path, name):
    target = tmp_path / name
    shutil.copytree(trained_run, target)
    return target


def test_plot_writes_a_png_and_names_it_on_stdout(trained_run, tmp_path):
    output = tmp_path / "curves.png"
    result = run_cli("plot", str(trained_run), "-o", str(output))
    assert result.exit_code == 0, result.stderr
    assert result.stdout == f"{output}\n"
    png = output.read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and png[12:16] == b"IHDR"
    assert struct.unpack(">II", png[16:24]) == (800, 650)  # 8 x 6.5 inches at 100 dots an inch
    assert result.stderr == f"wrote {output}: 1 run, 3 evaluations\n"


SVG = "{http://www.w3.org/2000/svg}"


@dataclass
class SvgAxes:
    """What one panel of a matplotlib SVG holds."""

    curves: list[list[tuple[float, float]]]  # the data lines drawn in the panel, as pixel points in order
    texts: list[str]  # every text of the panel: ticks, axis labels, title, legend
    legend: list[str]


def read_svg_axes(path) -> list[SvgAxes]:
    """The panels of a chart matplotlib saved as SVG, top to bottom.

    matplotlib draws text as glyph outlines and writes the text itself in a comment before
    them; data lines are the panel's own `line2d` groups whose path is clipped to the panel
    (tick marks and the legend's sample lines are neither).
    """
    root = ElementTree.parse(
        path, ElementTree.XMLParser(target=ElementTree.TreeBuilder(insert_comments=True))
    ).getroot()

    def comments(element):
        return [node.text.strip() for node in element.iter() if node.tag is ElementTree.Comment]

    panels = []
    for axes in root.iter(f"{SVG}g"):
        if not axes.get("id", "").startswith("axes_"):
            continue
        curves, legend = [], []
        for child in axes.findall(f"{SVG}g"):
            if child.get("id", "").startswith("line2d_"):
                path_element = child.find(f"{SVG}path")
                if path_element is not None and path_element.get("clip-path"):
                    points = re.findall(r"[ML] (\S+) (\S+)", path_element.get("d"))
                    curves.append([(float(x), float(y)) for x, y in points])
            elif child.get("id", "").startswith("legend_"):
                legend = comments(child)
        panels.append(SvgAxes(curves, comments(axes), legend))
    return panels


def assert_drawn_to_scale(pixels: list[float], values: list[float], upwards: bool) -> None:
    """`pixels` are `values` on a linear axis: pixel = a * value + b, with a > 0 (a < 0 upwards, as SVG's y
    grows downwards)."""
    assert len(pixels) == len(values) >= 3
    scale = (pixels[-1] - pixels[0]) / (values[-1] - values[0])
    assert (scale < 0) if upwards else (scale > 0)
    for pixel, value in zip(pixels, values, strict=True):
        assert pixel == pytest.approx(pixels[0] + scale * (value - values[0]), abs=0.01)


@pytest.mark.parametrize(
    "x_axis, key, x_label",
    [
        ("steps", "step", "training step"),
        ("time", "elapsed", "training time (seconds)"),
        ("chars", "chars_seen", "characters of corpus seen"),
    ],
)
def test_several_runs_on_one_svg(trained_run, tmp_path, x_axis, key, x_label):
    other = copy_run(trained_run, tmp_path, "other")
    output = tmp_path / "compare.svg"
    result = run_cli("plot", str(trained_run), str(other / "metrics.jsonl"), "-o", str(output), "--x", x_axis)
    assert result.exit_code == 0, result.stderr
    assert result.stderr == f"wrote {output}: 2 runs, 6 evaluations\n"
    records = read_run(str(trained_run)).records
    assert len(records) == 3
    best = min(record["val_bpc"] for record in records)
    bpc_panel, loss_panel = read_svg_axes(output)
    # Top: per run, the validation bits/char curve and a star on its best point; names in the legend.
    assert bpc_panel.legend == [f"run (best {best:.3f})", f"other (best {best:.3f})"]
    assert {"charrnn: run, other", "validation bits/char"} <= set(bpc_panel.texts)
    assert [len(curve) for curve in bpc_panel.curves] == [3, 1, 3, 1]
    xs, bpcs = [record[key] for record in records], [record["val_bpc"] for record in records]
    for curve, star in (bpc_panel.curves[0:2], bpc_panel.curves[2:4]):
        assert_drawn_to_scale([x for x, _ in curve], xs, upwards=False)
        assert_drawn_to_scale([y for _, y in curve], bpcs, upwards=True)
        assert star == [curve[bpcs.index(best)]]
    # Bottom: per run, train loss then validation loss; the x axis is named for what it counts.
    assert {x_label, "loss (nats/token)", "train solid, validation dashed"} <= set(loss_panel.texts)
    assert [len(curve) for curve in loss_panel.curves] == [3, 3, 3, 3]
    for curve, field in zip(loss_panel.curves, ["train_loss", "val_loss"] * 2, strict=True):
        assert_drawn_to_scale([x for x, _ in curve], xs, upwards=False)
        assert_drawn_to_scale([y for _, y in curve], [record[field] for record in records], upwards=True)


def test_damaged_line_is_skipped_with_a_note(trained_run, tmp_path):
    run = copy_run(trained_run, tmp_path, "damaged")
    lines = (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    lines.insert(1, '{"step": 7, "val_bp')  # a write cut short
    lines.append("[1, 2]")  # JSON, but not a record
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert len(read_run(str(run)).records) == 3
    assert read_run(str(run)).damaged_lines == [2, 5]
    result = run_cli("plot", str(run), "-o", str(tmp_path / "p.png"))
    assert result.exit_code == 0, result.stderr
    assert result.stderr == (
        f"note: {run / 'metrics.jsonl'}: skipped 2 damaged lines (line 2, 5)\n"
        f"wrote {tmp_path / 'p.png'}: 1 run, 3 evaluations\n"
    )


def test_plot_reads_metrics_as_the_metrics_log_does(tmp_path):
    # One reader for metrics.jsonl: a line that is not UTF-8 is damaged here too (it is not read
    # with replacement characters), and a record without an integer step is left off the curve.
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(
        b'{"step": 2}\n{"step": 1, "note": "\xff"}\n\n{"note": "no step"}\n'
        b'{"step": true}\n{"step": 1}\n{"step": 3'
    )
    curves = read_run(str(path))
    assert [record["step"] for record in curves.records] == [1, 2]
    assert curves.damaged_lines == [2, 4, 5, 7]
    assert read_metrics_file(path).damaged_lines == [2, 7]


def test_run_without_metrics(trained_run, tmp_path):
    empty = tmp_path / "fresh"
    empty.mkdir()
    alone = run_cli("plot", str(empty), "-o", str(tmp_path / "p.png"))
    assert alone.exit_code == 1
    assert error_lines(alone.stderr)[-1] == (
        "Error: nothing to plot: no run has an evaluation in its metrics.jsonl yet"
    )
    assert not (tmp_path / "p.png").exists()
    mixed = run_cli("plot", str(empty), str(trained_run), "-o", str(tmp_path / "p.png"))
    assert mixed.exit_code == 0, mixed.stderr
    assert mixed.stderr == (
        f"note: {empty} has no evaluations yet; left out of the chart\n"
        f"wrote {tmp_path / 'p.png'}: 1 run, 3 evaluations\n"
    )


@pytest.mark.parametrize(
    "arguments, line",
    [
        (
            ("{run}", "-o", "curves.jpeg"),
            "Error: cannot tell the image format of curves.jpeg: name it .png, .svg or .pdf",
        ),
        (
            ("nowhere", "-o", "p.png"),
            "Error: run not found: nowhere (give a run directory or its metrics.jsonl)",
        ),
        # click's own words follow these beginnings
        (("{run}", "--x", "tokens"), "Error: Invalid value for '--x': "),
        ((), "Error: Missing argument "),
    ],
)
def test_bad_input_is_one_line(trained_run, in_tmp, arguments, line):
    result = run_cli("plot", *(argument.format(run=trained_run) for argument in arguments))
    assert result.exit_code == 2
    lines = error_lines(result.stderr)
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(line) if line.endswith(" ") else lines[0] == line
    assert not list(in_tmp.iterdir())  # no image written


def test_without_matplotlib_says_how_to_install_it(trained_run, tmp_path, monkeypatch):
    for name in list(sys.modules):
        if name == "matplotlib" or name.startswith("matplotlib."):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now raises ImportError
    result = run_cli("plot", str(trained_run), "-o", str(tmp_path / "p.png"))
    assert result.exit_code == 1
    assert error_lines(result.stderr) == [
        'Error: plotting needs matplotlib, an optional extra: pip install "charrnn[plot]"'
    ]


def test_default_output_is_plot_png(trained_run, in_tmp):
    result = run_cli("plot", str(trained_run))
    assert result.exit_code == 0, result.stderr
    assert (in_tmp / "plot.png").is_file() and result.stdout == "plot.png\n"


def test_sparkline():
    line = sparkline([3.0, 2.0, 1.0])
    assert len(line) == 3 and line[0] == "█" and line[-1] == "▁" and line[0] > line[1] > line[2]
    assert sparkline([]) == ""
    assert sparkline([2.0, 2.0]) == "▅▅"
    assert sparkline([1.0, float("nan"), 2.0]) == "▁█"
    assert len(sparkline([float(i) for i in range(100)], width=12)) == 12
    # A damaged metrics.jsonl of a resumed run: the span overflowed and round(nan) failed.
    assert sparkline([-1e308, 1e308, 1.0]) == "▁█▅"


def test_live_display_shows_the_validation_curve(tmp_path):
    from rich.console import Console

    from charrnn import events

    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=True, width=200, color_system=None)
    display = TrainingDisplay(console)
    display(
        events.TrainingStarted(
            run_dir=tmp_path,
            num_parameters=10,
            vocab_size=5,
            tokenizer="char",
            chars_per_token=1.0,
            train_tokens=100,
            val_tokens=10,
            eval_tokens=10,
            batch_size=2,
            seq_len=4,
            device="cpu",
            precision="fp32",
            threads=1,
            start_step=0,
            max_steps=10,
            budget_seconds=None,
        )
    )
    for step, bpc in ((1, 4.0), (2, 3.0), (3, 2.0)):
        display(
            events.EvaluationDone(
                step=step,
                train_loss=1.0,
                val_loss=bpc / 1.44,
                val_bpc=bpc,
                is_best=True,
                elapsed=1.0,
                eval_seconds=0.1,
                preview="x",
            )
        )
    display.close()
    assert sparkline([4.0, 3.0, 2.0]) in buffer.getvalue()


def test_resumed_display_continues_the_curve(tmp_path):
    from rich.console import Console

    from charrnn import events

    (tmp_path / "metrics.jsonl").write_text(
        "".join(json.dumps({"step": s, "val_bpc": b}) + "\n" for s, b in ((10, 5.0), (20, 4.5)))
    )
    buffer = io.StringIO()
    display = TrainingDisplay(Console(file=buffer, force_terminal=True, width=200, color_system=None))
    display(
        events.TrainingStarted(
            run_dir=tmp_path,
            num_parameters=10,
            vocab_size=5,
            tokenizer="char",
            chars_per_token=1.0,
            train_tokens=100,
            val_tokens=10,
            eval_tokens=10,
            batch_size=2,
            seq_len=4,
            device="cpu",
            precision="fp32",
            threads=1,
            start_step=20,
            max_steps=40,
            budget_seconds=None,
        )
    )
    display(
        events.EvaluationDone(
            step=30,
            train_loss=1.0,
            val_loss=2.0,
            val_bpc=3.0,
            is_best=True,
            elapsed=1.0,
            eval_seconds=0.1,
            preview="x",
        )
    )
    display.close()
    assert sparkline([5.0, 4.5, 3.0]) in buffer.getvalue()
