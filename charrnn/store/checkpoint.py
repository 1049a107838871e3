"""Checkpoint files: safetensors weights for sampling, a `.pt` training state for resuming.

The weights file is self-contained: the model config, the tokeniser and a
format version live in its safetensors metadata, so sampling reads that one
file and never unpickles anything. The training state is loaded with
`torch.load(weights_only=True)`, which refuses arbitrary Python objects.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import struct
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes

from charrnn.atomic import atomic_write, atomic_write_bytes
from charrnn.config import ModelConfig
from charrnn.data.tokenizers import Tokenizer, tokenizer_from_dict
from charrnn.errors import CharrnnError, CheckpointError
from charrnn.model import CharRNN
from charrnn.store.run_state import SavedState, parse_saved_state, required_fields

FORMAT_NAME = "charrnn"
FORMAT_VERSION = 1
# safetensors itself refuses headers over 100 MB; a sentencepiece model in the
# metadata is a few MB at most, so anything larger is a lie or damage.
MAX_HEADER_BYTES = 100_000_000


@dataclass
class LoadedModel:
    """A model ready for sampling or evaluation, with what it needs to read and write text."""

    model: CharRNN
    tokenizer: Tokenizer
    model_config: ModelConfig
    info: dict[str, Any]  # training summary: step, val loss, bits per char, ...
    path: Path


def save_weights(path: Path, model: CharRNN, tokenizer: Tokenizer, info: dict[str, Any]) -> None:
    """Atomically write the model's weights (fp32, CPU) with config, tokeniser and `info` as metadata."""
    tensors = {
        name: tensor.detach().to("cpu", torch.float32).contiguous()
        for name, tensor in model.state_dict().items()
    }
    metadata = {
        "format": FORMAT_NAME,
        "format_version": str(FORMAT_VERSION),
        "model_config": json.dumps(model.config.to_dict()),
        "tokenizer": json.dumps(tokenizer.to_dict()),
        "info": json.dumps(info),
    }
    atomic_write_bytes(Path(path), save_safetensors_bytes(tensors, metadata=metadata))


@contextlib.contextmanager
def reading(path: Path, what: str) -> Iterator[None]:
    """Turn an OS error while reading a checkpoint file into its one `CheckpointError` line."""
    try:
        yield
    except FileNotFoundError:
        raise CheckpointError(f"{what} not found: {path}") from None
    except IsADirectoryError:
        raise CheckpointError(f"{path} is a directory, not a {what}") from None
    except OSError as error:
        raise CheckpointError(f"cannot read {path}: {error.strerror or error}") from None


def _read_file(path: Path, what: str) -> bytes:
    with reading(path, what):
        return path.read_bytes()


def read_metadata(data: bytes, path: Path) -> dict[str, str]:
    """The charrnn metadata of a safetensors file's bytes, after checking the header is sane."""
    if Path(path).suffix.lower() == ".onnx":  # sample, eval and score read one; the others need the weights
        raise CheckpointError(
            f"{path} is an ONNX export: this needs the .safetensors checkpoint it was exported from"
        )
    if len(data) < 8:
        raise CheckpointError(f"{path} is corrupted (too short to be a checkpoint)")
    (header_len,) = struct.unpack("<Q", data[:8])
    if header_len > MAX_HEADER_BYTES or header_len > len(data) - 8:
        raise CheckpointError(f"{path} is corrupted or not a charrnn checkpoint (bad header length)")
    try:
        header = json.loads(data[8 : 8 + header_len])
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise CheckpointError(
            f"{path} is corrupted or not a charrnn checkpoint (unreadable header)"
        ) from None
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT_NAME:
        raise CheckpointError(f"{path} is not a charrnn checkpoint")
    try:
        version = int(metadata.get("format_version", ""))
    except ValueError:
        raise CheckpointError(f"{path} is corrupted (bad format version)") from None
    if version < 1:
        raise CheckpointError(f"{path} is corrupted (bad format version {version})")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} was written by a newer charrnn (format {version}; this one reads "
            f"up to {FORMAT_VERSION}): upgrade charrnn to use it"
        )
    return metadata


def parse_metadata(metadata: dict[str, str], path: Path) -> tuple[ModelConfig, Tokenizer, dict[str, Any]]:
    """The model config, tokeniser and training summary of a weights file's metadata, checked."""
    try:
        model_config = ModelConfig.from_dict(json.loads(metadata["model_config"])).validate()
        tokenizer = tokenizer_from_dict(json.loads(metadata["tokenizer"]))
        info = json.loads(metadata.get("info", "{}"))
        if not isinstance(info, dict):
            raise ValueError("info is not an object")
    except (KeyError, TypeError, ValueError, CharrnnError) as error:
        raise CheckpointError(f"{path} is corrupted (bad metadata: {error})") from None
    if tokenizer.vocab_size != model_config.vocab_size:
        raise CheckpointError(f"{path} is corrupted (tokeniser and model disagree on vocabulary size)")
    return model_config, tokenizer, info


