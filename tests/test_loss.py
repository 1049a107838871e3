"""The chunked output-layer loss equals the plain one, values and gradients, in every mode."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from charrnn.loss import head_cross_entropy


def _case(tokens: int = 37, hidden_size: int = 8, vocab: int = 50, ignored: int = 0, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    head = nn.Linear(hidden_size, vocab)
    with torch.no_grad():
        head.weight.copy_(torch.randn(vocab, hidden_size, generator=generator))
        head.bias.copy_(torch.randn(vocab, generator=generator))
    hidden = torch.randn(tokens, hidden_size, generator=generator, requires_grad=True)
    targets = torch.randint(vocab, (tokens,), generator=generator)
    targets[:ignored] = -1
    return head, hidden, targets


def _loss_and_grads(loss_fn, head, hidden, targets):
    head.zero_grad()
    hidden.grad = None
    loss = loss_fn(hidden, head, targets)
    loss.backward()
    return loss.detach(), hidden.grad.clone(), head.weight.grad.clone(), head.bias.grad.clone()


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("ignored", [0, 5])
def test_chunked_loss_and_gradients_equal_the_plain_ones(reduction, ignored):
    head, hidden, targets = _case(ignored=ignored)
    plain = _loss_and_grads(
        lambda h, m, t: F.cross_entropy(m(h).float(), t, ignore_index=-1, reduction=reduction),
        head,
        hidden,
        targets,
    )
    # 50 symbols x 7 tokens per chunk: six chunks and a short last one.
    chunked = _loss_and_grads(
        lambda h, m, t: head_cross_entropy(
            h, m, t, ignore_index=-1, reduction=reduction, max_chunk_logits=350
        ),
        head,
        hidden,
        targets,
    )
    for expected, got in zip(plain, chunked):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_chunked_loss_under_bf16_autocast_matches_the_plain_one():
    head, hidden, targets = _case(tokens=64, hidden_size=16, vocab=300, ignored=3)

    def plain(h, m, t):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return F.cross_entropy(m(h).float(), t, ignore_index=-1)

    def chunked(h, m, t):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return head_cross_entropy(h, m, t, ignore_index=-1, max_chunk_logits=3000)

    expected, got = (
        _loss_and_grads(plain, head, hidden, targets),
        _loss_and_grads(chunked, head, hidden, targets),
    )
    # bf16 logits: both round to the same 8-bit mantissa; only the order of sums differs.
    for want, have in zip(expected, got):
        assert have.dtype == want.dtype
        torch.testing.assert_close(have, want, rtol=2e-2, atol=2e-2)


def test_chunked_loss_without_gradients_matches_under_inference_mode():
    head, hidden, targets = _case(ignored=4)
    with torch.inference_mode():
        expected = F.cross_entropy(head(hidden), targets, ignore_index=-1, reduction="sum")
        got = head_cross_entropy(
            hidden, head, targets, ignore_index=-1, reduction="sum", max_chunk_logits=100
        )
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("rows_per_block", [8, 1024])
def test_blocked_evaluation_loss_over_token_blocks_and_vocabulary_slices_equals_the_plain_one(
    monkeypatch, rows_per_block
):
    import charrnn.loss as loss_module

    monkeypatch.setattr(loss_module, "ROWS_PER_BLOCK", rows_per_block)
    head, hidden, targets = _case(tokens=45, vocab=307, ignored=6, seed=3)
    with torch.no_grad():
        expected = F.cross_entropy(head(hidden), targets, ignore_index=-1, reduction="sum")
        # 8 tokens x 125 symbols (three slices, the last of 57), or 45 tokens x 22 symbols.
        got = head_cross_entropy(
            hidden, head, targets, ignore_index=-1, reduction="sum", max_chunk_logits=1000
        )
        mean = head_cross_entropy(hidden, head, targets, ignore_index=-1, max_chunk_logits=1000)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(mean, expected / 39)


def test_small_vocabularies_take_the_plain_path_exactly():
    head, hidden, targets = _case()
    expected = F.cross_entropy(head(hidden), targets)
    assert torch.equal(head_cross_entropy(hidden, head, targets), expected)


def test_batched_hidden_states_are_flattened_like_the_training_step_does():
    head, hidden, targets = _case(tokens=24)
    expected = F.cross_entropy(head(hidden), targets)
    got = head_cross_entropy(hidden.reshape(4, 6, -1), head, targets.reshape(4, 6), max_chunk_logits=120)
    torch.testing.assert_close(got, expected)


def test_model_features_feed_the_head_like_forward():
    from charrnn.config import ModelConfig
    from charrnn.model import CharRNN

    torch.manual_seed(0)
    model = CharRNN(ModelConfig(hidden_size=8, embedding_size=4, num_layers=1, vocab_size=11)).eval()
    tokens = torch.randint(11, (2, 5))
    logits, state = model(tokens)
    features, state2 = model(tokens, features_only=True)
    torch.testing.assert_close(model.head(features), logits)
    torch.testing.assert_close(state2[0], state[0])
