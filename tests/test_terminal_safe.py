"""Text read from files (a checkpoint's metadata, file and folder names) is shown safely on a terminal,
and `plot` skips records with impossible values as it skips damaged lines."""

from __future__ import annotations

import json
import shutil

import pytest
from conftest import TINY_MODEL_OPTIONS, error_lines, run_cli
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from charrnn.cli.answer import json_text
from charrnn.cli.console import terminal_safe

# Characters a terminal acts on instead of showing: ESC (and an OSC title sequence ended by BEL),
# the 8-bit CSI, a right-to-left override.
ACTING = ("\x1b", "\x07", "\x9b", "\u202e")
HOSTILE_INFO = {
    "corpus": "\x1b]0;PWNED\x07\x1b[31mred",
    "precision": "[/x]",  # a closing tag Rich's markup refused with a traceback
    "charrnn_version": ":thumbs_up: \u202eevil",
    "saved_at": "\x9b31m",
    "step": "many",  # not a count: "{:,}" refused it with a traceback
    "parent": {"name": "\x1b[2J", "weights_sha256": 5},
    "train_config": {"max_time": "soon"},
}


def rewrite_info(weights, changes: dict) -> None:
    """Change the training summary in a weights file's metadata, as a hostile file would."""
    with safe_open(str(weights), "pt") as handle:
        metadata = handle.metadata()
    tensors = load_file(str(weights))
    metadata["info"] = json.dumps({**json.loads(metadata["info"]), **changes})
    save_file(tensors, str(weights), metadata=metadata)


@pytest.fixture
def hostile_run(trained_run, tmp_path):
    run = tmp_path / "runs" / "evil"
    shutil.copytree(trained_run, run)
    for weights in ("best.safetensors", "latest.safetensors"):
        rewrite_info(run / weights, HOSTILE_INFO)
    (run / "f\x1b[31mred").write_text("")  # a file of the run named with an escape sequence
    return run


def assert_nothing_acts(text: str) -> None:
    for char in ACTING:
        assert char not in text, repr(text)


def test_terminal_safe_escapes_what_a_terminal_would_act_on():
    assert terminal_safe("plain text, é 中 [b] :x:") == "plain text, é 中 [b] :x:"
    assert terminal_safe("\x1b]0;T\x07\x9b\u202e\u2028\udcff") == "\\x1b]0;T\\x07\\x9b\\u202e\\u2028\\udcff"
    assert terminal_safe("tab\tand\nnewline") == "tab\\tand\\nnewline"


def test_json_answers_escape_the_same_characters_and_keep_their_values():
    value = {"name": "\x1b]0;T\x07 \x9b \u202e \U000e0001 é 中"}
    text = json_text(value)
    assert_nothing_acts(text)
    assert "\U000e0001" not in text and "é 中" in text
    assert json.loads(text) == value


def test_info_shows_a_hostile_checkpoint_safely(hostile_run):
    result = run_cli("info", str(hostile_run))
    assert result.exit_code == 0, result.stderr
    assert_nothing_acts(result.stdout)
    for expected in (
        "\\x1b]0;PWNED\\x07\\x1b[31mred",
        "[/x]",
        ":thumbs_up: \\u202eevil",
        "\\x9b31m",
        "\\x1b[2J (weights sha256 -…)",
        "f\\x1b[31mred",
    ):
        assert expected in result.stdout
    assert "👍" not in result.stdout
    steps = next(line for line in result.stdout.splitlines() if line.startswith("steps"))
    assert steps.split() == ["steps", "-"]


def test_info_json_of_a_hostile_checkpoint_holds_typed_values(hostile_run):
    result = run_cli("info", str(hostile_run), "--json")
    assert result.exit_code == 0, result.stderr
    assert_nothing_acts(result.stdout)
    training = json.loads(result.stdout)["training"]
    assert training["corpus"] == HOSTILE_INFO["corpus"]  # the same value, written safely
    assert training["step"] is None
    assert training["parent"] == {"name": "\x1b[2J", "weights_sha256": None}


def test_runs_shows_hostile_names_and_metadata_safely(hostile_run):
    named = hostile_run.parent / "r\x1b]0;T\x07"
    shutil.copytree(hostile_run, named)
    result = run_cli("runs", str(hostile_run.parent))
    assert result.exit_code == 0, result.stderr
    assert_nothing_acts(result.stdout)
    assert "r\\x1b]0;T\\x07" in result.stdout
    as_json = run_cli("runs", str(hostile_run.parent), "--json")
    assert_nothing_acts(as_json.stdout)
    assert {row["name"] for row in json.loads(as_json.stdout)} == {"evil", "r\x1b]0;T\x07"}


