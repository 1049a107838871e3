"""Running an exported `.onnx` model with onnxruntime, behind the interfaces the rest of charrnn reads.

`load_model_file` is the one loader of a resolved MODEL file: a `.safetensors` checkpoint goes to
`store.checkpoint.load_weights`, an `.onnx` export to `load_onnx_model`. An export loads as an
`OnnxCharRNN`, which `eval`, `score` and the prime reading of `sample` use as they use a `CharRNN`
(its `features`, `head` and `forward`), and sampling steps it with `OnnxStepper`, which has the
interface of the NumPy `RecurrentStepper`; the token choice on the logits is the same code, so a
float32 export writes the same text for the same seed.

onnx and onnxruntime (the `onnx` extra) are imported only when an `.onnx` file is loaded.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from charrnn.config import ModelConfig
from charrnn.errors import CharrnnError, CheckpointError
from charrnn.export import graph
from charrnn.model import CharRNN, State
from charrnn.store.checkpoint import LoadedModel, load_weights, parse_metadata, reading

ONNX_SUFFIX = ".onnx"
INSTALL_HINT = 'pip install "charrnn[onnx]"'


def is_onnx_path(path: str | Path) -> bool:
    """Whether MODEL names an exported model (by its `.onnx` suffix, as users name such files)."""
    return Path(path).suffix.lower() == ONNX_SUFFIX


def require_onnxruntime():
    """The onnxruntime module, or one `CharrnnError` saying how to install it."""
    try:
        import onnxruntime
    except ImportError:
        raise CharrnnError(f"running an .onnx model needs onnxruntime: {INSTALL_HINT}") from None
    return onnxruntime


def require_onnx():
    """The onnx module, or one `CharrnnError` saying how to install it."""
    try:
        import onnx
    except ImportError:
        raise CharrnnError(
            f"exporting and reading .onnx files needs the onnx package: {INSTALL_HINT}"
        ) from None
    return onnx


def load_model_file(path: Path, device: str | torch.device = "cpu") -> LoadedModel:
    """Load a resolved MODEL file: an exported `.onnx` (always on the CPU) or a `.safetensors` checkpoint."""
    if is_onnx_path(path):
        return load_onnx_model(Path(path))
    return load_weights(Path(path), device)


def read_export(data: bytes, path: Path) -> tuple[Any, dict[str, str]]:
    """The `onnx.ModelProto` of an export's bytes and its charrnn metadata, or one `CheckpointError`."""
    onnx = require_onnx()
    try:
        proto = onnx.load_model_from_string(data)
    except Exception:  # protobuf's DecodeError, or onnx's own errors: every one means a bad file
        raise CheckpointError(f"{path} is corrupted or not an ONNX file") from None
    metadata = graph.metadata_of(proto)
    if metadata.get(graph.FORMAT_KEY) != graph.FORMAT_NAME:
        raise CheckpointError(
            f"{path} is not a charrnn export (no charrnn metadata in it; a truncated file loses it "
            "too): export a model with `charrnn export MODEL -o FILE.onnx`"
        )
    try:
        version = int(metadata.get(graph.FORMAT_VERSION_KEY, ""))
    except ValueError:
        raise CheckpointError(f"{path} is corrupted (bad format version)") from None
    if version < 1:
        raise CheckpointError(f"{path} is corrupted (bad format version {version})")
    if version > graph.FORMAT_VERSION:
        raise CheckpointError(
            f"{path} was written by a newer charrnn (export format {version}; this one reads up to "
            f"{graph.FORMAT_VERSION}): upgrade charrnn to use it"
        )
    for tensor in proto.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            raise CheckpointError(f"{path} keeps weights in another file; a charrnn export holds them all")
    return proto, metadata


def _initializer(proto, name: str, shape: tuple[int, ...], path: Path) -> np.ndarray:
    from onnx import numpy_helper

    for tensor in proto.graph.initializer:
        if tensor.name == name:
            array = numpy_helper.to_array(tensor)
            if array.shape != shape or array.dtype != np.float32 or not np.isfinite(array).all():
                raise CheckpointError(f"{path} is corrupted (tensor {name} is {array.dtype} {array.shape})")
            return array
    raise CheckpointError(f"{path} is corrupted (no tensor {name})")