def load_weights(path: Path, device: str | torch.device = "cpu") -> LoadedModel:
    """Load a weights file written by `save_weights` onto `device`, checking everything on the way."""
    path = Path(path)
    data = _read_file(path, "checkpoint")
    model_config, tokenizer, info = parse_metadata(read_metadata(data, path), path)
    try:
        tensors = load_safetensors_bytes(data)
    except Exception as error:  # safetensors raises its own error types for every kind of damage
        raise CheckpointError(f"{path} is corrupted ({str(error).splitlines()[0][:200]})") from None
    _check_tensors(tensors, expected_tensor_shapes(model_config), path)
    model = CharRNN(model_config)  # allocated only now: the metadata cannot make us build a giant
    model.load_state_dict({name: tensor.float() for name, tensor in tensors.items()})
    model.to(device).eval()
    return LoadedModel(model=model, tokenizer=tokenizer, model_config=model_config, info=info, path=path)


_GATES = {"lstm": 4, "gru": 3, "rnn": 1}
# Training writes float32; a file stored in 16-bit floats (the bundled model, half the size)
# is read too and computed in float32.
STORED_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def parameter_count(model_config: ModelConfig) -> int:
    """Parameters of a model with this config (vocab_size set), without building it."""
    return sum(math.prod(shape) for shape in expected_tensor_shapes(model_config).values())


def expected_tensor_shapes(model_config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """The name and shape of every tensor of a `CharRNN` with this config, computed without building it.

    Building the model first would let a lying header make us allocate gigabytes; a test
    checks these shapes against a real model's state_dict.
    """
    vocab, embedding = model_config.vocab_size, model_config.embedding_size
    hidden, gates = model_config.hidden_size, _GATES[model_config.model] * model_config.hidden_size
    shapes: dict[str, tuple[int, ...]] = {"embedding.weight": (vocab, embedding)}
    for layer in range(model_config.num_layers):
        shapes[f"recurrent.weight_ih_l{layer}"] = (gates, embedding if layer == 0 else hidden)
        shapes[f"recurrent.weight_hh_l{layer}"] = (gates, hidden)
        shapes[f"recurrent.bias_ih_l{layer}"] = (gates,)
        shapes[f"recurrent.bias_hh_l{layer}"] = (gates,)
    shapes["head.weight"] = (vocab, hidden)
    shapes["head.bias"] = (vocab,)
    return shapes


def _check_tensors(
    tensors: dict[str, torch.Tensor], expected: dict[str, tuple[int, ...]], path: Path
) -> None:
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        problem = f"missing tensor {missing[0]}" if missing else f"unexpected tensor {unexpected[0]}"
        raise CheckpointError(f"{path} is corrupted ({problem})")
    # One float type for the whole file: float32, or a 16-bit type the file was stored in.
    stored = tensors["embedding.weight"].dtype
    stored = stored if stored in STORED_FLOAT_DTYPES else torch.float32
    for name, tensor in tensors.items():
        if tensor.dtype != stored or tuple(tensor.shape) != expected[name]:
            raise CheckpointError(
                f"{path} is corrupted (tensor {name} is {tensor.dtype} {tuple(tensor.shape)}, "
                f"expected {stored} {expected[name]})"
            )
        if not torch.isfinite(tensor).all():
            raise CheckpointError(f"{path} is corrupted (tensor {name} has non-finite values)")


def save_training_state(path: Path, state: dict[str, Any]) -> None:
    """Atomically write the resume state (tensors, numbers, strings, dicts and lists only), streamed
    to the file: with a big vocabulary, a copy of it in memory would set the run's peak."""
    atomic_write(Path(path), lambda out: torch.save(state, out))


def load_training_state(path: Path) -> dict[str, Any]:
    """Load a resume state with `weights_only=True`: no code in it can run."""
    path = Path(path)
    data = _read_file(path, "training state")
    if not data:
        raise CheckpointError(f"{path} is corrupted (empty file)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns about odd pickles; the error below says it all
            state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception:
        # Whatever went wrong (damage, a foreign pickle, code that weights_only refused to run),
        # never repeat torch's advice to pass weights_only=False: that would run the file's code.
        raise CheckpointError(f"{path} is corrupted or not a charrnn training state") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT_NAME:
        raise CheckpointError(f"{path} is not a charrnn training state")
    version = state.get("format_version")
    if not isinstance(version, int) or version < 1:
        raise CheckpointError(f"{path} is corrupted (bad format version)")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} was written by a newer charrnn (format {version}; this one reads up to "
            f"{FORMAT_VERSION}): upgrade charrnn to resume it"
        )
    for name, types in required_fields().items():  # the run-state record says what must be there
        if not isinstance(state.get(name), types) or isinstance(state.get(name), bool):
            raise CheckpointError(f"{path} is corrupted (field {name!r} is missing or has the wrong type)")
    return state


def read_saved_state(path: Path) -> SavedState:
    """Load a run's state.pt (`torch.load(weights_only=True)`, fields checked) and parse it once."""
    return parse_saved_state(load_training_state(path), Path(path))
