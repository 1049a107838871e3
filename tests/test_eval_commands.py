"""`charrnn eval`: the figure training reported, several files, stdin, unknown characters, bad input."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from conftest import REPO, TINY_MODEL_OPTIONS, error_lines, run_cli

from charrnn.api import load
from charrnn.data.reader import TextSource, iter_text_chunks
from charrnn.inspect import eval_text

SHAKESPEARE = (REPO / "data" / "tinyshakespeare.txt").read_text(encoding="utf-8")[:30_000]


def _train(folder: Path, tokenizer: str) -> tuple[Path, Path]:
    """A tiny fp32 run on 30,000 characters; returns the run and a file holding its validation text."""
    corpus = folder / "corpus.txt"
    corpus.write_text(SHAKESPEARE, encoding="utf-8")
    out = folder / f"run-{tokenizer}"
    result = run_cli(
        "train",
        str(corpus),
        "--out",
        str(out),
        "--max-steps",
        "30",
        "--eval-every",
        "30",
        "--precision",
        "fp32",
        "--tokenizer",
        tokenizer,
        *TINY_MODEL_OPTIONS,
    )
    assert result.exit_code == 0, result.stderr
    val = folder / f"val-{tokenizer}.txt"
    val.write_text(SHAKESPEARE[int(len(SHAKESPEARE) * 0.9) :], encoding="utf-8")
    return out, val


@pytest.fixture(scope="module")
def shakespeare_run(tmp_path_factory) -> tuple[Path, Path]:
    return _train(tmp_path_factory.mktemp("eval"), "char")


@pytest.mark.parametrize("tokenizer", ["char", "byte"])
def test_eval_on_the_validation_text_gives_the_figure_training_reported(tmp_path, tokenizer):
    run, val = _train(tmp_path, tokenizer)
    reported = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()][-1]
    result = run_cli("eval", str(run / "latest.safetensors"), str(val), "--json", "--threads", "1")
    assert result.exit_code == 0, result.stderr
    answer = json.loads(result.stdout)["files"][0]
    assert answer["bits_per_char"] == pytest.approx(reported["val_bpc"], rel=1e-6)
    assert answer["loss"] == pytest.approx(reported["val_loss"], rel=1e-6)
    assert answer["chars"] == len(val.read_text(encoding="utf-8")) - 1


def test_several_files_give_each_and_the_total(shakespeare_run, tmp_path):
    run, val = shakespeare_run
    other = tmp_path / "other.txt"
    other.write_text(SHAKESPEARE[:5000], encoding="utf-8")
    result = run_cli("eval", str(run), str(val), str(other), "--json", "--threads", "1")
    assert result.exit_code == 0, result.stderr
    answer = json.loads(result.stdout)
    first, second = answer["files"]
    total = answer["total"]
    assert total["chars"] == first["chars"] + second["chars"]
    assert total["bits_per_char"] == pytest.approx(
        (first["total_nats"] + second["total_nats"]) / math.log(2) / total["chars"]
    )
    table = run_cli("eval", str(run), str(val), str(other), "--threads", "1")
    assert table.exit_code == 0 and table.stderr == ""
    lines = table.stdout.splitlines()
    assert lines[0].split()[:3] == ["file", "bits/char", "loss/token"]
    assert [line.split()[0] for line in lines[1:]] == [str(val), str(other), "total"]
    assert float(lines[1].split()[1]) == pytest.approx(first["bits_per_char"], abs=1e-4)


def test_model_argument_rule_stdin_and_the_most_recent_run(shakespeare_run, tmp_path, monkeypatch):
    run, val = shakespeare_run
    by_file = json.loads(run_cli("eval", str(run), str(val), "--json").stdout)["files"][0]
    by_option = json.loads(run_cli("eval", "-m", str(run), str(val), "--json").stdout)["files"][0]
    by_stdin = json.loads(
        run_cli("eval", str(run), "-", "--json", input=val.read_text(encoding="utf-8")).stdout
    )["files"][0]
    assert by_stdin["name"] == "standard input"
    assert by_option["bits_per_char"] == by_file["bits_per_char"]
    assert by_stdin["bits_per_char"] == pytest.approx(by_file["bits_per_char"], rel=1e-9)
    # With one argument, it is the FILE and the model is the most recent run under runs/.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").symlink_to(run.parent)
    alone = run_cli("eval", str(val), "--json")
    assert alone.exit_code == 0, alone.stderr
    assert json.loads(alone.stdout)["files"][0]["bits_per_char"] == pytest.approx(by_file["bits_per_char"])
    # A run directory alone is a MODEL with nothing to read: a usage error.
    missing = run_cli("eval", str(run))
    assert missing.exit_code == 2
    assert error_lines(missing.stderr) == [
        "Error: missing FILE to read (a text file, or - for standard input)"
    ]


def test_unknown_characters_stop_with_one_line_or_are_skipped_and_counted(shakespeare_run, tmp_path):
    run, val = shakespeare_run
    text = val.read_text(encoding="utf-8")
    odd = tmp_path / "odd.txt"
    odd.write_text("€" + text[:2000] + "☃€", encoding="utf-8")
    refused = run_cli("eval", str(run), str(odd))
    assert refused.exit_code == 1 and refused.stdout == ""
    [line] = error_lines(refused.stderr)
    assert line.startswith(f"Error: {odd} has characters the model never saw in training: ")
    assert "'€' (U+20AC)" in line and "'☃' (U+2603)" in line and "(3 in all)" in line
    skipped = run_cli("eval", str(run), str(odd), "--skip-unknown", "--json")
    assert skipped.exit_code == 0, skipped.stderr
    clean = tmp_path / "clean.txt"
    clean.write_text(text[:2000], encoding="utf-8")
    expected = json.loads(run_cli("eval", str(run), str(clean), "--json").stdout)["files"][0]
    answer = json.loads(skipped.stdout)["files"][0]
    assert answer["skipped_chars"] == 3
    assert answer["bits_per_char"] == pytest.approx(expected["bits_per_char"], rel=1e-9)
    human = run_cli("eval", str(run), str(odd), "--skip-unknown")
    assert error_lines(human.stderr) == [f"{odd}: left out 3 characters the model never saw"]


def test_chunked_and_spilled_reading_gives_the_same_figure(shakespeare_run, monkeypatch):
    """Bounded memory: small chunks and a token array spilled to disk change nothing."""
    run, val = shakespeare_run
    model = load(run, device="cpu")
    whole = model.evaluate(val.read_text(encoding="utf-8"))
    chunks = list(iter_text_chunks(TextSource.of(val), chunk_bytes=100))
    assert max(len(chunk.encode("utf-8")) for chunk in chunks) <= 100
    monkeypatch.setattr(eval_text, "SPILL_BYTES", 64)
    spilled = eval_text.evaluate_chunks(
        model.module, model.tokenizer, iter(chunks), model.device, temp_folder=None
    )
    assert spilled.bits_per_char == pytest.approx(whole.bits_per_char, rel=1e-9)
    assert spilled.chars == whole.chars


def test_a_character_cut_between_chunks_is_read_whole(tmp_path):
    path = tmp_path / "accents.txt"
    path.write_bytes(("é€😀" * 50).encode("utf-8"))
    for size in (1, 2, 3, 5):
        assert "".join(iter_text_chunks(TextSource.of(path), chunk_bytes=size)) == "é€😀" * 50


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "Error: file not found: {path}"),
        ("dir", "Error: {path} is a directory, not a text file"),
        (b"", "Error: {path} is empty"),
        (
            b"a",
            "Error: {path} is too short to evaluate (one token: every token after the first is predicted)",
        ),
        (b"good line\nthen \xff bad", "Error: {path} is not valid UTF-8: byte 0xff at offset 15 (line 2)"),
    ],
)
def test_bad_input_is_one_error_line(shakespeare_run, tmp_path, content, message):
    run, _ = shakespeare_run
    path = tmp_path / "input.txt"
    if content == "dir":
        path.mkdir()
    elif content is not None:
        path.write_bytes(content)
    result = run_cli("eval", str(run), str(path))
    assert result.exit_code == 1
    assert error_lines(result.stderr) == [message.format(path=path)]
    assert result.stdout == ""


def test_damaged_model_and_stdin_twice(shakespeare_run, tmp_path):
    run, val = shakespeare_run
    damaged = tmp_path / "damaged.safetensors"
    damaged.write_bytes((run / "best.safetensors").read_bytes()[:-100])  # cut short
    result = run_cli("eval", str(damaged), str(val))
    assert result.exit_code == 1 and result.stdout == ""
    [line] = error_lines(result.stderr)
    assert line.startswith(f"Error: {damaged} is corrupted")
    twice = run_cli("eval", str(damaged), "-", "-")
    assert twice.exit_code == 2
    assert error_lines(twice.stderr) == ["Error: standard input (-) can be read only once"]


def test_a_huge_single_line_is_encoded_in_bounded_memory(trained_run, tmp_path):
    """A 24 MB file without a newline: encoding never holds it whole (the tokens spill to disk)."""
    import tracemalloc

    path = tmp_path / "one-line.txt"
    piece = ("the lazy dog " * 80_000).encode("utf-8")  # about 1 MB
    with open(path, "wb") as out:
        for _ in range(24):
            out.write(piece)
    model = load(trained_run, device="cpu")
    tracemalloc.start()
    try:
        sink, skipped = eval_text.encode_text(
            model.tokenizer, iter_text_chunks(TextSource.of(path)), str(path), temp_folder=tmp_path
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    try:
        assert sink.num_tokens == 24 * len(piece) and skipped == 0
        assert sink.file is not None  # spilled, not kept in memory
        assert peak < 40_000_000, f"peak {peak / 1e6:.0f} MB for a 24 MB line"
    finally:
        sink.close()
