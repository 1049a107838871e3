"""Corpora of thousands of distinct characters, for every tokeniser; big-vocabulary loss and sampling."""

from __future__ import annotations

import itertools
import json
import random

import pytest
import torch
from conftest import TINY_MODEL_OPTIONS, run_cli

from charrnn import loss as chunked_loss
from charrnn.config import SampleConfig
from charrnn.data.tokenizers import fit_tokenizer
from charrnn.generate.sampler import choose_next_tokens
from charrnn.store.checkpoint import load_weights


def many_character_text(num_chars: int = 24_000, distinct: int = 3000, seed: int = 0) -> str:
    """CJK-style text: a Zipf draw over `distinct` ideographs, recurring words, emoji, rare spaces."""
    rng = random.Random(seed)
    chars = [chr(0x4E00 + i) for i in range(distinct)]
    rng.shuffle(chars)
    weights = list(itertools.accumulate(1.0 / (rank + 1) for rank in range(distinct)))
    words = ["".join(rng.choices(chars, cum_weights=weights, k=rng.randint(2, 4))) for _ in range(200)]
    parts = ["".join(chars)]  # every character at least once
    while sum(map(len, parts)) < num_chars:
        roll = rng.random()
        parts.append(
            rng.choice(words)
            if roll < 0.5
            else "。\n"
            if roll < 0.55
            else "🐈"
            if roll < 0.56
            else " ok "
            if roll < 0.562
            else "\u2581"
            if roll < 0.563
            else rng.choices(chars, cum_weights=weights)[0]
        )
    return "".join(parts) + "\n"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("many") / "many.txt"
    path.write_text(many_character_text(), encoding="utf-8")
    return path


@pytest.mark.parametrize("kind", ["char", "byte", "bpe", "unigram"])
def test_every_tokeniser_trains_samples_and_round_trips_thousands_of_characters(kind, corpus, tmp_path):
    text = corpus.read_text(encoding="utf-8")
    assert len(set(text)) > 3000
    out = tmp_path / "run"
    trained = run_cli(
        "train",
        str(corpus),
        "--tokenizer",
        kind,
        "--out",
        str(out),
        "--max-steps",
        "3",
        "--eval-every",
        "3",
        "--eval-tokens",
        "2000",
        "--precision",
        "fp32",
        *TINY_MODEL_OPTIONS,
    )
    assert trained.exit_code == 0, trained.stderr
    sampled = run_cli("sample", str(out), "--length", "40", "--seed", "1", "--top-p", "0.9")
    assert sampled.exit_code == 0, sampled.stderr
    assert len(sampled.stdout) == 40
    tokenizer = load_weights(out / "best.safetensors").tokenizer
    assert tokenizer.decode(tokenizer.encode(text)) == text
    if kind == "char":
        assert tokenizer.vocab_size == len(set(text))


@pytest.mark.parametrize("kind", ["bpe", "unigram"])
def test_spaces_round_trip_when_they_are_too_rare_for_a_piece_of_their_own(kind):
    # The rare characters (spaces among them here) are left out of the vocabulary: a space must
    # still come back as a space, not as the "▁" whose bytes sentencepiece would write for it.
    text = many_character_text(8000)
    tokenizer = fit_tokenizer(kind, text, text, 300)
    assert " " in text and tokenizer.decode(tokenizer.encode(text)) == text
    assert tokenizer.decode(tokenizer.encode("a b ▁ c")) == "a b ▁ c"


def test_training_with_the_loss_in_chunks_matches_training_without(corpus, tmp_path, monkeypatch):
    def val_losses(out):
        records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line]
        return [record["val_loss"] for record in records]

    options = [
        "--max-steps",
        "4",
        "--eval-every",
        "2",
        "--eval-tokens",
        "3000",
        "--precision",
        "fp32",
        *TINY_MODEL_OPTIONS,
    ]
    assert run_cli("train", str(corpus), "--out", str(tmp_path / "plain"), *options).exit_code == 0
    # A few hundred logits at a time: every training step and evaluation goes through the chunks.
    monkeypatch.setattr(chunked_loss, "MAX_CHUNK_LOGITS", 50_000)
    assert run_cli("train", str(corpus), "--out", str(tmp_path / "chunked"), *options).exit_code == 0
    plain, chunked = val_losses(tmp_path / "plain"), val_losses(tmp_path / "chunked")
    assert len(plain) == len(chunked) >= 2
    assert chunked == pytest.approx(plain, rel=1e-5)


def _reference_choice(logits, config, generator):
    """choose_next_tokens as it was before top-p stopped sorting the whole vocabulary."""
    logits = logits / config.temperature
    if config.top_k is not None and config.top_k < logits.shape[1]:
        kth_best = torch.topk(logits, config.top_k, dim=1).values[:, -1:]
        logits = logits.masked_fill(logits < kth_best, float("-inf"))
    if config.top_p is not None and config.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=1, descending=True)
        sorted_probs = torch.softmax(sorted_logits, dim=1)
        drop_sorted = (sorted_probs.cumsum(dim=1) - sorted_probs) >= config.top_p
        drop = torch.zeros_like(drop_sorted).scatter(1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    cumulative = torch.softmax(logits, dim=1).cumsum_(dim=1)
    uniform = torch.rand((logits.shape[0], 1), generator=generator) * cumulative[:, -1:]
    return torch.searchsorted(cumulative, uniform, right=True).squeeze(1).clamp_(max=logits.shape[1] - 1)


@pytest.mark.parametrize("scale", [0.05, 1.0, 6.0])  # flat, middling and peaked distributions
@pytest.mark.parametrize("top_k,top_p", [(None, 0.9), (None, 0.5), (50, 0.95), (None, 0.999)])
def test_top_p_without_a_full_sort_picks_the_same_tokens(scale, top_k, top_p):
    config = SampleConfig(top_k=top_k, top_p=top_p, temperature=0.8)
    logits = torch.randn(3, 20_000, generator=torch.Generator().manual_seed(7)) * scale
    for seed in range(20):
        expected = _reference_choice(logits, config, torch.Generator().manual_seed(seed))
        got = choose_next_tokens(logits, config, torch.Generator().manual_seed(seed))
        assert torch.equal(got, expected)
