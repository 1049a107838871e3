"""`charrnn score`: one scored line per input line, in order, independent of neighbours, batched."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from conftest import error_lines, run_cli

from charrnn.api import load
from charrnn.inspect import scoring

LINES = [
    "the quick brown fox",
    "",
    "jumps over the lazy dog.",
    "zzz qqq xxx",
    "the lazy dog",
    "brown " * 40,
    "a",
]


def _parse(stdout: str) -> list[tuple[float, float, str]]:
    rows = []
    for line in stdout.splitlines():
        bpc, bits, text = line.split("\t", 2)
        rows.append((float(bpc), float(bits), text))
    return rows


def test_one_line_out_per_line_in_in_order(trained_run):
    result = run_cli("score", str(trained_run), "--threads", "1", input="\n".join(LINES) + "\n")
    assert result.exit_code == 0, result.stderr
    assert result.stderr == ""
    rows = _parse(result.stdout)
    assert [text for _, _, text in rows] == LINES
    for bpc, bits, text in rows:
        assert bpc == pytest.approx(bits / (len(text) + 1), abs=0.006)  # total_bits has 2 decimals
    # The model learnt the sentence: a line of it is far less surprising than noise.
    scores = dict((text, bpc) for bpc, _, text in rows)
    assert scores["the quick brown fox"] < scores["zzz qqq xxx"]


def test_total_bits_are_the_log_probability_of_the_line_and_its_end(trained_run):
    model = load(trained_run, device="cpu")
    line = "the lazy dog"
    ids = torch.from_numpy(model.tokenizer.encode("\n" + line + "\n").astype("int64"))[None]
    with torch.inference_mode():
        logits, _ = model.module(ids[:, :-1])
    expected_bits = float(F.cross_entropy(logits[0], ids[0, 1:], reduction="sum")) / math.log(2)
    [score] = model.score(line)
    assert score.total_bits == pytest.approx(expected_bits, rel=1e-5)
    assert score.chars == len(line) + 1


def test_scores_do_not_depend_on_neighbours_and_batching_equals_one_by_one(trained_run, monkeypatch):
    model = load(trained_run, device="cpu")
    together = model.score(LINES)
    alone = [model.score([line])[0] for line in LINES]
    shuffled = model.score(list(reversed(LINES)))[::-1]
    monkeypatch.setattr(scoring, "MAX_BATCH_ROWS", 1)
    monkeypatch.setattr(scoring, "BLOCK_LINES", 1)
    one_by_one = model.score(LINES)
    monkeypatch.setattr(scoring, "WINDOW", 7)  # long lines cross windows, the state carried
    short_windows = model.score(LINES)
    for other in (alone, shuffled, one_by_one, short_windows):
        assert [s.line for s in other] == LINES
        assert [s.total_bits for s in other] == pytest.approx([s.total_bits for s in together], rel=1e-5)


def test_unknown_characters_score_inf_or_are_skipped(trained_run):
    lines = "the lazy dog\nthe €lazy dog\n"
    result = run_cli("score", str(trained_run), input=lines)
    assert result.exit_code == 0
    rows = result.stdout.splitlines()
    assert rows[1] == "inf\tinf\tthe €lazy dog"
    assert error_lines(result.stderr) == [
        "1 line has characters the model never saw: scored inf (--skip-unknown leaves them out)"
    ]
    two = run_cli("score", str(trained_run), input=lines + "a €b\n")
    assert error_lines(two.stderr) == [
        "2 lines have characters the model never saw: scored inf (--skip-unknown leaves them out)"
    ]
    skipped = _parse(run_cli("score", str(trained_run), "--skip-unknown", input=lines).stdout)
    assert skipped[1][1] == pytest.approx(skipped[0][1], rel=1e-5)
    assert skipped[1][2] == "the €lazy dog"


def test_json_lines(trained_run, tmp_path):
    path = tmp_path / "lines.txt"
    path.write_text("the lazy dog\nthe ☃\n", encoding="utf-8")
    result = run_cli("score", str(trained_run), str(path), "--json")
    assert result.exit_code == 0
    first, second = (json.loads(line) for line in result.stdout.splitlines())
    assert first["line"] == "the lazy dog" and first["chars"] == 13 and first["bits_per_char"] > 0
    assert second["bits_per_char"] is None and second["unknown_chars"] == 1


def test_a_pipe_to_head_ends_quietly(trained_run, tmp_path):
    path = tmp_path / "many.txt"
    path.write_text("the quick brown fox\n" * 20_000, encoding="utf-8")
    process = subprocess.Popen(
        [sys.executable, "-m", "charrnn", "score", str(trained_run), str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    first = process.stdout.readline()
    process.stdout.close()  # as `head -1` does
    stderr = process.stderr.read()
    assert process.wait(timeout=120) == 0
    assert first.decode().endswith("\tthe quick brown fox\n")
    assert stderr == b""


@pytest.mark.parametrize(
    "given, message",
    [
        (b"", "Error: standard input is empty: no lines to score"),
        (b"fine\n\xc3(", "Error: standard input is not valid UTF-8: byte 0xc3 at offset 5 (line 2)"),
    ],
)
def test_bad_input_is_one_error_line(trained_run, given, message):
    result = subprocess.run(
        [sys.executable, "-m", "charrnn", "score", str(trained_run)],
        input=given,
        capture_output=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert error_lines(result.stderr.decode()) == [message]


def test_too_many_files_is_a_usage_error(trained_run, tmp_path):
    result = run_cli("score", str(trained_run), "a.txt", "b.txt")
    assert result.exit_code == 2
    assert error_lines(result.stderr) == ["Error: score reads one FILE (or -), got 2: a.txt b.txt"]
    missing = run_cli("score", str(trained_run), str(tmp_path / "nope.txt"))
    assert missing.exit_code == 1
    assert error_lines(missing.stderr) == [f"Error: file not found: {tmp_path / 'nope.txt'}"]


def test_carry_state_scores_the_lines_as_one_text(trained_run):
    """With --carry-state the lines' bits add up to the bits of the whole text after a newline."""
    model = load(trained_run, device="cpu")
    lines = ["the quick brown fox", "jumps over", "", "the lazy dog."]
    carried = model.score(lines, carry_state=True)
    text = "\n" + "\n".join(lines) + "\n"
    ids = torch.from_numpy(model.tokenizer.encode(text).astype("int64"))[None]
    with torch.inference_mode():
        logits, _ = model.module(ids[:, :-1])
    whole_bits = float(F.cross_entropy(logits[0], ids[0, 1:], reduction="sum")) / math.log(2)
    assert sum(s.total_bits for s in carried) == pytest.approx(whole_bits, rel=1e-5)
    assert carried[0].total_bits == pytest.approx(model.score(lines)[0].total_bits, rel=1e-5)
    result = run_cli("score", str(trained_run), "--carry-state", input="\n".join(lines) + "\n")
    assert [row[2] for row in _parse(result.stdout)] == lines


