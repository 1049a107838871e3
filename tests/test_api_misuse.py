"""The Python API given what it does not take: one clear charrnn error, or a documented meaning."""

from __future__ import annotations

from pathlib import Path

import pytest

import charrnn
from charrnn.errors import CharrnnError, ConfigError, UsageProblem


@pytest.fixture(scope="module")
def model(trained_run):
    return charrnn.load(trained_run, device="cpu")


def test_generate_text_without_end_is_refused_and_the_iterator_writes_on(model):
    """generate_text(length=-1) never returned; endless text is the iterator's."""
    with pytest.raises(UsageProblem, match=r"generate_text\(length=-1\) would never return"):
        model.generate_text(length=-1, seed=1)
    written = 0
    for chunk in model.generate(length=-1, seed=1):
        written += len(chunk)
        if written > 3000:  # more than the default length: it goes on until the reader stops
            break
    assert written > 3000


@pytest.mark.parametrize(
    "options, message",
    [
        ({"lenght": 5}, r"unknown sampling options: lenght \(they are: batch_size, "),
        ({"length": 2.5}, r"--length must be a whole number, got 2\.5"),
        ({"length": "5"}, r"--length must be a whole number, got '5'"),
        ({"top_k": "3"}, r"--top-k must be a whole number"),
        ({"seed": 1.5}, r"--seed must be a whole number"),
        ({"num_samples": True}, r"--num-samples must be a whole number, got True"),
        ({"greedy": "no"}, r"--greedy must be True or False"),
        ({"temperature": True}, r"--temperature must be a finite number, got True"),
        ({"prime": b"the"}, r"--prime must be text \(a str\), got b'the'"),
        ({"separator": None, "num_samples": 2}, r"--separator must be text"),
    ],
)
def test_generate_refuses_a_wrong_option_with_one_charrnn_error(model, options, message):
    with pytest.raises(UsageProblem, match=message):
        model.generate_text(**{"length": 5, **options})
    with pytest.raises(UsageProblem, match=message):
        model.generate(**{"length": 5, **options})  # at the call, before any text


def test_score_of_bytes_is_refused_clearly(model):
    """It failed with "TypeError: object of type 'int' has no len()" from inside."""
    with pytest.raises(UsageProblem, match=r"score takes text \(a str\), not bytes: decode it first"):
        model.score(b"the quick brown fox\n")
    with pytest.raises(UsageProblem, match=r"not NoneType"):
        model.score(None)
    with pytest.raises(UsageProblem, match=r"line 2 to score is int, not text"):
        model.score(["the fox", 7])
    with pytest.raises(UsageProblem, match=r"line 1 to score is bytes"):
        list(model.score_lines([b"the fox"]))
    with pytest.raises(UsageProblem, match=r"score_lines takes an iterable of lines \(str\), not str"):
        model.score_lines("the fox")


def test_an_empty_text_has_no_lines_to_score(model):
    """score("") scored one empty line; a text's lines end at its newlines, and "" has none."""
    assert model.score("") == []
    assert model.score([]) == []
    [empty_line] = model.score("\n")
    assert empty_line.line == "" and empty_line.chars == 1
    assert [score.line for score in model.score("the\nfox")] == ["the", "fox"]
    assert [score.line for score in model.score("the\nfox\n")] == ["the", "fox"]


def test_evaluate_of_bytes_or_other_types_is_refused_clearly(model, tmp_path):
    """evaluate(b"abc") failed with an AttributeError from inside."""
    with pytest.raises(UsageProblem, match=r"evaluate takes text \(a str\) or a file .*not bytes: decode"):
        model.evaluate(b"the quick brown fox")
    with pytest.raises(UsageProblem, match=r"not int"):
        model.evaluate(3)
    with pytest.raises(UsageProblem, match=r"a file is named by a str or a pathlib.Path, not bytes"):
        model.evaluate_file(b"text.txt")
    with pytest.raises(UsageProblem, match=r"not bytes"):
        list(model.score_file(b"text.txt"))
    text = tmp_path / "text.txt"
    text.write_text("the quick brown fox\n")
    assert model.evaluate(Path(text)).chars == model.evaluate("the quick brown fox\n").chars


def test_load_refuses_an_unknown_device(trained_run):
    with pytest.raises(UsageProblem, match=r"--device must be one of auto, cpu, cuda, mps, got 'tpu'"):
        charrnn.load(trained_run, device="tpu")


@pytest.mark.parametrize(
    "options, message",
    [
        ({"hidden_size": 32.5}, r"--hidden-size must be a whole number, got 32\.5"),
        ({"max_steps": "20"}, r"--max-steps must be a whole number"),
        ({"threads": 1.0}, r"--threads must be a whole number"),
        ({"shift_passes": "yes"}, r"--shift-passes must be True or False"),
        ({"dropout": True}, r"--dropout must be a finite number, got True"),
    ],
)
def test_train_refuses_an_option_of_the_wrong_type(tmp_path, options, message):
    corpus = tmp_path / "c.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog.\n" * 50)
    with pytest.raises(ConfigError, match=message):
        charrnn.train(corpus, out=tmp_path / "run", **{"max_steps": 2, "threads": 1, **options})
    assert not (tmp_path / "run").exists()


def test_every_refusal_is_a_charrnn_error():
    assert issubclass(UsageProblem, CharrnnError) and issubclass(ConfigError, UsageProblem)
