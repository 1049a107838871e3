"""Every tokeniser kind end to end: train, checkpoint, reload, sample; honest bits per character."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import REPO, TINY_MODEL_OPTIONS, error_lines, run_cli

import charrnn.inspect.evaluation
from charrnn.data.tokenizers import tokenizer_from_dict
from charrnn.store.checkpoint import load_weights, read_metadata

SHAKESPEARE = (REPO / "data" / "tinyshakespeare.txt").read_text(encoding="utf-8")
# Mostly English with accented, CJK and emoji lines mixed in, so multi-byte characters
# land in both the training and the validation part.
MIXED_CORPUS = "".join(
    SHAKESPEARE[start : start + 600] + "Ça fait déjà l'été. 日本語のテキスト。 ok 😀\n"
    for start in range(0, 30_000, 600)
)
KIND_OPTIONS = {"char": [], "byte": [], "bpe": ["--vocab-size", "400"], "unigram": ["--vocab-size", "400"]}


def _train(corpus_path, out, kind, *extra):
    result = run_cli(
        "train",
        str(corpus_path),
        "--out",
        str(out),
        "--tokenizer",
        kind,
        *KIND_OPTIONS[kind],
        "--max-steps",
        "12",
        "--eval-every",
        "12",
        "--lr",
        "0.01",
        "--warmup-steps",
        "2",
        *TINY_MODEL_OPTIONS,
        *extra,
    )
    assert result.exit_code == 0, result.stderr
    return result


@pytest.fixture(scope="module")
def mixed_corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "mixed.txt"
    path.write_text(MIXED_CORPUS, encoding="utf-8")
    return path


@pytest.mark.parametrize("kind", ["char", "byte", "bpe", "unigram"])
def test_each_kind_trains_and_its_checkpoint_alone_reloads_and_samples(mixed_corpus, tmp_path, kind):
    result = _train(mixed_corpus, tmp_path / "run", kind)
    start_line = result.stderr.splitlines()[0]
    assert f"({kind}, " in start_line and "chars/token" in start_line and "vocabulary" in start_line

    # The weights file alone is enough: copy it somewhere else and sample from it.
    alone = tmp_path / "elsewhere" / "model.safetensors"
    alone.parent.mkdir()
    shutil.copy(tmp_path / "run" / "latest.safetensors", alone)
    metadata = read_metadata(alone.read_bytes(), alone)
    stored = json.loads(metadata["tokenizer"])
    assert stored["kind"] == kind
    if kind in ("bpe", "unigram"):
        assert isinstance(stored["model"], str) and len(stored["model"]) > 1000  # the base64 proto

    prime = "ROMEO: déjà 日本" if kind == "char" else "ROMEO: €½ 한국어 ▁ 🦀"  # unseen text for byte/subword
    sample = run_cli(
        "sample",
        str(alone),
        "--prime",
        prime,
        "--length",
        "150",
        "--seed",
        "3",
        "--num-samples",
        "2",
        "--separator",
        "\\n--\\n",
    )
    assert sample.exit_code == 0, sample.stderr
    assert sample.stderr == ""
    first, second = sample.stdout.split("\n--\n")
    for text in (first, second):
        assert text.startswith(prime)
        assert len(text) == len(prime) + 150  # --length counts characters, whatever the unit
    assert "\ufffd" not in first[: len(prime)]


def test_resume_refuses_another_tokenizer(mixed_corpus, tmp_path):
    _train(mixed_corpus, tmp_path / "run", "byte")
    result = run_cli(
        "train",
        str(mixed_corpus),
        "--out",
        str(tmp_path / "run"),
        "--resume",
        "--tokenizer",
        "char",
        "--max-steps",
        "20",
    )
    assert result.exit_code == 1
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and "--tokenizer" in lines[0]


@pytest.mark.parametrize("kind", ["char", "byte", "bpe"])
def test_bits_per_char_from_training_equals_a_direct_computation(mixed_corpus, tmp_path, monkeypatch, kind):
    # One evaluation stream: training-time evaluation then reads the validation text in one
    # pass, exactly like the direct computation below.
    monkeypatch.setattr(charrnn.inspect.evaluation, "EVAL_STREAMS", 1)
    _train(mixed_corpus, tmp_path / "run", kind, "--val-fraction", "0.1")
    last = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    loaded = load_weights(tmp_path / "run" / "latest.safetensors")

    split_at = int(len(MIXED_CORPUS) * (1.0 - 0.1))
    val_text = MIXED_CORPUS[split_at:]
    assert val_text[0].isascii() and any(ord(c) > 0xFFFF for c in val_text)
    ids = loaded.tokenizer.encode(val_text)
    with torch.no_grad():
        logits, _ = loaded.model(torch.tensor(ids[:-1], dtype=torch.long)[None])
        total_nats = float(
            F.cross_entropy(logits[0], torch.tensor(ids[1:], dtype=torch.long), reduction="sum")
        )
    # The characters behind the predicted tokens: the text minus what the first token stands for.
    num_chars = len(val_text) - len(loaded.tokenizer.decode(ids[:1]))
    assert last["val_loss"] == pytest.approx(total_nats / (len(ids) - 1), rel=1e-5)
    assert last["val_bpc"] == pytest.approx(total_nats / math.log(2) / num_chars, rel=1e-5)


def test_thirty_thousand_distinct_cjk_characters_train_with_uint16_ids(tmp_path):
    chars = [chr(c) for c in range(0x4E00, 0x9FFF + 1)] + [chr(c) for c in range(0x20000, 0x20000 + 9_100)]
    lines = ["".join(chars[i : i + 40]) for i in range(0, len(chars), 40)]
    corpus = tmp_path / "cjk.txt"
    corpus.write_text("\n".join(lines + lines[:2000]) + "\n", encoding="utf-8")
    result = run_cli(
        "train",
        str(corpus),
        "--out",
        str(tmp_path / "run"),
        "--max-steps",
        "2",
        "--eval-every",
        "2",
        *TINY_MODEL_OPTIONS,
    )
    assert result.exit_code == 0, result.stderr
    loaded = load_weights(tmp_path / "run" / "latest.safetensors")
    assert loaded.tokenizer.vocab_size > 30_000
    ids = loaded.tokenizer.encode("".join(chars[-100:]))
    assert str(ids.dtype) == "uint16" and int(ids.max()) > 30_000
    assert tokenizer_from_dict(loaded.tokenizer.to_dict()).decode(ids) == "".join(chars[-100:])
    sample = run_cli("sample", str(tmp_path / "run"), "--length", "50", "--seed", "1")
    assert sample.exit_code == 0 and len(sample.stdout) == 50


@pytest.mark.parametrize(
    "args, code, message",
    [
        (
            ["--tokenizer", "char", "--vocab-size", "512"],
            2,
            "--vocab-size applies to --tokenizer bpe or unigram",
        ),
        (["--tokenizer", "bpe", "--vocab-size", "100"], 1, "at least 259"),
        (["--tokenizer", "bpe", "--vocab-size", "50000"], 1, "--vocab-size 50000 is too large"),
        (["--tokenizer", "word"], 2, "word"),
    ],
)
def test_bad_tokenizer_options_are_one_line_errors(mixed_corpus, tmp_path, args, code, message):
    result = run_cli("train", str(mixed_corpus), "--out", str(tmp_path / "run"), *args, "--max-steps", "1")
    assert result.exit_code == code
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0]
    assert not (tmp_path / "run" / "latest.safetensors").exists()


@pytest.mark.parametrize("kind", ["char", "byte"])
def test_eval_tokens_measures_that_many_predictions_in_honest_bits_per_char(
    mixed_corpus, tmp_path, monkeypatch, kind
):
    # One evaluation stream: the sample is one piece, at the start of the split.
    monkeypatch.setattr(charrnn.inspect.evaluation, "EVAL_STREAMS", 1)
    result = _train(mixed_corpus, tmp_path / "run", kind, "--val-fraction", "0.1", "--eval-tokens", "40")
    assert "evaluating 40 of the" in result.stderr
    last = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    loaded = load_weights(tmp_path / "run" / "latest.safetensors")

    val_text = MIXED_CORPUS[int(len(MIXED_CORPUS) * (1.0 - 0.1)) :]
    ids = loaded.tokenizer.encode(val_text)[:41]
    with torch.no_grad():
        logits, _ = loaded.model(torch.tensor(ids[:-1], dtype=torch.long)[None])
        total_nats = float(
            F.cross_entropy(logits[0], torch.tensor(ids[1:], dtype=torch.long), reduction="sum")
        )
    # Characters that start within the predicted tokens 1..40 (a byte counts at a character's first byte).
    num_chars = int(loaded.tokenizer.char_counts(np.asarray(ids[1:])).sum())
    assert last["val_loss"] == pytest.approx(total_nats / 40, rel=1e-5)
    assert last["val_bpc"] == pytest.approx(total_nats / math.log(2) / num_chars, rel=1e-5)
