"""`charrnn train NEW_CORPUS --init-from MODEL`: fine-tuning, new characters included."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import PATTERN, TINY_MODEL_OPTIONS, error_lines, run_cli

from charrnn.store.checkpoint import load_weights

ACCENTED = PATTERN.replace("quick", "quíck").replace("dog", "dög")  # two characters the parent never saw
FAST = ["--threads", "1", "--precision", "fp32", "--seq-len", "32", "--batch-size", "8"]


@pytest.fixture(scope="module")
def parent_run(tmp_path_factory) -> Path:
    """A tiny char model trained on the plain sentence."""
    folder = tmp_path_factory.mktemp("parent")
    corpus = folder / "plain.txt"
    corpus.write_text(PATTERN * 200, encoding="utf-8")
    result = run_cli(
        "train",
        str(corpus),
        "--out",
        str(folder / "run"),
        "--max-steps",
        "120",
        "--eval-every",
        "60",
        "--lr",
        "0.01",
        "--warmup-steps",
        "10",
        "--precision",
        "fp32",
        *TINY_MODEL_OPTIONS,
    )
    assert result.exit_code == 0, result.stderr
    return folder / "run"


@pytest.fixture
def accented_corpus(tmp_path) -> Path:
    path = tmp_path / "accented.txt"
    path.write_text(ACCENTED * 200, encoding="utf-8")
    return path


def snapshot(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


def first_val_loss(run: Path) -> float:
    return json.loads((run / "metrics.jsonl").read_text().splitlines()[0])["val_loss"]


def test_fine_tuning_adds_new_characters_keeps_old_ids_and_records_the_parent(
    parent_run, accented_corpus, tmp_path
):
    before = snapshot(parent_run)
    result = run_cli(
        "train",
        str(accented_corpus),
        "--init-from",
        str(parent_run),
        "--out",
        str(tmp_path / "tuned"),
        "--max-steps",
        "4",
        *FAST,
    )
    assert result.exit_code == 0, result.stderr
    assert "adds 2 new characters: 'í' (U+00ED), 'ö' (U+00F6)" in result.stderr
    assert f"started from {parent_run}" in result.stderr
    parent, child = (
        load_weights(parent_run / "best.safetensors"),
        load_weights(tmp_path / "tuned" / "best.safetensors"),
    )
    assert child.tokenizer.chars == parent.tokenizer.chars + ["í", "ö"]
    assert child.model_config.hidden_size == parent.model_config.hidden_size
    assert child.info["parent"]["name"] == str(parent_run)
    assert len(child.info["parent"]["weights_sha256"]) == 64
    # The fine-tuning defaults: a gentler peak learning rate and a short warm-up.
    assert child.info["train_config"]["lr"] == 0.002 and child.info["train_config"]["warmup_steps"] == 20
    info = run_cli("info", str(tmp_path / "tuned"))
    assert f"started from        {parent_run}" in info.stdout
    assert snapshot(parent_run) == before


def test_a_fine_tuned_model_starts_where_its_parent_left_off(parent_run, accented_corpus, tmp_path):
    # One step on the new corpus: from the parent the loss is already low; from scratch it is not.
    common = [
        "--max-steps",
        "1",
        "--eval-every",
        "1",
        "--hidden-size",
        "32",
        "--embedding-size",
        "16",
        "--num-layers",
        "1",
        *FAST,
    ]
    tuned = run_cli(
        "train",
        str(accented_corpus),
        "--init-from",
        str(parent_run),
        "--out",
        str(tmp_path / "tuned"),
        *common,
    )
    scratch = run_cli("train", str(accented_corpus), "--out", str(tmp_path / "scratch"), *common)
    assert tuned.exit_code == 0 and scratch.exit_code == 0, tuned.stderr + scratch.stderr
    assert first_val_loss(tmp_path / "tuned") < 0.5 * first_val_loss(tmp_path / "scratch")


def test_resuming_a_fine_tuning_run_is_exact(parent_run, accented_corpus, tmp_path):
    whole = run_cli(
        "train",
        str(accented_corpus),
        "--init-from",
        str(parent_run),
        "--out",
        str(tmp_path / "whole"),
        "--max-steps",
        "6",
        *FAST,
    )
    assert whole.exit_code == 0, whole.stderr
    first = run_cli(
        "train",
        str(accented_corpus),
        "--init-from",
        str(parent_run),
        "--out",
        str(tmp_path / "split"),
        "--max-steps",
        "3",
        *FAST,
    )
    assert first.exit_code == 0, first.stderr
    resumed = run_cli("train", "--resume", str(tmp_path / "split"), "--max-steps", "6", "--threads", "1")
    assert resumed.exit_code == 0, resumed.stderr
    a = load_weights(tmp_path / "whole" / "latest.safetensors")
    b = load_weights(tmp_path / "split" / "latest.safetensors")
    for (name, x), y in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(x, y), name
    assert b.info["parent"] == a.info["parent"]


def test_a_byte_model_keeps_its_vocabulary(tmp_path, accented_corpus):
    plain = tmp_path / "plain.txt"
    plain.write_text(PATTERN * 200, encoding="utf-8")
    assert (
        run_cli(
            "train",
            str(plain),
            "--tokenizer",
            "byte",
            "--out",
            str(tmp_path / "byte"),
            "--max-steps",
            "2",
            *TINY_MODEL_OPTIONS,
        ).exit_code
        == 0
    )
    result = run_cli(
        "train",
        str(accented_corpus),
        "--init-from",
        str(tmp_path / "byte"),
        "--out",
        str(tmp_path / "tuned"),
        "--max-steps",
        "2",
        *FAST,
    )
    assert result.exit_code == 0, result.stderr
    assert "new character" not in result.stderr
    assert load_weights(tmp_path / "tuned" / "best.safetensors").tokenizer.vocab_size == 256


def test_the_bundled_model_can_be_fine_tuned(in_tmp, accented_corpus):
    result = run_cli(
        "train",
        str(accented_corpus),
        "--init-from",
        "shakespeare",
        "--max-steps",
        "1",
        "--eval-tokens",
        "200",
        *FAST,
    )
    assert result.exit_code == 0, result.stderr
    assert "started from shakespeare" in result.stderr
    assert (
        load_weights(in_tmp / "runs" / "accented" / "best.safetensors").info["parent"]["name"]
        == "shakespeare"
    )


@pytest.mark.parametrize(
    "extra, code, words",
    [
        (["--resume"], 2, "give one of them"),
        (["--hidden-size", "64"], 2, "--hidden-size is 64 but the model has 32"),
        (["--tokenizer", "byte"], 2, "--tokenizer is 'byte' but the model uses 'char'"),
        (["--out", "PARENT"], 2, "run directory of the model it starts from"),
    ],
)
def test_contradictions_are_one_line_and_the_parent_is_untouched(
    parent_run, accented_corpus, in_tmp, extra, code, words
):
    before = snapshot(parent_run)
    extra = [str(parent_run) if item == "PARENT" else item for item in extra]
    result = run_cli(
        "train", str(accented_corpus), "--init-from", str(parent_run), "--max-steps", "1", *extra, *FAST
    )
    assert result.exit_code == code
    assert len(error_lines(result.stderr)) == 1 and words in result.stderr
    assert snapshot(parent_run) == before


def test_a_missing_damaged_or_newer_model_is_one_line(parent_run, accented_corpus, in_tmp):
    (in_tmp / "damaged.safetensors").write_bytes(b"\x08" + b"\0" * 7 + b"not json")
    data = (parent_run / "best.safetensors").read_bytes()
    newer = data.replace(b'"format_version":"1"', b'"format_version":"9"')
    assert newer != data
    (in_tmp / "newer.safetensors").write_bytes(newer)
    for model, words in (
        ("absent.safetensors", "not found"),
        ("damaged.safetensors", "corrupted"),
        ("newer.safetensors", "newer charrnn"),
    ):
        result = run_cli("train", str(accented_corpus), "--init-from", model, "--max-steps", "1", *FAST)
        assert result.exit_code == 1 and len(error_lines(result.stderr)) == 1, result.stderr
        assert words in result.stderr
    assert not (in_tmp / "runs").exists()


def test_a_vocabulary_past_the_id_limit_is_refused(parent_run, accented_corpus, in_tmp, monkeypatch):
    monkeypatch.setattr("charrnn.training.finetune.MAX_VOCAB_SIZE", 28)
    before = snapshot(parent_run)
    result = run_cli("train", str(accented_corpus), "--init-from", str(parent_run), "--max-steps", "1", *FAST)
    assert result.exit_code == 1 and len(error_lines(result.stderr)) == 1
    assert "ids a vocabulary may have" in result.stderr
    assert snapshot(parent_run) == before
