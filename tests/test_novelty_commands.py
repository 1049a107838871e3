"""`charrnn novelty`, `sample --novelty`, `explain --html --novelty` and `model.novelty`: the
figures per input, per line and per sample; the training text found where the run read it,
from the cache when it has moved, or through --corpus."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest
from conftest import TINY_MODEL_OPTIONS, error_lines, run_cli

import charrnn
from charrnn.cli.explain_html import read_novelty_data
from charrnn.errors import UsageProblem

WORDS = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta"]


@pytest.fixture(scope="module")
def novelty_run(tmp_path_factory) -> tuple[Path, Path, str]:
    """(run directory, its corpus, the corpus text): a tiny model trained two steps on word lines."""
    folder = tmp_path_factory.mktemp("novelty")
    rng = random.Random(1)
    text = "".join(" ".join(rng.choice(WORDS) for _ in range(8)) + "\n" for _ in range(2000))
    corpus = folder / "words.txt"
    corpus.write_text(text, encoding="utf-8")
    out = folder / "run"
    result = run_cli("train", str(corpus), "--out", str(out), "--max-steps", "2", *TINY_MODEL_OPTIONS)
    assert result.exit_code == 0, result.stderr
    return out, corpus, text


@pytest.fixture
def own_cache(tmp_path, monkeypatch) -> Path:
    """A cache folder of this test alone (the index is built in it)."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("CHARRNN_CACHE_DIR", str(folder))
    return folder


def _lines(text: str, first: int, count: int) -> str:
    return "".join(text.splitlines(keepends=True)[first - 1 : first - 1 + count])


def test_novelty_reports_the_longest_copy_its_place_and_the_share(novelty_run, own_cache, tmp_path):
    run, corpus, text = novelty_run
    copied = _lines(text, 100, 4)
    sample = tmp_path / "sample.txt"
    sample.write_text("0 " + copied + "1 new words", encoding="utf-8")
    result = run_cli("novelty", str(run), str(sample), "--json")
    assert result.exit_code == 0, result.stderr
    answer = json.loads(result.stdout)
    report = answer["inputs"][0]
    assert report["longest"]["text"] == copied and report["longest"]["start"] == 2
    assert (report["longest"]["file"], report["longest"]["line"]) == (str(corpus), 100)
    assert report["copied_chars"] == len(copied)
    assert report["copied_share"] == pytest.approx(len(copied) / (len(copied) + 13), abs=1e-6)
    assert answer["min_span"] == 50

    people = run_cli("novelty", str(run), str(sample))
    assert people.exit_code == 0
    assert f"longest copied span: {len(copied)} chars at char 2, from {corpus} line 100" in people.stdout
    assert "novelty index" not in people.stdout  # progress goes to stderr, the answer alone to stdout


def test_each_line_and_standard_input(novelty_run, own_cache):
    run, corpus, text = novelty_run
    lines = (
        _lines(text, 7, 1) + "ahpla ateb ammag atled nolispe atez ate ateht ahpla ateb\n"
    )  # words reversed
    result = run_cli("novelty", str(run), "--each-line", "--json", "--min-span", "30", input=lines)
    assert result.exit_code == 0, result.stderr
    first, second = (json.loads(line) for line in result.stdout.splitlines())
    assert (first["line"], first["copied_share"], first["longest"]["line"]) == (1, 1.0, 7)
    assert second["line"] == 2 and second["copied_chars"] == 0 and second["longest"]["length"] < 30