@pytest.mark.parametrize("command", ["score", "eval"])
def test_threads_below_one_is_a_usage_error_for_eval_and_score(trained_run, tmp_path, command):
    text = tmp_path / "t.txt"
    text.write_text("the quick brown fox\n", encoding="utf-8")
    result = run_cli(command, str(trained_run), str(text), "--threads", "0")
    assert result.exit_code == 2
    [line] = error_lines(result.stderr)
    assert line.startswith("Error: --threads must be 1..") and line.endswith(" got 0")


def test_one_forward_call_holds_a_bounded_number_of_logits(trained_run, monkeypatch):
    # A big vocabulary must not make rows x window x vocabulary logits at once (gigabytes at
    # 60,000 symbols); the window shrinks instead (to one step at the least), and the scores stay.
    model = load(trained_run, device="cpu")
    expected = [s.total_bits for s in model.score(LINES)]
    shapes = []
    real_forward = type(model.module).forward

    def spy(module, tokens, state=None, **options):
        shapes.append(tuple(tokens.shape))
        return real_forward(module, tokens, state, **options)

    monkeypatch.setattr(type(model.module), "forward", spy)
    model.score(LINES)
    assert max(steps for _, steps in shapes) > 1  # unbounded: whole lines in one call
    shapes.clear()
    monkeypatch.setattr(scoring, "MAX_CHUNK_LOGITS", 3 * model.tokenizer.vocab_size)
    assert [s.total_bits for s in model.score(LINES)] == pytest.approx(expected, rel=1e-5)
    assert all(steps == 1 or rows * steps <= 3 for rows, steps in shapes)
