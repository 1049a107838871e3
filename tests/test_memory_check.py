"""Sizes that cannot be allocated are refused in one line before anything is built; so is running out."""

from __future__ import annotations

import sys

import pytest
import torch
from conftest import TINY_MODEL_OPTIONS, error_lines, run_cli

import charrnn.cli.train
import charrnn.training.loop
from charrnn.config import ModelConfig
from charrnn.model import CharRNN
from charrnn.training import memory_check, session
from charrnn.training.memory_check import count_parameters_of, training_memory_bytes

GB = 10**9


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
def test_the_parameter_count_matches_a_real_model(kind):
    config = ModelConfig(model=kind, num_layers=2, hidden_size=24, embedding_size=8, vocab_size=37)
    model = CharRNN(config)
    assert count_parameters_of(config, 37) == sum(p.numel() for p in model.parameters())
    assert training_memory_bytes(config, 37) == 16 * sum(p.numel() for p in model.parameters())


def test_available_memory_is_read_from_the_system():
    available = memory_check.available_memory_bytes("cpu")
    if sys.platform.startswith("linux"):
        assert isinstance(available, int) and available > 0


def test_unknown_available_memory_does_not_stop_training(monkeypatch):
    huge = ModelConfig(num_layers=16, hidden_size=16384)
    monkeypatch.setattr(memory_check, "available_memory_bytes", lambda *args: None)
    assert memory_check.check_training_fits(huge, 65) is None
    # The same model is refused once the memory is known to be too small: the check did run.
    monkeypatch.setattr(memory_check, "available_memory_bytes", lambda *args: 8 * GB)
    with pytest.raises(memory_check.NotEnoughMemory):
        memory_check.check_training_fits(huge, 65)


def test_a_model_too_big_for_memory_is_refused_before_the_corpus_is_read(in_tmp, pattern_corpus, monkeypatch):
    monkeypatch.setattr(memory_check, "available_memory_bytes", lambda *args: 8 * GB)
    monkeypatch.setattr(session, "_scan", lambda *args, **kwargs: pytest.fail("corpus read"))
    result = run_cli(
        "train", str(pattern_corpus), "--num-layers", "16", "--hidden-size", "16384", "--threads", "1"
    )
    assert result.exit_code == 1
    assert error_lines(result.stderr) == [
        "Error: this model is too big: its 33.3 G parameters need at least 532.7 GB (weights, "
        "gradients and AdamW's two moments in fp32) but 8.0 GB is available here; choose a smaller "
        "--hidden-size or --num-layers"
    ]
    assert not (in_tmp / "runs").exists()  # nothing was created either


def test_the_exact_check_with_the_fitted_vocabulary_runs_before_the_model_is_built(
    in_tmp, pattern_corpus, monkeypatch
):
    config = ModelConfig(hidden_size=32, embedding_size=16, num_layers=1, dropout=0)
    vocabulary = len(set(pattern_corpus.read_text()))
    # Enough for the vocabulary-free estimate made before reading the corpus, not for the real one.
    monkeypatch.setattr(
        memory_check, "available_memory_bytes", lambda *args: training_memory_bytes(config, 1) + 1
    )

    def no_trainer(*args, **kwargs):
        pytest.fail("the trainer was built")

    monkeypatch.setattr(charrnn.training.loop, "Trainer", no_trainer)
    result = run_cli("train", str(pattern_corpus), *TINY_MODEL_OPTIONS)
    assert result.exit_code == 1
    needed = training_memory_bytes(config, vocabulary)
    [line] = error_lines(result.stderr)
    parameters = memory_check.format_count(count_parameters_of(config, vocabulary))
    assert line.startswith(
        f"Error: this model is too big: its {parameters} parameters need at least "
        f"{memory_check.format_bytes(needed)} "
    )


@pytest.mark.parametrize(
    "failure, shown",
    [
        (
            torch.cuda.OutOfMemoryError(
                "CUDA out of memory. Tried to allocate 20.00 GiB (GPU 0; 8 GiB)\nmore"
            ),
            "Error: out of memory (CUDA out of memory. Tried to allocate 20.00 GiB (GPU 0; 8 GiB))",
        ),
        (
            RuntimeError(
                "[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate "
                "memory: you tried to allocate 70368744177664 bytes. Error code 12 (Cannot allocate memory)"
            ),
            "Error: out of memory (DefaultCPUAllocator: can't allocate memory: you tried to allocate "
            "70368744177664 bytes. Error code 12 (Cannot allocate memory))",
        ),
        (MemoryError(), "Error: out of memory"),
    ],
)
def test_running_out_of_memory_anywhere_is_one_error_line(monkeypatch, failure, shown):
    def run_out(request):
        raise failure

    monkeypatch.setattr(charrnn.cli.train, "run_training", run_out)
    result = run_cli("train", "corpus.txt")
    assert result.exit_code == 1
    assert error_lines(result.stderr) == [
        f"{shown}: to train, try a smaller --hidden-size, --num-layers, --batch-size or --seq-len"
    ]


def test_other_runtime_errors_are_not_disguised_as_out_of_memory(monkeypatch):
    def fail(request):
        raise RuntimeError("a bug")

    monkeypatch.setattr(charrnn.cli.train, "run_training", fail)
    with pytest.raises(RuntimeError, match="a bug"):
        run_cli("train", "corpus.txt")