def test_a_moved_training_text_is_named_and_can_be_pointed_at(novelty_run, own_cache, tmp_path):
    run, corpus, text = novelty_run
    moved = tmp_path / "elsewhere.txt"
    shutil.copy(corpus, moved)
    # A run whose corpus is then moved away.
    gone = tmp_path / "gone.txt"
    shutil.copy(corpus, gone)
    result = run_cli(
        "train", str(gone), "--out", str(tmp_path / "run2"), "--max-steps", "1", *TINY_MODEL_OPTIONS
    )
    assert result.exit_code == 0, result.stderr
    gone.unlink()
    sample = tmp_path / "sample.txt"
    sample.write_text(_lines(text, 50, 3), encoding="utf-8")

    result = run_cli("novelty", str(tmp_path / "run2"), str(sample))
    assert result.exit_code == 1
    assert error_lines(result.stderr) == [
        f"Error: the training text of this model was expected at {gone} but is not there: "
        "point at it with --corpus PATH"
    ]
    result = run_cli("novelty", str(tmp_path / "run2"), str(sample), "--corpus", str(moved), "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["inputs"][0]["longest"]["line"] == 50
    assert "note:" not in result.stderr  # the same text: no note
    # Indexed once, the text is found in the cache by its hash, wherever the corpus is now.
    result = run_cli("novelty", str(tmp_path / "run2"), str(sample), "--json")
    assert result.exit_code == 0, result.stderr


def test_a_changed_training_text_is_refused_and_another_text_noted(novelty_run, own_cache, tmp_path):
    run, corpus, text = novelty_run
    changing = tmp_path / "changing.txt"
    changing.write_text(text, encoding="utf-8")
    result = run_cli(
        "train", str(changing), "--out", str(tmp_path / "run"), "--max-steps", "1", *TINY_MODEL_OPTIONS
    )
    assert result.exit_code == 0, result.stderr
    changing.write_text(text + "more\n", encoding="utf-8")
    sample = tmp_path / "sample.txt"
    sample.write_text(_lines(text, 3, 2), encoding="utf-8")
    result = run_cli("novelty", str(tmp_path / "run"), str(sample))
    assert result.exit_code == 1
    assert error_lines(result.stderr) == [
        f"Error: the training text at {changing} changed since this model trained on it: "
        "point at it with --corpus PATH"
    ]
    result = run_cli("novelty", str(tmp_path / "run"), str(sample), "--corpus", str(changing))
    assert result.exit_code == 0, result.stderr
    assert (
        f"note: {changing} is not the text this model trained on: checking against all of it" in result.stderr
    )


def test_corpus_alone_checks_any_text_against_any_text(own_cache, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text(
        "first line of my notes, long enough to count as copied here\nsecond\n", encoding="utf-8"
    )
    draft = tmp_path / "draft.txt"
    draft.write_text("I wrote: first line of my notes, long enough to count as copied here", encoding="utf-8")
    result = run_cli("novelty", "--corpus", str(notes), str(draft), "--json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)["inputs"][0]
    assert report["longest"]["start"] == 9 and report["copied_chars"] == 59


@pytest.mark.parametrize("value", ["0", "-5", "1000000000001", "99999999999999999999999", "abc"])
def test_bad_min_span_is_one_usage_error(novelty_run, own_cache, value):
    result = run_cli("novelty", str(novelty_run[0]), "--min-span", value, input="abc")
    assert result.exit_code == 2
    assert [line for line in error_lines(result.stderr) if "--min-span" in line]
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_bad_min_span_in_python_is_a_usage_problem(novelty_run, own_cache):
    model = charrnn.load(novelty_run[0])
    for value in (0, -1, 10**13, 2.5, True):
        with pytest.raises(UsageProblem, match="min-span"):
            model.novelty("abc", min_span=value)  # type: ignore[arg-type]


def test_empty_binary_and_one_span_inputs_for_people(novelty_run, own_cache, tmp_path):
    run, corpus, text = novelty_run
    empty, binary, copy = tmp_path / "empty.txt", tmp_path / "binary.dat", tmp_path / "copy.txt"
    empty.write_bytes(b"")
    binary.write_bytes(bytes(range(256)) * 4)
    copy.write_text(_lines(text, 5, 3), encoding="utf-8")
    result = run_cli("novelty", str(run), str(empty), str(copy))
    assert result.exit_code == 0, result.stderr
    assert (
        f"{empty}: 0 chars, 0.0% in copied spans of >= 50 chars (0 spans)\n  the text is empty\n"
        in result.stdout
    )
    assert f"{copy}: {len(_lines(text, 5, 3))} chars, 100.0% in copied spans of >= 50 chars (1 span)\n" in (
        result.stdout
    )
    refused = run_cli("novelty", str(run), str(copy), str(binary))
    assert refused.exit_code == 1 and refused.stdout.startswith(f"{copy}: ")  # the report before it stays
    assert error_lines(refused.stderr) == [
        f"Error: {binary} is not valid UTF-8: byte 0x80 at offset 128 (line 2)"
    ]


def test_sample_novelty_in_jsonl_and_on_stderr(novelty_run, own_cache):
    run, corpus, text = novelty_run
    result = run_cli(
        "sample", str(run), "-n", "80", "--seed", "3", "--num-samples", "2", "--format", "jsonl",
        "--novelty", "--min-span", "5",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(records) == 2
    for record in records:
        figures = record["novelty"]
        assert figures["chars"] == len(record["text"]) and figures["min_span"] == 5
        longest = figures["longest"]
        assert record["text"][longest["start"] :][: longest["length"]] == longest["text"]
        assert longest["text"] in text
    plain = run_cli("sample", str(run), "-n", "80", "--seed", "3", "--novelty")
    assert plain.exit_code == 0, plain.stderr
    assert records[0]["text"] in plain.stdout and "novelty" not in plain.stdout
    assert [line for line in plain.stderr.splitlines() if line.startswith("novelty of sample 1: ")]
    refused = run_cli("sample", str(run), "--length", "-1", "--novelty")
    assert refused.exit_code == 2 and "--novelty" in refused.stderr


def test_explain_marks_copied_spans_on_its_page(novelty_run, own_cache, tmp_path):
    run, corpus, text = novelty_run
    copied = _lines(text, 20, 2)
    source = tmp_path / "text.txt"
    source.write_text("beta alpha zeta eta " + copied, encoding="utf-8")
    page = tmp_path / "page.html"
    result = run_cli("explain", str(run), str(source), "--html", str(page), "--novelty")
    assert result.exit_code == 0, result.stderr
    marks = read_novelty_data(page.read_text(encoding="utf-8"))
    assert any(
        span["start"] <= 20 and span["start"] + span["length"] == 20 + len(copied) for span in marks["spans"]
    )
    assert marks["longest"]["line"] in (19, 20)
    plain = tmp_path / "plain.html"
    assert run_cli("explain", str(run), str(source), "--html", str(plain)).exit_code == 0
    assert read_novelty_data(plain.read_text(encoding="utf-8")) is None
    refused = run_cli("explain", str(run), str(source), "--novelty")
    assert refused.exit_code == 2 and "--html" in refused.stderr


def test_model_novelty_in_python(novelty_run, own_cache, tmp_path):
    run, corpus, text = novelty_run
    model = charrnn.load(run)
    copied = _lines(text, 300, 3)
    report = model.novelty("start: " + copied)
    assert report.longest is not None and report.longest.line == 300 and report.copied_chars == len(copied)
    assert model.novelty("zzz", min_span=2).copied_chars == 0
    assert model.novelty(copied, corpus=corpus).longest.length == len(copied)  # type: ignore[union-attr]
    with pytest.raises(UsageProblem, match="str"):
        model.novelty(b"bytes")  # type: ignore[arg-type]


def test_copied_text_on_the_page_cannot_break_out_of_its_attribute():
    from charrnn.cli.explain_html import page_pieces

    hostile = {"spans": [{"start": 0, "length": 9, "text": '"></div><script>alert(1)</script>&amp;'}]}
    page = "".join(page_pieces(['{"segments": []}'], "t", hostile))
    assert read_novelty_data(page) == hostile
    assert page.count("</script>") == 2 and "<script>alert" not in page


def test_an_onnx_export_is_a_model_for_novelty_and_sample_novelty(novelty_run, own_cache, tmp_path):
    from charrnn.export.exporter import export_model

    run, corpus, text = novelty_run
    inside = run / "model.onnx"  # beside the run's state file: the corpus path is found there
    elsewhere = tmp_path / "copy" / "model.onnx"  # alone: the fingerprint in its metadata finds the cache
    export_model(run / "best.safetensors", inside)
    elsewhere.parent.mkdir()
    shutil.copy(inside, elsewhere)
    try:
        sample = tmp_path / "sample.txt"
        copied = _lines(text, 40, 3)
        sample.write_text("new: " + copied, encoding="utf-8")
        result = run_cli("novelty", str(inside), str(sample), "--json")
        assert result.exit_code == 0, result.stderr
        longest = json.loads(result.stdout)["inputs"][0]["longest"]
        assert (longest["length"], longest["line"], longest["file"]) == (len(copied), 40, str(corpus))
        again = run_cli("novelty", str(elsewhere), str(sample), "--json")
        assert again.exit_code == 0, again.stderr
        assert json.loads(again.stdout)["inputs"][0]["longest"] == longest
        sampled = run_cli(
            "sample", str(elsewhere), "-n", "60", "--seed", "2", "--format", "jsonl", "--novelty"
        )
        assert sampled.exit_code == 0, sampled.stderr
        assert json.loads(sampled.stdout.splitlines()[0])["novelty"]["chars"] == 60
        in_python = charrnn.load(elsewhere).novelty("new: " + copied)
        assert in_python.longest is not None and (in_python.longest.length, in_python.longest.line) == (
            len(copied), 40,
        )  # fmt: skip
        empty = tmp_path / "empty-cache"
        unknown = run_cli("novelty", str(elsewhere), str(sample), "--cache-dir", str(empty))
        assert unknown.exit_code == 1
        assert error_lines(unknown.stderr) == [
            "Error: the training text of this model is not recorded and is not in the cache: "
            "point at it with --corpus PATH"
        ]
    finally:
        inside.unlink()


@pytest.mark.parametrize("seed", range(3))
def test_lines_are_cut_from_blocks_as_iter_lines_cuts_them(seed):
    from charrnn.cli.novelty import _lines_of

    rng = random.Random(seed)
    text = "".join(rng.choice(["a", "b", "\n", "é", "\n\n"]) for _ in range(rng.randint(0, 400)))
    data = text.encode("utf-8")
    cuts = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, 30))) if len(data) > 1 else []
    blocks = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)])]
    lines = [b"".join(pieces).decode("utf-8") for pieces in _lines_of(iter(blocks))]
    expected = text.split("\n")
    if text.endswith("\n") or not text:
        expected = expected[:-1]
    assert lines == expected


