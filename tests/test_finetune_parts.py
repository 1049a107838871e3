"""The pieces of fine-tuning that need no training run: a grown vocabulary and grown weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from charrnn.config import ModelConfig
from charrnn.data.tokenizers import ByteTokenizer, CharTokenizer, tokenizer_from_dict
from charrnn.errors import TokenizerError, UsageProblem
from charrnn.model import CharRNN
from charrnn.training import finetune


def test_a_grown_char_vocabulary_keeps_every_old_id_and_appends_the_new_characters():
    parent = CharTokenizer.fit("hello world")
    grown, added = finetune.extend_tokenizer(parent, "héllo wörld!")
    assert added == ["!", "é", "ö"]
    assert grown.chars[: parent.vocab_size] == parent.chars
    assert grown.vocab_size == parent.vocab_size + 3
    # Old text encodes to the same ids; new characters get the new ids at the end.
    assert grown.encode("hello world").tolist() == parent.encode("hello world").tolist()
    assert grown.encode("é").tolist() == [parent.vocab_size + 1]
    assert grown.decode(grown.encode("héllo wörld!")) == "héllo wörld!"


def test_a_grown_vocabulary_survives_the_checkpoint_round_trip_in_id_order():
    grown, _ = finetune.extend_tokenizer(CharTokenizer.fit("abc"), "abc!")
    again = tokenizer_from_dict(grown.to_dict())
    assert again.chars == ["a", "b", "c", "!"]
    assert again.encode("!a").tolist() == [3, 0]


def test_a_vocabulary_listing_a_character_twice_is_refused():
    with pytest.raises(TokenizerError):
        tokenizer_from_dict({"kind": "char", "chars": "abca"})


def test_byte_vocabularies_are_kept_as_they_are():
    tokenizer = ByteTokenizer()
    kept, added = finetune.extend_tokenizer(tokenizer, "anything ✓")
    assert kept is tokenizer and added == []


def test_a_vocabulary_pushed_past_the_id_limit_is_refused(monkeypatch):
    monkeypatch.setattr(finetune, "MAX_VOCAB_SIZE", 4)
    with pytest.raises(TokenizerError, match="more than the 4 ids"):
        finetune.extend_tokenizer(CharTokenizer.fit("abc"), "abcde")


def test_grown_weights_keep_the_parent_and_start_new_rows_sensibly():
    torch.manual_seed(0)
    parent = CharRNN(ModelConfig(hidden_size=8, embedding_size=4, num_layers=1, vocab_size=5))
    counts = np.array([10, 10, 10, 10, 10, 50, 0])  # 2 new tokens: one frequent, one absent
    child = finetune.grown_model(parent, 7, counts)
    old, new = parent.state_dict(), child.state_dict()
    for name in ("embedding.weight", "head.weight", "head.bias"):
        assert torch.equal(new[name][:5], old[name])
    assert torch.allclose(new["embedding.weight"][5], old["embedding.weight"].mean(0))
    assert torch.equal(new["head.weight"][5:], torch.zeros(2, 8))
    for name, tensor in old.items():
        if name.startswith("recurrent."):
            assert torch.equal(new[name], tensor)
    # The outputs on old tokens stay what they were, up to the new tokens' share of the softmax.
    tokens = torch.tensor([[0, 1, 2, 3, 4]])
    with torch.no_grad():
        old_logits, _ = parent(tokens)
        new_logits, _ = child(tokens)
    assert torch.allclose(new_logits[..., :5], old_logits, atol=1e-6)
    # With the bias alone, the frequent new token gets about its corpus frequency; the absent one little.
    biases = new["head.bias"].double()
    probability = torch.softmax(biases, 0)
    assert probability[5] == pytest.approx(51 / (100 + 7), rel=0.35)
    assert probability[6] < probability[5] / 10


def test_shape_and_tokeniser_options_that_contradict_the_model_are_refused():
    config = ModelConfig(hidden_size=64, vocab_size=10)
    tokenizer = CharTokenizer.fit("abcdefghij")
    finetune.check_options_agree(
        config, tokenizer, {"hidden_size": 64}, {"tokenizer": "char"}, given={"hidden_size", "tokenizer"}
    )
    with pytest.raises(UsageProblem, match="--hidden-size is 32 but the model has 64"):
        finetune.check_options_agree(config, tokenizer, {"hidden_size": 32}, {}, given={"hidden_size"})
    with pytest.raises(UsageProblem, match="--tokenizer is 'byte' but the model uses 'char'"):
        finetune.check_options_agree(config, tokenizer, {}, {"tokenizer": "byte"}, given={"tokenizer"})
    # Options left at their defaults never count as a contradiction.
    finetune.check_options_agree(config, tokenizer, {"hidden_size": 384}, {"tokenizer": "byte"}, given=set())


def test_describe_added_names_the_characters():
    assert finetune.describe_added(["é", "ö"]) == "2 new characters: 'é' (U+00E9), 'ö' (U+00F6)"
    assert finetune.describe_added(list("abcdefghijklmnopqrstuvwxyz")).endswith("and 6 more")
