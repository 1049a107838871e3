"""`charrnn export`: a checkpoint as one self-contained `.onnx` file, float32 or int8, checked.

The float32 graph must give the PyTorch model's logits and state on a test sequence to within
`LOGIT_TOLERANCE`; an int8 file (onnxruntime's dynamic quantisation of the LSTM layers) must
predict a text the float32 model wrote itself within `INT8_BITS_TOLERANCE` bits per character.
Both checks run on the exact bytes before they are written, and the written file is loaded back
and checked again, so a file that is there is a file that works.
"""

from __future__ import annotations

import contextlib
import logging
import math
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from charrnn.atomic import atomic_write_bytes, check_output, remove_quietly
from charrnn.data.tokenizers import Tokenizer
from charrnn.errors import CharrnnError, UsageProblem
from charrnn.export import graph
from charrnn.export.runtime import (
    OnnxCharRNN,
    is_onnx_path,
    load_onnx_model,
    new_session,
    require_onnx,
    require_onnxruntime,
    state_feeds,
)
from charrnn.model import CharRNN, State
from charrnn.store.checkpoint import load_weights, parameter_count

# Largest difference allowed between the exported graph's logits (and state) and PyTorch's.
LOGIT_TOLERANCE = 1e-4
# Largest rise in bits per character an int8 file may show on the float32 model's own text: a
# wrong quantisation costs bits by the whole (random is log2(vocabulary)); a sound one ~0.001.
INT8_BITS_TOLERANCE = 0.05
# Tokens of the text the int8 check predicts (written by the float32 graph, seeded).
CHECK_TOKENS = 1000
CHECK_SEED = 1234
# One protobuf message holds at most 2 GB, and an export keeps every weight inside the file.
MAX_WEIGHT_BYTES = 2_000_000_000


@dataclass
class ExportReport:
    """What an export wrote and how it was checked."""

    path: str
    source: str
    weights: str  # "fp32" or "int8"
    file_bytes: int
    weights_bytes: int  # the parameters in float32: the size a float32 file is about
    max_logit_difference: float  # the float32 graph against PyTorch on the test sequence
    bits_per_char_fp32: float | None  # on the check text (int8 exports)
    bits_per_char_int8: float | None
    seconds: float

    def to_dict(self) -> dict:
        """The report as JSON-safe values."""
        return asdict(self)


def export_model(source: Path, output: Path, int8: bool = False) -> ExportReport:
    """Export the checkpoint `source` to `output` (`.onnx`), check it, and report.

    Nothing is written when a check fails. `int8` quantises the LSTM layers' weights
    (onnxruntime's `quantize_dynamic`); other model types cannot be, and are refused.
    """
    started = time.perf_counter()
    source, output = Path(source), Path(output)
    if not is_onnx_path(output):
        raise UsageProblem(
            f"the output {output} must end in .onnx: sample, eval and score know an export by its name"
        )
    if is_onnx_path(source):
        raise UsageProblem(
            f"{source} is already an export: give the .safetensors checkpoint or run directory"
        )
    require_onnx()
    require_onnxruntime()
    check_output(output, [(source, "the model being exported")])
    if output.exists() and not output.is_file():  # a FIFO or device: an export is a file to keep
        raise CharrnnError(f"cannot write {output}: it is not a regular file")
    loaded = load_weights(source)
    config = loaded.model_config
    if int8 and config.model != "lstm":
        raise UsageProblem(
            f"--int8 needs an LSTM: onnxruntime quantises LSTM layers (DynamicQuantizeLSTM) but not "
            f"{config.model.upper()} ones; export this model without --int8"
        )
    weights_bytes = 4 * parameter_count(config)
    if weights_bytes > MAX_WEIGHT_BYTES:
        raise CharrnnError(
            f"the model's weights are {weights_bytes / 1e9:.1f} GB: one .onnx file holds at most 2 GB"
        )
    tensors = {
        name: tensor.detach().float().cpu().numpy() for name, tensor in loaded.model.state_dict().items()
    }
    info = {**loaded.info, "exported_from": source.name}
    proto = graph.build_model_proto(config, tensors, loaded.tokenizer.to_dict(), info)
    fp32_bytes = proto.SerializeToString()
    difference = _logit_difference(loaded.model, new_session(fp32_bytes, output))
    if not difference <= LOGIT_TOLERANCE:
        raise CharrnnError(
            f"the exported graph's logits differ from the PyTorch model's by {difference:.2g} "
            f"(more than {LOGIT_TOLERANCE:g}): nothing written"
        )
    data, bits_fp32, bits_int8 = fp32_bytes, None, None
    if int8:
        data = _quantized(proto)
        text = _sampled_tokens(new_session(fp32_bytes, output), loaded.model, loaded.tokenizer)
        bits_fp32 = _bits_per_char(new_session(fp32_bytes, output), loaded.model, loaded.tokenizer, text)
        bits_int8 = _bits_per_char(new_session(data, output), loaded.model, loaded.tokenizer, text)
        if not bits_int8 - bits_fp32 <= INT8_BITS_TOLERANCE:
            raise CharrnnError(
                f"the int8 model predicts {bits_int8:.3f} bits/char where float32 predicts "
                f"{bits_fp32:.3f} (more than {INT8_BITS_TOLERANCE} worse): nothing written"
            )
    atomic_write_bytes(output, data)
    _check_written(output, loaded.model, int8)
    return ExportReport(
        path=str(output),
        source=str(source),
        weights="int8" if int8 else "fp32",
        file_bytes=len(data),
        weights_bytes=weights_bytes,
        max_logit_difference=difference,
        bits_per_char_fp32=bits_fp32,
        bits_per_char_int8=bits_int8,
        seconds=time.perf_counter() - started,
    )


