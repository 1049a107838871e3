"""`charrnn plot` and the live sparkline: curves from metrics.jsonl, tolerant of damage and of no data."""

from __future__ import annotations

import io
import json
import shutil
import sys

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
    assert output.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert "1 run, 3 evaluations" in result.stderr


@pytest.mark.parametrize("x_axis", ["steps", "time", "chars"])
def test_several_runs_on_one_svg(trained_run, tmp_path, x_axis):
    other = copy_run(trained_run, tmp_path, "other")
    output = tmp_path / "compare.svg"
    result = run_cli("plot", str(trained_run), str(other / "metrics.jsonl"), "-o", str(output), "--x", x_axis)
    assert result.exit_code == 0, result.stderr
    svg = output.read_text(encoding="utf-8")
    assert "<svg" in svg
    assert "2 runs, 6 evaluations" in result.stderr


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
    assert "skipped 2 damaged lines (line 2, 5)" in result.stderr


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
    assert "has no evaluations yet; left out of the chart" in mixed.stderr


@pytest.mark.parametrize(
    "arguments, code, message",
    [
        (("{run}", "-o", "curves.jpeg"), 2, "name it .png, .svg or .pdf"),
        (("nowhere", "-o", "p.png"), 2, "run not found: nowhere"),
        (("{run}", "--x", "tokens"), 2, "Invalid value for '--x'"),
        ((), 2, "Missing argument"),
    ],
)
def test_bad_input_is_one_line(trained_run, in_tmp, arguments, code, message):
    result = run_cli("plot", *(argument.format(run=trained_run) for argument in arguments))
    assert result.exit_code == code
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], result.stderr


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