def _check_shapes(proto, model_config: ModelConfig, path: Path) -> None:
    """The graph's declared shapes are those of the model its metadata describes (else a run would
    fail deep inside onnxruntime, long after loading)."""
    layers, hidden, vocab = model_config.num_layers, model_config.hidden_size, model_config.vocab_size
    expected = {
        graph.TOKENS: ["batch", "length"],
        graph.STATE_H: [layers, "batch", hidden],
        graph.STATE_C: [layers, "batch", hidden],
        graph.LOGITS: ["batch", "length", vocab],
        graph.FEATURES: ["batch", "length", hidden],
        graph.NEXT_STATE_H: [layers, "batch", hidden],
        graph.NEXT_STATE_C: [layers, "batch", hidden],
    }
    for value in list(proto.graph.input) + list(proto.graph.output):
        dims = [dim.dim_param or dim.dim_value for dim in value.type.tensor_type.shape.dim]
        if dims != expected[value.name]:
            raise CheckpointError(
                f"{path} is corrupted ({value.name} is {dims} in the graph, "
                f"{expected[value.name]} by its metadata)"
            )


def _expected_io(model_config: ModelConfig) -> tuple[list[str], list[str]]:
    lstm = model_config.model == "lstm"
    inputs = [graph.TOKENS, graph.STATE_H] + ([graph.STATE_C] if lstm else [])
    outputs = [graph.LOGITS, graph.FEATURES, graph.NEXT_STATE_H] + ([graph.NEXT_STATE_C] if lstm else [])
    return inputs, outputs


def new_session(data: bytes, path: Path, threads: int | None = None):
    """An onnxruntime CPU session over an export's bytes, on `threads` threads (default: torch's count)."""
    onnxruntime = require_onnxruntime()
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: warnings would go to stderr unasked
    try:
        return onnxruntime.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime raises its own error types for every kind of damage
        detail = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
        raise CheckpointError(f"{path} cannot be run by onnxruntime ({detail})") from None


def load_onnx_model(path: Path) -> LoadedModel:
    """Load an export written by `charrnn export`: metadata, graph and head checked, a session ready."""
    path = Path(path)
    with reading(path, "model"):
        data = path.read_bytes()
    proto, metadata = read_export(data, path)
    model_config, tokenizer, info = parse_metadata(
        {
            "model_config": metadata.get(graph.MODEL_CONFIG_KEY, ""),
            "tokenizer": metadata.get(graph.TOKENIZER_KEY, ""),
            "info": metadata.get(graph.INFO_KEY, "{}"),
        },
        path,
    )
    inputs, outputs = _expected_io(model_config)
    found_inputs = [value.name for value in proto.graph.input]
    found_outputs = [value.name for value in proto.graph.output]
    if found_inputs != inputs or found_outputs != outputs:
        raise CheckpointError(
            f"{path} is corrupted (its graph takes {found_inputs} and gives {found_outputs}, "
            f"not {inputs} and {outputs})"
        )
    hidden, vocab = model_config.hidden_size, model_config.vocab_size
    _check_shapes(proto, model_config, path)
    head_weight = _initializer(proto, graph.HEAD_WEIGHT, (hidden, vocab), path)
    head_bias = _initializer(proto, graph.HEAD_BIAS, (vocab,), path)
    weights = metadata.get(graph.WEIGHTS_KEY, "fp32")
    del proto  # the session keeps its own copy of the weights
    session = new_session(data, path)
    model = OnnxCharRNN(session, model_config, head_weight, head_bias, weights)
    info = {**info, "onnx_weights": weights}
    return LoadedModel(model=model, tokenizer=tokenizer, model_config=model_config, info=info, path=path)


