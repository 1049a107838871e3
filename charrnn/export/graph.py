"""The ONNX graph of a trained model, written with `onnx.helper` straight from its weights.

Why not `torch.onnx.export`: torch 2.13 exports with the dynamo exporter by default, which needs
onnxscript (tried: without it the export stops with "No module named 'onnxscript'"), and how it
writes `nn.LSTM` is the exporter's choice, release by release; what
`onnxruntime.quantization.quantize_dynamic` needs to make `DynamicQuantizeLSTM` is one plain ONNX
`LSTM` node per layer whose W, R and B are initialisers. The step graph is a dozen nodes, so
writing it here makes that certain, takes no time (export is a copy of the weights) and needs no
exporter or onnxscript at all; `exporter.py` proves, at every export, that the graph computes what
the PyTorch model computes.

The graph (dynamic batch B and length T):

    tokens (B, T) int64, state_h (L, B, H) [, state_c (L, B, H) for an LSTM]
      -> Gather(embedding) -> Transpose to (T, B, E)
      -> per layer l: LSTM / GRU / RNN (initial state = row l of the state) -> Squeeze
      -> Transpose to (B, T, H) = features -> MatMul + Add = logits (B, T, V)
    outputs: logits, features, next_state_h [, next_state_c]

Only this module imports `onnx` for building; it is imported when an export runs.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from charrnn.config import ModelConfig

# ONNX names of the graph's inputs and outputs: the contract with every runtime (and the example).
TOKENS = "tokens"
STATE_H = "state_h"
STATE_C = "state_c"
LOGITS = "logits"
FEATURES = "features"
NEXT_STATE_H = "next_state_h"
NEXT_STATE_C = "next_state_c"
HEAD_WEIGHT = "head_weight"  # (H, V): features @ head_weight + head_bias
HEAD_BIAS = "head_bias"

# The metadata_props keys: the file alone is enough to sample (tokeniser, model shape).
FORMAT_KEY = "charrnn.format"
FORMAT_NAME = "charrnn-onnx"
FORMAT_VERSION_KEY = "charrnn.format_version"
FORMAT_VERSION = 1
MODEL_CONFIG_KEY = "charrnn.model_config"
TOKENIZER_KEY = "charrnn.tokenizer"
INFO_KEY = "charrnn.info"
WEIGHTS_KEY = "charrnn.weights"  # "fp32" or "int8"

# Opset 17: LSTM, GRU and RNN have had their present form since opset 14; 17 is read by every
# onnxruntime of the last years (and by onnxruntime-web), so the file runs in the most places.
OPSET = 17


def _reorder_gates(array: np.ndarray, kind: str) -> np.ndarray:
    """PyTorch's gate blocks (rows) in ONNX's order.

    LSTM: PyTorch stacks (i, f, g, o), ONNX (i, o, f, c) with c = g. GRU: PyTorch (r, z, n),
    ONNX (z, r, h) with h = n. A tanh RNN has one block.
    """
    if kind == "lstm":
        i, f, g, o = np.split(array, 4, axis=0)
        return np.concatenate([i, o, f, g], axis=0)
    if kind == "gru":
        r, z, n = np.split(array, 3, axis=0)
        return np.concatenate([z, r, n], axis=0)
    return array


def build_model_proto(
    model_config: ModelConfig,
    tensors: dict[str, np.ndarray],
    tokenizer_dict: dict[str, Any],
    info: dict[str, Any],
):
    """The `onnx.ModelProto` of a `CharRNN` with these float32 weights (its state_dict as NumPy).

    Every weight is an initialiser inside the proto (no external data); the tokeniser, the model
    config and `info` are in its `metadata_props`.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    kind = model_config.model
    layers, hidden = model_config.num_layers, model_config.hidden_size
    vocab = model_config.vocab_size
    op_type = {"lstm": "LSTM", "gru": "GRU", "rnn": "RNN"}[kind]

    initializers = []

    def constant(name: str, array: np.ndarray) -> str:
        initializers.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    nodes = [
        helper.make_node(
            "Gather", [constant("embedding", tensors["embedding.weight"]), TOKENS], ["embedded"]
        ),
        helper.make_node("Transpose", ["embedded"], ["layer_input_0"], perm=[1, 0, 2]),
    ]
    state_outputs_h, state_outputs_c = [], []
    for layer in range(layers):

        def weight(name: str, layer: int = layer) -> np.ndarray:
            return _reorder_gates(tensors[f"recurrent.{name}_l{layer}"], kind)

        # ONNX wants (directions, gates*H, inputs) and one bias row [input bias; state bias].
        w = constant(f"W_{layer}", weight("weight_ih")[None])
        r = constant(f"R_{layer}", weight("weight_hh")[None])
        b = constant(f"B_{layer}", np.concatenate([weight("bias_ih"), weight("bias_hh")])[None])
        starts = constant(f"layer_start_{layer}", np.array([layer], np.int64))
        ends = constant(f"layer_end_{layer}", np.array([layer + 1], np.int64))
        axes = constant(f"layer_axis_{layer}", np.array([0], np.int64))
        # Row l of the (L, B, H) state is (1, B, H): ONNX's (directions, batch, hidden) as it is.
        nodes.append(helper.make_node("Slice", [STATE_H, starts, ends, axes], [f"initial_h_{layer}"]))
        inputs = [f"layer_input_{layer}", w, r, b, "", f"initial_h_{layer}"]
        outputs = [f"sequence_{layer}", f"last_h_{layer}"]
        attributes: dict[str, Any] = {"hidden_size": hidden}
        if kind == "lstm":
            nodes.append(helper.make_node("Slice", [STATE_C, starts, ends, axes], [f"initial_c_{layer}"]))
            inputs.append(f"initial_c_{layer}")
            outputs.append(f"last_c_{layer}")
            state_outputs_c.append(f"last_c_{layer}")
        elif kind == "gru":
            attributes["linear_before_reset"] = 1  # PyTorch applies the reset gate after the product
        else:
            attributes["activations"] = ["Tanh"]
        state_outputs_h.append(f"last_h_{layer}")
        nodes.append(
            helper.make_node(op_type, inputs, outputs, name=f"{op_type.lower()}_{layer}", **attributes)
        )
        nodes.append(
            helper.make_node(
                "Squeeze",
                [f"sequence_{layer}", constant(f"direction_axis_{layer}", np.array([1], np.int64))],
                [f"layer_input_{layer + 1}"],
            )
        )
    nodes += [
        helper.make_node("Transpose", [f"layer_input_{layers}"], [FEATURES], perm=[1, 0, 2]),
        helper.make_node(
            "MatMul", [FEATURES, constant(HEAD_WEIGHT, tensors["head.weight"].T)], ["head_product"]
        ),
        helper.make_node("Add", ["head_product", constant(HEAD_BIAS, tensors["head.bias"])], [LOGITS]),
        helper.make_node("Concat", state_outputs_h, [NEXT_STATE_H], axis=0),
    ]
    state_shape: list[str | int] = [layers, "batch", hidden]
    graph_inputs = [
        helper.make_tensor_value_info(TOKENS, TensorProto.INT64, ["batch", "length"]),
        helper.make_tensor_value_info(STATE_H, TensorProto.FLOAT, state_shape),
    ]
    graph_outputs = [
        helper.make_tensor_value_info(LOGITS, TensorProto.FLOAT, ["batch", "length", vocab]),
        helper.make_tensor_value_info(FEATURES, TensorProto.FLOAT, ["batch", "length", hidden]),
        helper.make_tensor_value_info(NEXT_STATE_H, TensorProto.FLOAT, state_shape),
    ]
    if kind == "lstm":
        nodes.append(helper.make_node("Concat", state_outputs_c, [NEXT_STATE_C], axis=0))
        graph_inputs.append(helper.make_tensor_value_info(STATE_C, TensorProto.FLOAT, state_shape))
        graph_outputs.append(helper.make_tensor_value_info(NEXT_STATE_C, TensorProto.FLOAT, state_shape))
    graph = helper.make_graph(nodes, "charrnn_step", graph_inputs, graph_outputs, initializer=initializers)
    proto = helper.make_model(
        graph,
        producer_name="charrnn",
        opset_imports=[helper.make_opsetid("", OPSET)],
        doc_string=(
            "charrnn next-token model: tokens (batch, length) and the recurrent state in, logits and "
            "the next state out; the tokeniser and model config are in metadata_props"
        ),
    )
    # The IR version onnxruntime releases of the last years all read (a new onnx writes a newer one).
    proto.ir_version = min(proto.ir_version, 9)
    set_metadata(
        proto,
        {
            MODEL_CONFIG_KEY: json.dumps(model_config.to_dict()),
            TOKENIZER_KEY: json.dumps(tokenizer_dict),
            INFO_KEY: json.dumps(info),
            WEIGHTS_KEY: "fp32",
        },
    )
    onnx.checker.check_model(proto)
    return proto


def set_metadata(proto, values: dict[str, str]) -> None:
    """Write charrnn's format marker and `values` into the proto's metadata_props (replacing old keys)."""
    values = {FORMAT_KEY: FORMAT_NAME, FORMAT_VERSION_KEY: str(FORMAT_VERSION), **values}
    kept = [entry for entry in proto.metadata_props if entry.key not in values]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    for key, value in values.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value


def metadata_of(proto) -> dict[str, str]:
    """The proto's metadata_props as a dict."""
    return {entry.key: entry.value for entry in proto.metadata_props}
