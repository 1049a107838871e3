"""Starting a run from a trained model (`charrnn train NEW_CORPUS --init-from MODEL`).

The new run takes the parent's shape and tokeniser. A char tokeniser grows by the
characters of the new corpus that the parent never saw; they are appended, so every
old character keeps its id and every trained row of the embedding and output layers
keeps its meaning (remapping ids is what turned a torch-rnn user's fine-tuned output
into "a substitution cipher"). The new rows start where they do the least harm:

- embedding: the mean of the trained rows, so the first layer sees an ordinary input;
- output weights: zero, so the new character's logit does not depend on the state yet;
- output bias: the log of its frequency in the new corpus, shifted by the log-sum-exp
  of the trained biases, so before any step it is predicted about as often as it occurs.

byte and sentencepiece tokenisers encode any text: their vocabulary is kept as it is.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from charrnn.config import (
    FINE_TUNE_LR,
    FINE_TUNE_WARMUP_STEPS,
    MAX_VOCAB_SIZE,
    SENTENCEPIECE_KINDS,
    ModelConfig,
    TrainConfig,
)
from charrnn.data.tokenizers import CharTokenizer, Tokenizer, describe_char
from charrnn.errors import TokenizerError, UsageProblem
from charrnn.model import CharRNN

# What --init-from takes from the model; every other option (dropout included) is the user's.
SHAPE_FIELDS = ("model", "num_layers", "hidden_size", "embedding_size")


@dataclass
class Parent:
    """The model a run starts from, and how it is recorded in the new run."""

    model: CharRNN
    tokenizer: Tokenizer
    model_config: ModelConfig
    name: str  # what the user named (a run directory, a file, or the bundled model)
    weights_sha256: str  # of the weights file, so the record names exactly which weights
    path: Path  # the weights file it was read from

    def record(self) -> dict[str, Any]:
        """What the new run stores about its parent (metadata, progress header, `charrnn info`)."""
        return {"name": self.name, "weights_sha256": self.weights_sha256}


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, read a block at a time."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_parent(given: str) -> Parent:
    """The model named by --init-from (resolved as every MODEL argument is), loaded on the CPU."""
    from charrnn.store.checkpoint import load_weights
    from charrnn.store.run_dir import resolve_weights

    path = resolve_weights(given)
    loaded = load_weights(path)
    return Parent(
        model=loaded.model,
        tokenizer=loaded.tokenizer,
        model_config=loaded.model_config,
        name=given,
        weights_sha256=file_sha256(path),
        path=path,
    )


def check_options_agree(
    parent_config: ModelConfig,
    parent_tokenizer: Tokenizer,
    model_options: dict[str, Any],
    train_options: dict[str, Any],
    given: set[str],
) -> None:
    """Refuse, with one line naming the difference, a shape or tokeniser option that contradicts MODEL."""
    for name, value in model_options.items():
        if name in SHAPE_FIELDS and name in given and getattr(parent_config, name) != value:
            raise UsageProblem(
                f"--init-from: --{name.replace('_', '-')} is {value!r} but the model has "
                f"{getattr(parent_config, name)!r} (the shape comes from the model; leave it out)"
            )
    if "tokenizer" in given and train_options.get("tokenizer") != parent_tokenizer.kind:
        raise UsageProblem(
            f"--init-from: --tokenizer is {train_options.get('tokenizer')!r} but the model uses "
            f"{parent_tokenizer.kind!r} (the tokeniser comes from the model; leave it out)"
        )
    parent_vocab = parent_config.vocab_size
    if "vocab_size" in given and train_options.get("vocab_size") not in (None, parent_vocab):
        raise UsageProblem(
            f"--init-from: --vocab-size is {train_options.get('vocab_size')} but the model has "
            f"{parent_vocab} pieces (the vocabulary comes from the model; leave it out)"
        )


def fine_tune_configs(
    parent: Parent, model_config: ModelConfig, train_config: TrainConfig, given: set[str]
) -> tuple[ModelConfig, TrainConfig]:
    """The new run's settings: the parent's shape and tokeniser, the user's training options,
    and the gentler fine-tuning learning rate and warm-up where the user set none."""
    shape = {name: getattr(parent.model_config, name) for name in SHAPE_FIELDS}
    tokenizer = parent.tokenizer
    train_changes: dict[str, Any] = {
        "tokenizer": tokenizer.kind,
        "vocab_size": tokenizer.vocab_size if tokenizer.kind in SENTENCEPIECE_KINDS else None,
    }
    if "lr" not in given:
        train_changes["lr"] = FINE_TUNE_LR
    if "warmup_steps" not in given:
        train_changes["warmup_steps"] = FINE_TUNE_WARMUP_STEPS
    return (replace(model_config, **shape).validate(), replace(train_config, **train_changes).validate())


def extend_tokenizer(tokenizer: Tokenizer, corpus_chars: str) -> tuple[Tokenizer, list[str]]:
    """The parent's tokeniser grown by the corpus characters it cannot encode, and those characters.

    Only a char tokeniser grows; the others encode any text and come back unchanged.
    """
    if not isinstance(tokenizer, CharTokenizer):
        return tokenizer, []
    added = tokenizer.unencodable(corpus_chars)
    if not added:
        return tokenizer, []
    if tokenizer.vocab_size + len(added) > MAX_VOCAB_SIZE:
        raise TokenizerError(
            f"the corpus adds {len(added)} characters to the model's {tokenizer.vocab_size}: "
            f"{tokenizer.vocab_size + len(added)} is more than the {MAX_VOCAB_SIZE} ids a "
            "vocabulary may have"
        )
    return tokenizer.extended_by(added), added


def describe_added(added: list[str], limit: int = 20) -> str:
    """`3 new characters: 'é' (U+00E9), ...` for the note on stderr."""
    shown = ", ".join(describe_char(c) for c in added[:limit])
    more = f" and {len(added) - limit} more" if len(added) > limit else ""
    return f"{len(added)} new character{'s' if len(added) != 1 else ''}: {shown}{more}"


def grown_model(parent: CharRNN, vocab_size: int, token_counts: np.ndarray) -> CharRNN:
    """A copy of `parent` with `vocab_size` rows in its embedding and output layers.

    Rows past the parent's vocabulary are new tokens, initialised as the module
    docstring says; `token_counts` are the new corpus's training-token counts.
    """
    old_vocab = parent.config.vocab_size
    config = replace(parent.config, vocab_size=vocab_size)
    child = CharRNN(config)
    weights = {name: tensor.detach().clone() for name, tensor in parent.state_dict().items()}
    added = vocab_size - old_vocab
    if added > 0:
        embedding = weights["embedding.weight"]
        head_weight, head_bias = weights["head.weight"], weights["head.bias"]
        counts = torch.as_tensor(np.asarray(token_counts[old_vocab:vocab_size], dtype=np.float64))
        total = float(np.asarray(token_counts[:vocab_size], dtype=np.float64).sum()) + vocab_size
        new_bias = (torch.log((counts + 1.0) / total) + torch.logsumexp(head_bias.double(), 0)).float()
        weights["embedding.weight"] = torch.cat(
            [embedding, embedding.mean(0, keepdim=True).expand(added, -1)]
        )
        weights["head.weight"] = torch.cat([head_weight, head_weight.new_zeros(added, head_weight.shape[1])])
        weights["head.bias"] = torch.cat([head_bias, new_bias])
    child.load_state_dict(weights)
    return child