def test_inputs_and_lines_longer_than_a_read_get_the_same_reports(
    novelty_run, own_cache, tmp_path, monkeypatch
):
    from charrnn.cli import novelty as novelty_cli

    run, corpus, text = novelty_run
    lines = "zz " + _lines(text, 10, 30).replace("\n", " ") + "\nshort\n" + _lines(text, 90, 1)
    whole_lines = run_cli("novelty", str(run), "--each-line", "--json", input=lines)
    whole_input = run_cli("novelty", str(run), "--json", input=lines)
    monkeypatch.setattr(novelty_cli, "READ_BYTES", 5)  # reads end inside copied spans and characters
    assert run_cli("novelty", str(run), "--each-line", "--json", input=lines).stdout == whole_lines.stdout
    assert run_cli("novelty", str(run), "--json", input=lines).stdout == whole_input.stdout
    first = json.loads(whole_lines.stdout.splitlines()[0])
    assert first["line"] == 1 and first["chars"] > 1000 and first["longest"]["length"] >= 40
    whole = json.loads(whole_input.stdout)["inputs"][0]
    assert whole["chars"] == len(lines) and whole["longest"]["length"] >= len(_lines(text, 90, 1))


def test_the_bundled_model_is_named_when_it_records_no_training_text(own_cache, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no runs/ here: MODEL is the bundled model
    result = run_cli("novelty", input="some text")
    assert result.exit_code == 1
    assert error_lines(result.stderr) == [
        "Error: the bundled model shakespeare does not record its training text: "
        "point at it with --corpus PATH"
    ]


def test_a_missing_input_is_said_before_the_training_text_is_indexed(novelty_run, own_cache, tmp_path):
    run, corpus, text = novelty_run
    result = run_cli("novelty", str(run), str(tmp_path / "nosuch.txt"))
    assert result.exit_code == 1
    assert error_lines(result.stderr) == [f"Error: file not found: {tmp_path / 'nosuch.txt'}"]
    assert "novelty index" not in result.stderr and not list(own_cache.glob("*.sa"))


def test_a_named_pipe_input_is_read_once(novelty_run, own_cache, tmp_path):
    import os
    import threading

    run, corpus, text = novelty_run
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    copied = _lines(text, 60, 2)
    writer = threading.Thread(target=lambda: fifo.write_text(copied, encoding="utf-8"), daemon=True)
    writer.start()
    result = run_cli("novelty", str(run), str(fifo), "--json")
    writer.join(timeout=10)
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["inputs"][0]["longest"]["length"] == len(copied)