def _test_inputs(config) -> tuple[np.ndarray, State]:
    """A seeded test sequence (2 streams of 48 tokens) and a state that is not zero, to check the
    state's way in and out too."""
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, config.vocab_size, size=(2, 48), dtype=np.int64)
    shape = (config.num_layers, 2, config.hidden_size)
    parts = [torch.from_numpy(rng.normal(0, 0.5, shape).astype(np.float32)) for _ in range(2)]
    return tokens, (parts[0], parts[1]) if config.model == "lstm" else parts[0]


def _logit_difference(model: CharRNN, session) -> float:
    """The largest difference between the graph's and PyTorch's logits and states on the test inputs."""
    tokens, state = _test_inputs(model.config)
    with torch.inference_mode():
        logits, next_state = model(torch.from_numpy(tokens), state)
    feeds = state_feeds(state)
    feeds[graph.TOKENS] = tokens
    names = [graph.LOGITS, graph.NEXT_STATE_H] + (
        [graph.NEXT_STATE_C] if model.config.model == "lstm" else []
    )
    results = session.run(names, feeds)
    expected = [logits] + (list(next_state) if isinstance(next_state, tuple) else [next_state])
    return max(float(np.abs(found - wanted.numpy()).max()) for found, wanted in zip(results, expected))


def _check_written(output: Path, model: CharRNN, int8: bool) -> None:
    """Load the written file as `sample` would and compare it with PyTorch once more (int8: loosely)."""
    try:
        exported = load_onnx_model(output).model
        assert isinstance(exported, OnnxCharRNN)
        difference = _logit_difference(model, exported.session)
    except CharrnnError:
        remove_quietly(output)
        raise
    # int8 weights move logits by ~1e-2; the bits/char check above is the measure of an int8 file.
    allowed = 1.0 if int8 else LOGIT_TOLERANCE
    if not difference <= allowed:
        remove_quietly(output)
        raise CharrnnError(
            f"{output} does not read back as written (logits differ by {difference:.2g}): removed"
        )


@contextlib.contextmanager
def _quiet_logging() -> Iterator[None]:
    """onnxruntime's quantiser logs advice through the root logger; the library prints nothing."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)


def _quantized(proto) -> bytes:
    """The proto with its LSTM weights quantised to int8 (`DynamicQuantizeLSTM`), metadata kept."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory(prefix="charrnn-export-") as folder:
        float_path, quantized_path = Path(folder) / "fp32.onnx", Path(folder) / "int8.onnx"
        onnx.save(proto, float_path)  # a path: older onnxruntime releases take no ModelProto here
        with _quiet_logging():
            # Only the LSTM layers: they hold nearly all the weights and time; the output layer stays
            # float32, so `eval` computes its loss with the file's own head as it is.
            quantize_dynamic(
                float_path, quantized_path, op_types_to_quantize=["LSTM"], weight_type=QuantType.QInt8
            )
        quantized = onnx.load(quantized_path)
    graph.set_metadata(quantized, {graph.WEIGHTS_KEY: "int8"})
    if not any(node.op_type == "DynamicQuantizeLSTM" for node in quantized.graph.node):
        raise CharrnnError("onnxruntime did not quantise the LSTM layers: nothing written")
    return quantized.SerializeToString()


def _start_token(tokenizer: Tokenizer) -> int:
    return int(tokenizer.encode("\n")[-1]) if not tokenizer.unencodable("\n") else 0


def _sampled_tokens(session, model: CharRNN, tokenizer: Tokenizer) -> np.ndarray:
    """`CHECK_TOKENS` tokens the float32 graph writes at temperature 1 (seeded), after a newline."""
    rng = np.random.default_rng(CHECK_SEED)
    config = model.config
    state = model.initial_state(1)
    feeds = state_feeds(state)
    names = [graph.LOGITS, graph.NEXT_STATE_H] + ([graph.NEXT_STATE_C] if config.model == "lstm" else [])
    tokens = [_start_token(tokenizer)]
    for _ in range(CHECK_TOKENS):
        feeds[graph.TOKENS] = np.array([[tokens[-1]]], np.int64)
        results = session.run(names, feeds)
        logits = results[0][0, 0].astype(np.float64)
        probabilities = np.exp(logits - logits.max())
        tokens.append(int(rng.choice(len(probabilities), p=probabilities / probabilities.sum())))
        feeds[graph.STATE_H] = results[1]
        if config.model == "lstm":
            feeds[graph.STATE_C] = results[2]
    return np.array(tokens, np.int64)


def _bits_per_char(session, model: CharRNN, tokenizer: Tokenizer, tokens: np.ndarray) -> float:
    """Bits per character the graph of `session` gives `tokens[1:]`, reading them from a zero state."""
    feeds = state_feeds(model.initial_state(1))
    feeds[graph.TOKENS] = tokens[None, :-1]
    logits = session.run([graph.LOGITS], feeds)[0][0].astype(np.float64)
    top = logits.max(axis=1, keepdims=True)
    log_totals = np.log(np.exp(logits - top).sum(axis=1)) + top[:, 0]
    targets = tokens[1:]
    nats = float((log_totals - logits[np.arange(len(targets)), targets]).sum())
    chars = max(1, len(tokenizer.decode(targets.tolist())))
    return nats / math.log(2) / chars