def test_eval_shows_a_hostile_file_name_safely(trained_run, tmp_path):
    (tmp_path / "t\x1b[31m[").mkdir()
    text = tmp_path / "t\x1b[31m[/x].txt"  # the file x].txt: the path holds a closing tag
    text.write_text("the quick brown fox\n" * 5)
    result = run_cli("eval", str(trained_run), str(text))
    assert result.exit_code == 0, result.stderr
    assert_nothing_acts(result.stdout)
    assert "t\\x1b[31m[/x].txt" in result.stdout


def test_an_error_line_shows_a_hostile_path_safely(tmp_path):
    result = run_cli("info", str(tmp_path / "m\x1b]0;T\x07.safetensors"))
    assert result.exit_code == 1
    [line] = error_lines(result.stderr)
    assert_nothing_acts(line)
    assert "m\\x1b]0;T\\x07.safetensors" in line


def test_training_shows_a_hostile_run_directory_safely(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog.\n" * 50)
    out = tmp_path / "r\x1b]0;T\x07"
    result = run_cli("train", str(corpus), "--out", str(out), "--max-steps", "2", *TINY_MODEL_OPTIONS)
    assert result.exit_code == 0, result.stderr
    assert_nothing_acts(result.stderr)
    assert "r\\x1b]0;T\\x07" in result.stderr


@pytest.mark.filterwarnings("error")
def test_plot_draws_hostile_run_names_as_they_are(trained_run, tmp_path):
    """A `$...$` name is not TeX (it failed to parse), a name starting with "_" stays in the legend,
    and control characters are escaped (matplotlib warned of missing glyphs)."""
    run = tmp_path / "_a$\\frac$b\x1b"
    shutil.copytree(trained_run, run)
    output = tmp_path / "p.svg"
    result = run_cli("plot", str(run), "-o", str(output))
    assert result.exit_code == 0, result.stderr
    assert_nothing_acts(result.stderr)
    from test_plot import read_svg_axes

    bpc_panel = read_svg_axes(output)[0]
    [label] = bpc_panel.legend
    assert label.startswith("_a$\\frac$b\\x1b (best ")
    assert "charrnn: _a$\\frac$b\\x1b" in bpc_panel.texts


IMPOSSIBLE_RECORDS = [
    {"step": -5, "val_bpc": 3.0},
    {"step": 500, "val_loss": 1e308},  # overflowed matplotlib's scaling
    {"step": 500, "train_loss": 1e200, "val_loss": 1e-300},  # collapsed its layout
    {"step": 501, "train_loss": 2.0, "val_bpc": -1.0},
    {"step": 502, "elapsed": -3.0},
    {"step": 503, "chars_seen": 10**400},
    {"step": 504, "val_bpc": "low"},
    {"step": 10**400},
]


@pytest.mark.filterwarnings("error")  # matplotlib's RuntimeWarning (overflow) fails it
def test_plot_skips_records_with_impossible_values_and_counts_them(trained_run, tmp_path):
    run = tmp_path / "odd"
    shutil.copytree(trained_run, run)
    metrics = run / "metrics.jsonl"
    good = metrics.read_text().splitlines()
    extra = [json.dumps(record) for record in IMPOSSIBLE_RECORDS] + ['{"step": 505, "val_bpc": null}']
    metrics.write_text("\n".join(good + extra) + "\n")
    output = tmp_path / "p.png"
    result = run_cli("plot", str(run), "-o", str(output))
    assert result.exit_code == 0, result.stderr
    first = len(good) + 1
    assert result.stderr == (
        f"note: {metrics}: skipped 8 damaged lines "
        f"(line {first}, {first + 1}, {first + 2}, {first + 3}, {first + 4}, ...)\n"
        f"wrote {output}: 1 run, {len(good) + 1} evaluations\n"  # the null is a gap, not damage
    )


def test_eval_json_is_strict_json_when_a_figure_is_infinite(trained_run, tmp_path):
    """A model whose output layer is huge (finite weights) is infinitely surprised: eval --json wrote
    `Infinity`, which is not JSON (jq refuses it); it is null, as in score --json."""
    run = tmp_path / "huge"
    shutil.copytree(trained_run, run)
    weights = run / "best.safetensors"
    with safe_open(str(weights), "pt") as handle:
        metadata = handle.metadata()
    tensors = load_file(str(weights))
    tensors = {name: tensor * 1e37 if name.startswith("head") else tensor for name, tensor in tensors.items()}
    save_file(tensors, str(weights), metadata=metadata)
    text = tmp_path / "text.txt"
    text.write_text("the quick brown fox\n" * 5)
    result = run_cli("eval", str(run), str(text), "--json")
    assert result.exit_code == 0, result.stderr
    answer = json.loads(result.stdout, parse_constant=lambda name: pytest.fail(f"not JSON: {name}"))
    assert answer["total"]["bits_per_char"] is None and answer["files"][0]["loss"] is None
    assert answer["total"]["chars"] == 99  # every character after the first
    assert (
        json_text({"a": [float("inf"), float("nan"), 1.5]})
        == '{\n  "a": [\n    null,\n    null,\n    1.5\n  ]\n}'
    )