class OnnxCharRNN(CharRNN):
    """An exported model whose embedding and recurrent layers run on onnxruntime.

    To every reader of a `CharRNN` (evaluation, scoring, `model.read_tokens`) it is one: `config`,
    `features`, `head`, `forward`, `initial_state`. The output layer is the file's own float32 head
    (an int8 export quantises the recurrent layers only), held as an `nn.Linear` so evaluation keeps
    its bounded-memory cross-entropy; `OnnxStepper` runs the whole step, head included, in the graph.
    It has no `embedding` or `recurrent` module: `explain` and fine-tuning need the PyTorch weights.
    """

    def __init__(
        self, session, model_config: ModelConfig, head_weight: np.ndarray, head_bias: np.ndarray, weights: str
    ) -> None:
        nn.Module.__init__(self)  # not CharRNN's: its layers would be allocated and never used
        self.config = model_config
        self.session = session
        self.weights = weights  # "fp32" or "int8"
        self.head = nn.Linear(model_config.hidden_size, model_config.vocab_size)
        with torch.no_grad():
            self.head.weight.copy_(torch.from_numpy(head_weight.T.copy()))
            self.head.bias.copy_(torch.from_numpy(head_bias.copy()))
        self.input_names, self.output_names = _expected_io(model_config)

    def features(self, tokens: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        """The top layer's outputs (batch, time, hidden) and the new state, computed by onnxruntime."""
        if state is None:
            state = self.initial_state(tokens.shape[0])
        feeds = state_feeds(state)
        feeds[graph.TOKENS] = np.ascontiguousarray(tokens.detach().cpu().numpy(), dtype=np.int64)
        wanted = [graph.FEATURES] + self.output_names[2:]
        results = run_session(self.session, wanted, feeds)
        features = torch.from_numpy(results[0])
        if self.config.model == "lstm":
            return features, (torch.from_numpy(results[1]), torch.from_numpy(results[2]))
        return features, torch.from_numpy(results[1])


def run_session(session, names: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """`session.run`, with a failure inside onnxruntime (a damaged or hand-edited graph that loaded)
    as one `CheckpointError`."""
    try:
        return session.run(names, feeds)
    except Exception as error:  # onnxruntime's own error types
        detail = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
        raise CheckpointError(f"the .onnx model failed in onnxruntime ({detail})") from None


def state_feeds(state: State) -> dict[str, np.ndarray]:
    """The state inputs of the graph for a state of the fused layers."""
    if isinstance(state, tuple):
        return {graph.STATE_H: _float_array(state[0]), graph.STATE_C: _float_array(state[1])}
    return {graph.STATE_H: _float_array(state)}


def _float_array(tensor: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(tensor.detach().float().cpu().numpy())


class OnnxStepper:
    """One time step of an exported model for a batch of streams, on onnxruntime.

    The interface of `generate.stepper.RecurrentStepper` (`load_state`, `state`, `keep_rows`,
    `ban_tokens`, `step`), so the sampler runs either the same way.
    """

    def __init__(self, model: OnnxCharRNN) -> None:
        self.session = model.session
        self.lstm = model.config.model == "lstm"
        self.output_names = [graph.LOGITS] + model.output_names[2:]
        self.banned: list[int] = []
        self.state_h = np.zeros((model.config.num_layers, 0, model.config.hidden_size), np.float32)
        self.state_c = self.state_h

    def load_state(self, state: State) -> None:
        """Start from a state of the fused layers: (num_layers, batch, hidden) tensor(s)."""
        if isinstance(state, tuple):
            self.state_h, self.state_c = _float_array(state[0]), _float_array(state[1])
        else:
            self.state_h = _float_array(state)

    def state(self) -> State:
        """The current state in the fused layers' layout (a copy: later steps do not change it)."""
        hidden = torch.from_numpy(self.state_h.copy())
        if self.lstm:
            return hidden, torch.from_numpy(self.state_c.copy())
        return hidden

    def keep_rows(self, rows: Sequence[int]) -> None:
        """Go on with only these streams (in this order): finished samples leave the batch."""
        index = np.asarray(list(rows), dtype=np.int64)
        self.state_h = np.ascontiguousarray(self.state_h[:, index])
        if self.lstm:
            self.state_c = np.ascontiguousarray(self.state_c[:, index])

    def ban_tokens(self, token_ids: Sequence[int]) -> None:
        """Never predict these ids: their logits become -inf (probability 0)."""
        self.banned = list(token_ids)

    def step(self, tokens: Sequence[int] | np.ndarray) -> np.ndarray:
        """Read one token per stream (shape (batch,)); return the next-token logits (batch, vocab)."""
        feeds: dict[str, np.ndarray] = {
            graph.TOKENS: np.asarray(tokens, dtype=np.int64).reshape(-1, 1),
            graph.STATE_H: self.state_h,
        }
        if self.lstm:
            feeds[graph.STATE_C] = self.state_c
        results = run_session(self.session, self.output_names, feeds)
        if self.lstm:
            self.state_h, self.state_c = results[1], results[2]
        else:
            self.state_h = results[1]
        logits = results[0][:, 0, :]
        if self.banned:
            logits[:, self.banned] = float("-inf")
        return logits
