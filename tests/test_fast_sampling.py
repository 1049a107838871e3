"""The NumPy sampling path: its random draws, its choices against torch's, one stream against a batch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import run_cli

from charrnn.config import ModelConfig, SampleConfig
from charrnn.generate import blas_threads
from charrnn.generate.sampler import choose_next_tokens, generate_records, generate_text
from charrnn.generate.token_choice import TokenChooser, UniformStream
from charrnn.model import CharRNN

SETTINGS = [
    SampleConfig(),
    SampleConfig(temperature=0.7),
    SampleConfig(temperature=1.6, top_k=5),
    SampleConfig(top_p=0.8),
    SampleConfig(greedy=True),
]


def test_drawing_ahead_gives_the_numbers_of_one_draw_at_a_time():
    stream = UniformStream(torch.Generator().manual_seed(3))
    one_at_a_time = torch.Generator().manual_seed(3)
    drawn = [stream.next() for _ in range(700)]  # crosses two block boundaries
    expected = [torch.rand((1, 1), generator=one_at_a_time).item() for _ in range(700)]
    assert [float(value) for value in drawn] == expected


@pytest.mark.parametrize("config", SETTINGS, ids=lambda config: repr(config)[:60])
def test_chooser_picks_what_torch_picks_with_the_same_seed(config):
    logits = torch.randn(400, 65, generator=torch.Generator().manual_seed(1)) * 2.5
    chooser = TokenChooser(config)
    stream = UniformStream(torch.Generator().manual_seed(9))
    generator = torch.Generator().manual_seed(9)
    fast = [int(chooser.choose(row[None].numpy(), [stream])[0]) for row in logits]
    reference = [int(choose_next_tokens(row[None], config, generator)) for row in logits]
    # Float rounding (NumPy against torch's softmax) may move a draw that lands within ~1e-7 of a
    # boundary; anything more than a rare disagreement would be a different distribution.
    assert sum(a != b for a, b in zip(fast, reference)) <= 2


@pytest.mark.parametrize("config", SETTINGS, ids=lambda config: repr(config)[:60])
def test_a_row_picks_the_same_token_alone_or_in_a_batch(config):
    logits = (torch.randn(300, 6, 65, generator=torch.Generator().manual_seed(2)) * 3).numpy()
    batched, alone = TokenChooser(config), TokenChooser(config)
    batch_streams = [UniformStream(torch.Generator().manual_seed(seed)) for seed in range(6)]
    alone_streams = [UniformStream(torch.Generator().manual_seed(seed)) for seed in range(6)]
    for step in logits:
        together = batched.choose(step, batch_streams).tolist()
        one_by_one = [int(alone.choose(step[row : row + 1], [alone_streams[row]])[0]) for row in range(6)]
        assert together == one_by_one


def test_banned_tokens_are_never_chosen():
    logits = np.zeros((1, 10), np.float32)
    logits[0, [0, 4]] = -np.inf
    chooser, stream = TokenChooser(SampleConfig(temperature=3.0)), UniformStream(torch.Generator())
    assert {int(chooser.choose(logits, [stream])[0]) for _ in range(500)} == set(range(10)) - {0, 4}


@pytest.mark.parametrize("kind, table", [("lstm", True), ("gru", True), ("lstm", False), ("gru", False)])
def test_default_shaped_model_writes_what_the_fused_layers_write(kind, table, monkeypatch):
    """Same seed, a model of the default width: the NumPy path and stepping nn.LSTM/nn.GRU agree,
    with the first layer's per-token table and without it (as for a big vocabulary)."""
    if not table:
        monkeypatch.setattr("charrnn.generate.stepper.MAX_FIRST_LAYER_TABLE_FLOATS", 0)
    from charrnn.data.in_memory import Corpus, prepare_corpus

    tokenizer = prepare_corpus(
        Corpus("".join(chr(32 + i) for i in range(65)) * 3, "v", "v"), "char", 0.3
    ).tokenizer
    torch.manual_seed(4)
    model = CharRNN(ModelConfig(model=kind, hidden_size=384, vocab_size=tokenizer.vocab_size)).eval()
    config = SampleConfig(temperature=0.9, seed=21, length=150, prime="AB")
    fast = "".join(generate_text(model, tokenizer, config))
    generator = torch.Generator().manual_seed(21)
    with torch.inference_mode():
        logits, state = model(torch.tensor([[int(i) for i in tokenizer.encode("AB")]]))
        written = []
        for _ in range(150):
            token = choose_next_tokens(logits[:, -1], config, generator)
            written.append(int(token))
            logits, state = model(token[:, None], state)
    assert fast == "AB" + tokenizer.decode(written)


def test_every_sample_of_a_batch_is_its_seed_written_alone(trained_run):
    from charrnn.store.checkpoint import load_weights

    loaded = load_weights(trained_run / "best.safetensors")
    config = SampleConfig(num_samples=5, length=120, seed=8, temperature=1.2, prime="the")
    records = list(generate_records(loaded.model, loaded.tokenizer, config))
    for record in records:
        alone = SampleConfig(length=120, seed=record.seed, temperature=1.2, prime="the")
        assert "".join(generate_text(loaded.model, loaded.tokenizer, alone)) == "the" + record.text


@pytest.mark.skipif(blas_threads.get_blas_threads() is None, reason="NumPy is not built on OpenBLAS here")
def test_sampling_runs_numpy_on_one_thread_and_puts_the_count_back(trained_run, monkeypatch):
    seen = []
    original = blas_threads.set_blas_threads

    def recording(threads):
        seen.append(threads)
        original(threads)

    monkeypatch.setattr("charrnn.generate.stepper.set_blas_threads", recording)
    original(2)
    assert run_cli("sample", str(trained_run), "--length", "20", "--seed", "1").exit_code == 0
    assert seen == [1]
    assert blas_threads.get_blas_threads() == 2
