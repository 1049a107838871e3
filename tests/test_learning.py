"""The model learns, the state is carried between windows, checkpoints reload exactly."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from conftest import PATTERN, FakeClock, run_cli

from charrnn.config import ModelConfig, SampleConfig, TrainConfig
from charrnn.data.in_memory import Corpus, prepare_corpus
from charrnn.generate.sampler import generate_text
from charrnn.model import CharRNN
from charrnn.store.checkpoint import load_weights, save_weights
from charrnn.store.run_dir import RunDir
from charrnn.training.loop import Trainer

# Made-up durations (binary fractions, so the sums are exact) for the fake-clock test.
BUDGET_SECONDS, STEP_SECONDS, EVALUATION_SECONDS = 4.0, 0.0625, 0.5


def test_model_learns_repeated_pattern_and_greedy_sampling_reproduces_it(trained_run):
    loaded = load_weights(trained_run / "best.safetensors")
    assert loaded.info["best_val_loss"] < 0.1
    text = "".join(
        generate_text(
            loaded.model, loaded.tokenizer, SampleConfig(greedy=True, prime="the quick", length=120)
        )
    )
    expected = (PATTERN * 4)[: len("the quick") + 120]
    assert text == expected


def test_hidden_state_is_carried_between_windows_and_detached(tmp_path):
    corpus = prepare_corpus(Corpus(PATTERN * 100, "p", "p"), "char", 0.1)
    model_config = ModelConfig(hidden_size=16, embedding_size=8, num_layers=1, dropout=0.0)
    # One stream group, so each window continues the one before (test_stream_groups: several).
    train_config = TrainConfig(
        seq_len=16, batch_size=4, stream_groups=1, max_steps=3, eval_every=100, threads=1
    )
    run_dir = RunDir(tmp_path / "run")
    run_dir.prepare()
    trainer = Trainer(corpus, model_config, train_config, run_dir)
    seen_states = []
    original_forward = trainer.model.forward

    def recording_forward(tokens, state=None, **options):
        seen_states.append(tuple(part.clone() for part in state))
        assert all(part.grad_fn is None for part in state), "state entering a window must be detached"
        logits, new_state = original_forward(tokens, state, **options)
        outputs.append(tuple(part.detach().clone() for part in new_state))
        return logits, new_state

    outputs = []
    trainer.model.forward = recording_forward
    for _ in range(3):
        trainer.train_step()
    assert trainer.step == 3
    assert all(torch.count_nonzero(part) == 0 for part in seen_states[0])  # first window: zero state
    for before, after in zip(seen_states[1:], outputs[:-1], strict=True):
        for entering, left in zip(before, after, strict=True):
            assert torch.equal(entering, left)  # the state a window leaves is the next one's start
            assert torch.count_nonzero(entering) > 0


def test_checkpoint_reloads_to_identical_outputs(tmp_path):
    torch.manual_seed(0)
    corpus = prepare_corpus(Corpus(PATTERN * 20, "p", "p"), "char", 0.1)
    for kind in ("lstm", "gru", "rnn"):
        model = CharRNN(
            ModelConfig(
                model=kind,
                hidden_size=24,
                embedding_size=8,
                num_layers=2,
                vocab_size=corpus.tokenizer.vocab_size,
            )
        ).eval()
        path = tmp_path / f"{kind}.safetensors"
        save_weights(path, model, corpus.tokenizer, {"step": 1})
        loaded = load_weights(path)
        tokens = torch.from_numpy(corpus.train_tokens[:50].astype(np.int64))[None, :]
        with torch.no_grad():
            assert torch.equal(model(tokens)[0], loaded.model(tokens)[0])
        assert loaded.tokenizer.to_dict() == corpus.tokenizer.to_dict()


def test_training_output_never_reaches_stdout(in_tmp, pattern_corpus):
    from conftest import TINY_MODEL_OPTIONS

    result = run_cli(
        "train", str(pattern_corpus), "--max-steps", "10", "--eval-every", "5", *TINY_MODEL_OPTIONS
    )
    assert result.exit_code == 0, result.stderr
    assert result.stdout == ""
    assert "val loss" in result.stderr and "bits/char" in result.stderr
    assert (in_tmp / "runs" / "pattern" / "best.safetensors").is_file()
    metrics = (in_tmp / "runs" / "pattern" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in metrics] == [5, 10]


def test_output_bias_starts_at_the_unigram_prior_so_unused_bytes_cost_nothing(tmp_path):
    text = "abracadabra, said the cat.\n" * 60
    losses = {}
    for kind in ("char", "byte"):
        corpus = prepare_corpus(Corpus(text, "p", "p"), kind, 0.1)
        trainer = Trainer(
            corpus,
            ModelConfig(hidden_size=16, embedding_size=8, num_layers=1, dropout=0.0),
            TrainConfig(seq_len=16, batch_size=4, max_steps=1, eval_every=100, threads=1, precision="fp32"),
            RunDir(tmp_path / kind),
        )
        probabilities = torch.softmax(trainer.model.head.bias.detach(), dim=0)
        counts = np.bincount(corpus.train_tokens, minlength=corpus.tokenizer.vocab_size) + 1.0
        torch.testing.assert_close(probabilities, torch.from_numpy(counts / counts.sum()).float())
        from charrnn.training.loop import evaluate

        losses[kind] = evaluate(trainer.model, corpus.val_tokens, corpus.val_chars, torch.device("cpu")).loss
    # Untrained, both predict about the letter frequencies: 256 byte outputs do not start far behind 65.
    assert abs(losses["byte"] - losses["char"]) < 0.25, losses


def test_timed_evaluations_are_spaced_to_take_a_small_share_of_the_budget(tmp_path, monkeypatch):
    import charrnn.training.loop

    clock = FakeClock()
    real_evaluate = charrnn.training.loop.evaluate

    def slow_evaluate(*args, **kwargs):  # as if the validation split were large
        clock.advance(EVALUATION_SECONDS)
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(charrnn.training.loop, "evaluate", slow_evaluate)
    corpus = prepare_corpus(Corpus(PATTERN * 40, "p", "p"), "char", 0.1)
    trainer = Trainer(
        corpus,
        ModelConfig(hidden_size=16, embedding_size=8, num_layers=1),
        TrainConfig(seq_len=16, batch_size=4, max_time=BUDGET_SECONDS, threads=1, precision="fp32"),
        RunDir(tmp_path),
        time_source=clock,
    )
    real_train_step = trainer.train_step

    def timed_train_step():
        clock.advance(STEP_SECONDS)
        return real_train_step()

    trainer.train_step = timed_train_step
    finished = trainer.run()
    # 8 evaluations of 0.5 s would be the whole 4 s budget. The first comes at 1/8 of the budget
    # (step 8, 0.5 s); after it, the next may not come before 0.5 + 0.5 / 10% = 5.5 s, past the
    # budget. Training stops once the final evaluation (1.2 x 0.5 s) and one more step no longer
    # fit: at step 46 (46 x 0.0625 + 0.5 = 3.375 s), and the final evaluation ends at 3.875 s.
    assert [record["step"] for record in trainer.run_dir.read_metrics()] == [8, 46]
    assert (finished.reason, finished.step, finished.elapsed) == ("time", 46, 3.875)


def test_bits_per_char_of_a_trained_model_matches_a_direct_computation(trained_run):
    loaded = load_weights(trained_run / "best.safetensors")
    text = PATTERN * 30
    tokens = loaded.tokenizer.encode(text)
    from charrnn.inspect.evaluation import evaluate

    result = evaluate(loaded.model, tokens, len(text) - 1, torch.device("cpu"))
    inputs = torch.from_numpy(np.asarray(tokens, dtype=np.int64))[None, :]
    with torch.no_grad():
        logits, _ = loaded.model(inputs[:, :-1])  # one stream read from the start: the plain definition
    nats = float(torch.nn.functional.cross_entropy(logits[0], inputs[0, 1:], reduction="sum"))
    assert nats / (len(text) - 1) < 0.1  # trained: far from the untrained ~3 nats
    # Evaluation cuts the text into streams warmed by their preceding context, so allow a hair.
    assert result.bits_per_char == pytest.approx(nats / math.log(2) / (len(text) - 1), rel=0.05, abs=1e-3)
    assert result.loss == pytest.approx(nats / (len(text) - 1), rel=0.05, abs=1e-3)
