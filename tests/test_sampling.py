"""Sampling: seeds, greedy, top-k, length, streaming to a closed pipe, the fast stepper."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from conftest import error_lines, run_cli

from charrnn.config import ModelConfig, SampleConfig
from charrnn.generate.sampler import RecurrentStepper, choose_next_tokens
from charrnn.model import CharRNN


def test_same_seed_gives_same_text_and_other_seed_other_text(trained_run):
    first = run_cli("sample", str(trained_run), "--seed", "5", "--length", "200", "--temperature", "1.5")
    second = run_cli("sample", str(trained_run), "--seed", "5", "--length", "200", "--temperature", "1.5")
    third = run_cli("sample", str(trained_run), "--seed", "6", "--length", "200", "--temperature", "1.5")
    assert first.exit_code == 0 and first.stderr == ""
    assert first.stdout == second.stdout
    assert first.stdout != third.stdout


def test_top_k_one_equals_greedy(trained_run):
    greedy = run_cli("sample", str(trained_run), "--greedy", "--length", "100", "--seed", "1")
    top1 = run_cli(
        "sample", str(trained_run), "--top-k", "1", "--length", "100", "--seed", "2", "--temperature", "2"
    )
    assert greedy.stdout == top1.stdout


@pytest.mark.parametrize("length", [0, 1, 37, 500])
def test_length_is_honoured(trained_run, length):
    result = run_cli("sample", str(trained_run), "--length", str(length), "--prime", "the")
    assert result.exit_code == 0
    assert len(result.stdout) == len("the") + length
    assert result.stdout.startswith("the")


def test_num_samples_are_separated(trained_run):
    result = run_cli(
        "sample",
        str(trained_run),
        "--num-samples",
        "3",
        "--length",
        "20",
        "--separator",
        "\\n===\\n",
        "--seed",
        "3",
    )
    parts = result.stdout.split("\n===\n")
    assert len(parts) == 3 and all(len(part) == 20 for part in parts)


def test_prime_from_stdin(trained_run):
    result = run_cli("sample", str(trained_run), "--prime", "-", "--length", "10", input="the lazy")
    assert result.exit_code == 0 and result.stdout.startswith("the lazy")


def test_prime_with_unseen_characters_is_one_line_naming_them(trained_run):
    result = run_cli("sample", str(trained_run), "--prime", "price: 5€")
    assert result.exit_code == 1
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and lines[0].startswith("Error: ")
    assert "'€' (U+20AC)" in lines[0] and "':'" in lines[0] and "'5'" in lines[0]
    assert result.stdout == ""


def test_endless_sample_piped_to_head_ends_quietly(trained_run):
    command = f"{sys.executable} -m charrnn sample {trained_run} --length -1 --temperature 1.5 | head -c 300"
    finished = subprocess.run(["bash", "-c", f"set -o pipefail; {command}"], capture_output=True, timeout=60)
    assert finished.returncode == 0, finished.stderr
    assert len(finished.stdout) == 300
    assert finished.stderr == b""


def test_first_lines_piped_to_head(trained_run):
    command = f"{sys.executable} -m charrnn sample {trained_run} --length 5000 | head -3"
    finished = subprocess.run(["bash", "-c", f"set -o pipefail; {command}"], capture_output=True, timeout=60)
    assert finished.returncode == 0 and finished.stderr == b""
    assert finished.stdout.count(b"\n") == 3


@pytest.mark.parametrize("batch", [1, 4])  # one stream (matrix-vector products) and a batch
@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
def test_stepper_matches_training_layers(kind, batch):
    torch.manual_seed(1)
    model = CharRNN(
        ModelConfig(model=kind, num_layers=3, hidden_size=40, embedding_size=12, vocab_size=30, dropout=0.0)
    ).eval()
    tokens = torch.randint(30, (batch, 25))
    with torch.no_grad():
        fused_logits, _ = model(tokens)
        stepper = RecurrentStepper(model)
        stepper.load_state(model.initial_state(batch))
        for position in range(tokens.shape[1]):
            logits = torch.from_numpy(stepper.step(tokens[:, position].numpy()))
            torch.testing.assert_close(logits, fused_logits[:, position], rtol=1e-4, atol=1e-5)
        # Picking up from a state the fused layers left gives the same as running on.
        _, state = model(tokens[:, :10])
        stepper.load_state(state)
        for position in range(10, tokens.shape[1]):
            logits = torch.from_numpy(stepper.step(tokens[:, position].numpy()))
            torch.testing.assert_close(logits, fused_logits[:, position], rtol=1e-4, atol=1e-5)
        final = stepper.state()
        expected = model(tokens)[1]
        for got, want in zip(
            final if isinstance(final, tuple) else (final,),
            expected if isinstance(expected, tuple) else (expected,),
        ):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("num_layers", [1, 2])
def test_stepper_going_down_to_one_stream_switches_to_its_layout_and_goes_on(num_layers):
    """A batch whose other samples have ended goes on as one stream (the transposed weights,
    the last layer's bias as a weight row) from the state the batch left."""
    torch.manual_seed(2)
    model = CharRNN(
        ModelConfig(num_layers=num_layers, hidden_size=32, embedding_size=8, vocab_size=20)
    ).eval()
    tokens = torch.randint(20, (3, 16))
    with torch.no_grad():
        fused_logits, _ = model(tokens)
        stepper = RecurrentStepper(model)
        stepper.load_state(model.initial_state(3))
        for position in range(8):
            stepper.step(tokens[:, position].numpy())
        stepper.keep_rows([1])
        assert stepper.single
        for position in range(8, 16):
            logits = torch.from_numpy(stepper.step(tokens[1:2, position].numpy()))
            torch.testing.assert_close(logits, fused_logits[1:2, position], rtol=1e-4, atol=1e-5)


def test_top_p_keeps_only_the_nucleus():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    generator = torch.Generator().manual_seed(0)
    config = SampleConfig(top_p=0.7)
    picks = {int(choose_next_tokens(logits, config, generator)) for _ in range(300)}
    assert picks == {0, 1}


def test_top_k_keeps_only_k_tokens():
    logits = torch.zeros(1, 10)
    logits[0, 3] = logits[0, 7] = 1.0
    generator = torch.Generator().manual_seed(0)
    picks = {int(choose_next_tokens(logits, SampleConfig(top_k=2), generator)) for _ in range(200)}
    assert picks == {3, 7}


def test_sampled_text_equals_sampling_with_the_training_layers(trained_run):
    """Same seed: the fast stepper writes exactly what stepping the fused nn.LSTM would write."""
    from charrnn.generate.sampler import generate_text
    from charrnn.store.checkpoint import load_weights

    loaded = load_weights(trained_run / "best.safetensors")
    config = SampleConfig(temperature=1.3, top_p=0.95, seed=11, length=300, prime="the ")
    fast = "".join(generate_text(loaded.model, loaded.tokenizer, config))

    generator = torch.Generator().manual_seed(11)
    model, tokenizer = loaded.model.eval(), loaded.tokenizer
    with torch.inference_mode():
        logits, state = model(torch.tensor([list(tokenizer.encode("the "))], dtype=torch.long))
        logits = logits[:, -1]
        written = []
        for _ in range(300):
            token = choose_next_tokens(logits, config, generator)
            written.append(int(token))
            logits, state = model(token[:, None], state)  # the fused layer, one character at a time
            logits = logits[:, -1]
    assert fast == "the " + tokenizer.decode(written)
