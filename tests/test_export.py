"""`charrnn export` and .onnx models: the graph computes what PyTorch computes, the file is whole and
self-describing, and sample / eval / score / the API read it as they read a checkpoint."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from conftest import PATTERN, REPO, error_lines, run_cli

from charrnn.config import ModelConfig
from charrnn.data.tokenizers import CharTokenizer
from charrnn.export import graph
from charrnn.export.exporter import INT8_BITS_TOLERANCE, export_model
from charrnn.export.runtime import OnnxCharRNN, load_onnx_model
from charrnn.model import CharRNN
from charrnn.store.checkpoint import save_weights

EXAMPLE = REPO / "examples" / "onnx_sample.py"


def _random_checkpoint(folder: Path, kind: str, hidden: int = 24, layers: int = 2) -> Path:
    tokenizer = CharTokenizer(sorted(set(PATTERN)))
    torch.manual_seed(3)
    model = CharRNN(
        ModelConfig(
            model=kind,
            hidden_size=hidden,
            embedding_size=8,
            num_layers=layers,
            vocab_size=tokenizer.vocab_size,
        )
    ).eval()
    path = folder / f"{kind}.safetensors"
    save_weights(path, model, tokenizer, {"step": 7})
    return path


@pytest.fixture(scope="module")
def exported_run(trained_run, tmp_path_factory) -> Path:
    """The session's trained tiny LSTM exported in float32 (once for this module)."""
    path = tmp_path_factory.mktemp("exported") / "model.onnx"
    export_model(trained_run / "best.safetensors", path)
    return path


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
def test_the_exported_graph_gives_pytorchs_logits_and_state(kind, tmp_path):
    checkpoint = _random_checkpoint(tmp_path, kind)
    report = export_model(checkpoint, tmp_path / "model.onnx")
    assert report.max_logit_difference <= 1e-4
    onnx.checker.check_model(str(tmp_path / "model.onnx"))
    loaded = load_onnx_model(tmp_path / "model.onnx")
    assert isinstance(loaded.model, OnnxCharRNN)
    from charrnn.store.checkpoint import load_weights

    reference = load_weights(checkpoint).model
    tokens = torch.from_numpy(np.random.default_rng(5).integers(0, 24, (3, 40)))
    with torch.inference_mode():
        expected, expected_state = reference(tokens)
        found, found_state = loaded.model(tokens)
        # Carried on from the state, as evaluation and sampling do.
        expected_next, _ = reference(tokens[:, :5], expected_state)
        found_next, _ = loaded.model(tokens[:, :5], found_state)
    assert torch.allclose(found, expected, atol=1e-4)
    assert torch.allclose(found_next, expected_next, atol=1e-4)


def test_the_file_holds_every_weight_and_what_sampling_needs(tmp_path):
    checkpoint = _random_checkpoint(tmp_path, "lstm")
    (tmp_path / "out").mkdir()
    export_model(checkpoint, tmp_path / "out" / "model.onnx")
    assert [path.name for path in (tmp_path / "out").iterdir()] == ["model.onnx"]  # no side file
    proto = onnx.load(str(tmp_path / "out" / "model.onnx"), load_external_data=False)
    assert all(tensor.data_location != onnx.TensorProto.EXTERNAL for tensor in proto.graph.initializer)
    assert [node.op_type for node in proto.graph.node].count("LSTM") == 2  # plain LSTM nodes
    metadata = graph.metadata_of(proto)
    assert metadata[graph.FORMAT_KEY] == graph.FORMAT_NAME
    assert json.loads(metadata[graph.TOKENIZER_KEY]) == {
        "kind": "char",
        "chars": "".join(sorted(set(PATTERN))),
    }
    assert json.loads(metadata[graph.MODEL_CONFIG_KEY])["hidden_size"] == 24
    # Batch and length are free: the graph takes any.
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert [dim.dim_param for dim in dims] == ["batch", "length"]


def test_a_wrong_gate_order_is_caught_and_nothing_is_written(tmp_path, monkeypatch):
    checkpoint = _random_checkpoint(tmp_path, "lstm")
    monkeypatch.setattr(graph, "_reorder_gates", lambda array, kind: array)  # PyTorch's order as it is
    with pytest.raises(Exception, match="differ from the PyTorch model's"):
        export_model(checkpoint, tmp_path / "model.onnx")
    assert not (tmp_path / "model.onnx").exists()


def test_int8_quantises_the_lstm_to_a_quarter_and_keeps_the_bits(tmp_path):
    checkpoint = _random_checkpoint(tmp_path, "lstm", hidden=96)
    fp32 = export_model(checkpoint, tmp_path / "fp32.onnx")
    int8 = export_model(checkpoint, tmp_path / "int8.onnx", int8=True)
    proto = onnx.load(str(tmp_path / "int8.onnx"))
    assert [node.op_type for node in proto.graph.node].count("DynamicQuantizeLSTM") == 2
    assert graph.metadata_of(proto)[graph.WEIGHTS_KEY] == "int8"
    assert int8.file_bytes < 0.35 * fp32.file_bytes
    assert fp32.file_bytes < 1.1 * fp32.weights_bytes
    assert int8.bits_per_char_int8 is not None and int8.bits_per_char_fp32 is not None
    assert abs(int8.bits_per_char_int8 - int8.bits_per_char_fp32) < INT8_BITS_TOLERANCE


@pytest.mark.parametrize(
    "options",
    [
        ["--seed", "5", "-n", "300"],
        ["--seed", "9", "-n", "200", "-t", "1.3", "--prime", "the"],
        ["--seed", "2", "-n", "80", "--num-samples", "4", "--stop", "o", "--format", "jsonl"],
        ["--seed", "4", "-n", "60", "--top-k", "3", "--num-samples", "2"],
    ],
)
def test_sampling_an_fp32_export_writes_the_pytorch_models_text(trained_run, exported_run, options):
    expected = run_cli("sample", str(trained_run), *options)
    found = run_cli("sample", str(exported_run), *options)
    assert expected.exit_code == 0 and found.exit_code == 0, found.stderr
    if "jsonl" not in options:
        assert found.stdout == expected.stdout and len(found.stdout) > 50
        return
    # The records' log-probabilities are sums over float32 logits of two runtimes: equal to 1e-4.
    found_records = [json.loads(line) for line in found.stdout.splitlines()]
    expected_records = [json.loads(line) for line in expected.stdout.splitlines()]
    assert len(found_records) == 4
    for found_record, expected_record in zip(found_records, expected_records, strict=True):
        assert found_record.pop("log2_prob") == pytest.approx(expected_record.pop("log2_prob"), abs=1e-4)
        assert found_record == expected_record


def test_each_line_with_an_export(trained_run, exported_run, tmp_path):
    lines = tmp_path / "lines.txt"
    lines.write_text("the\nquick brown\nlazy\n", encoding="utf-8")
    options = ["--each-line", "--input", str(lines), "--stop", "\\n", "--seed", "3", "-n", "40"]
    expected = run_cli("sample", str(trained_run), *options)
    found = run_cli("sample", str(exported_run), *options)
    assert found.exit_code == 0, found.stderr
    assert found.stdout == expected.stdout


def test_eval_and_score_of_an_export_match_pytorch(trained_run, exported_run, tmp_path):
    text = tmp_path / "text.txt"
    text.write_text(PATTERN * 30, encoding="utf-8")
    expected = json.loads(run_cli("eval", str(trained_run), str(text), "--json").stdout)
    found = json.loads(run_cli("eval", str(exported_run), str(text), "--json").stdout)
    assert found["total"]["bits_per_char"] == pytest.approx(expected["total"]["bits_per_char"], abs=1e-5)
    assert found["total"]["chars"] == expected["total"]["chars"]
    lines = "the quick brown fox\nthe lazy dog\n"
    scored = run_cli("score", str(exported_run), input=lines)
    reference = run_cli("score", str(trained_run), input=lines)
    assert scored.exit_code == 0, scored.stderr
    for found_line, expected_line in zip(
        scored.stdout.splitlines(), reference.stdout.splitlines(), strict=True
    ):
        assert float(found_line.split("\t")[0]) == pytest.approx(
            float(expected_line.split("\t")[0]), abs=1e-4
        )


def test_the_python_api_loads_an_export(trained_run, exported_run):
    import charrnn

    model = charrnn.load(exported_run)
    assert model.path == exported_run
    options = {"seed": 11, "length": 120, "prime": "the"}
    assert model.generate_text(**options) == charrnn.load(trained_run).generate_text(**options)


def test_the_export_command_prints_the_path_and_reports_on_stderr(trained_run, tmp_path):
    result = run_cli("export", str(trained_run), "-o", str(tmp_path / "m.onnx"))
    assert result.exit_code == 0, result.stderr
    assert result.stdout == f"{tmp_path / 'm.onnx'}\n"
    assert "logits within" in result.stderr
    report = json.loads(
        run_cli("export", str(trained_run), "-o", str(tmp_path / "m8.onnx"), "--int8", "--json").stdout
    )
    assert report["weights"] == "int8" and report["file_bytes"] < (tmp_path / "m.onnx").stat().st_size


def _one_error(result, exit_code: int = 1) -> str:
    assert result.exit_code == exit_code, (result.stdout, result.stderr)
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    return lines[0]


def test_an_onnx_file_that_is_not_charrnns_is_one_error(tmp_path):
    from onnx import TensorProto, helper

    node = helper.make_node("Identity", ["x"], ["y"])
    foreign = helper.make_model(
        helper.make_graph(
            [node],
            "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
        )
    )
    onnx.save(foreign, str(tmp_path / "foreign.onnx"))
    assert "not a charrnn export" in _one_error(run_cli("sample", str(tmp_path / "foreign.onnx")))
    (tmp_path / "noise.onnx").write_bytes(b"\xff\x00 not protobuf at all \x07" * 10)
    assert "not an ONNX file" in _one_error(
        run_cli("eval", str(tmp_path / "noise.onnx"), str(tmp_path / "foreign.onnx"))
    )


def test_a_truncated_export_is_one_error(exported_run, tmp_path):
    data = exported_run.read_bytes()
    for cut in (len(data) // 3, len(data) - 10):
        (tmp_path / "cut.onnx").write_bytes(data[:cut])
        _one_error(run_cli("sample", str(tmp_path / "cut.onnx"), "-n", "5"))


def test_text_the_exported_tokeniser_cannot_read_is_one_error(exported_run, tmp_path):
    text = tmp_path / "greek.txt"
    text.write_text("αβγ δέλτα\n" * 5, encoding="utf-8")
    assert "never saw" in _one_error(run_cli("eval", str(exported_run), str(text)))
    _one_error(run_cli("sample", str(exported_run), "--prime", "Ωmega"))


def test_int8_of_a_gru_is_one_error(tmp_path):
    checkpoint = _random_checkpoint(tmp_path, "gru")
    message = _one_error(run_cli("export", str(checkpoint), "-o", str(tmp_path / "g.onnx"), "--int8"), 2)
    assert "--int8 needs an LSTM" in message
    assert not (tmp_path / "g.onnx").exists()


def test_bad_outputs_are_one_error_and_leave_files_alone(trained_run, exported_run, tmp_path):
    _one_error(run_cli("export", str(trained_run), "-o", str(tmp_path / "model.bin")), 2)
    (tmp_path / "folder.onnx").mkdir()
    _one_error(run_cli("export", str(trained_run), "-o", str(tmp_path / "folder.onnx")), 2)
    os.mkfifo(tmp_path / "pipe.onnx")
    assert "not a regular file" in _one_error(
        run_cli("export", str(trained_run), "-o", str(tmp_path / "pipe.onnx"))
    )
    assert stat.S_ISFIFO(os.lstat(tmp_path / "pipe.onnx").st_mode)
    _one_error(run_cli("export", str(exported_run), "-o", str(tmp_path / "again.onnx")), 2)
    _one_error(run_cli("export", str(trained_run), "-o", str(tmp_path / "missing" / "m.onnx")))


def test_a_failed_check_keeps_the_previous_file(trained_run, tmp_path, monkeypatch):
    output = tmp_path / "model.onnx"
    output.write_bytes(b"the previous file")
    monkeypatch.setattr("charrnn.export.exporter._logit_difference", lambda model, session: 0.5)
    assert "nothing written" in _one_error(run_cli("export", str(trained_run), "-o", str(output)))
    assert output.read_bytes() == b"the previous file"


def test_without_onnxruntime_an_export_is_one_error_naming_the_extra(exported_run, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime raises ImportError
    assert 'pip install "charrnn[onnx]"' in _one_error(run_cli("sample", str(exported_run)))


# The no-torch sampler: in a process where `import torch` (and charrnn) fail, as on a machine
# that has only onnxruntime and NumPy.
_WITHOUT_TORCH = """
import runpy, sys
sys.modules["torch"] = None
sys.modules["charrnn"] = None
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def _run_example(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", _WITHOUT_TORCH, str(EXAMPLE), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_example_samples_without_torch_as_charrnn_does(trained_run, exported_run):
    greedy = _run_example(str(exported_run), "--prime", "the", "--length", "60", "--greedy")
    assert greedy.returncode == 0, greedy.stderr
    expected = run_cli("sample", str(trained_run), "--prime", "the", "-n", "60", "--greedy").stdout
    assert greedy.stdout == expected + "\n"
    sampled = _run_example(str(exported_run), "--length", "80", "--seed", "1", "--temperature", "0.7")
    assert sampled.returncode == 0, sampled.stderr
    assert len(sampled.stdout) == 81 and set(sampled.stdout) <= set(PATTERN)


def test_the_process_the_example_runs_in_cannot_import_torch(tmp_path):
    script = tmp_path / "imports_torch.py"
    script.write_text("import torch\n", encoding="utf-8")
    blocked = subprocess.run(
        [sys.executable, "-c", _WITHOUT_TORCH, str(script)], capture_output=True, text=True, check=False
    )
    assert blocked.returncode != 0 and "import of torch halted" in blocked.stderr


def test_the_sampler_on_the_export_page_runs_without_torch(exported_run, tmp_path):
    page = (REPO / "docs" / "export.md").read_text(encoding="utf-8")
    section = page.split("## A sampler with no PyTorch", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    script = tmp_path / "page_sampler.py"
    script.write_text(code, encoding="utf-8")
    result = subprocess.run(
        [sys.executable, "-c", _WITHOUT_TORCH, str(script), str(exported_run)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert len(result.stdout) == 301 and set(result.stdout) <= set(PATTERN)


def test_commands_that_need_the_pytorch_weights_say_so_for_an_export(exported_run, tmp_path):
    text = tmp_path / "text.txt"
    text.write_text(PATTERN * 3, encoding="utf-8")
    for arguments in (["info", str(exported_run)], ["explain", str(exported_run), str(text)]):
        assert "is an ONNX export" in _one_error(run_cli(*arguments))


@pytest.mark.parametrize("kind", ["gru", "rnn"])
def test_gru_and_rnn_exports_write_the_pytorch_models_text(kind, tmp_path):
    from charrnn.config import SampleConfig
    from charrnn.generate.sampler import generate_text
    from charrnn.store.checkpoint import load_weights

    checkpoint = _random_checkpoint(tmp_path, kind)
    export_model(checkpoint, tmp_path / "model.onnx")
    config = SampleConfig(length=150, seed=6, num_samples=3, temperature=0.9, stop=("e",))
    reference, exported = load_weights(checkpoint), load_onnx_model(tmp_path / "model.onnx")
    expected = "".join(generate_text(reference.model, reference.tokenizer, config))
    assert "".join(generate_text(exported.model, exported.tokenizer, config)) == expected


def test_an_int8_export_samples_and_evaluates_close_to_float32(trained_run, tmp_path):
    export_model(trained_run / "best.safetensors", tmp_path / "int8.onnx", int8=True)
    sampled = run_cli("sample", str(tmp_path / "int8.onnx"), "--seed", "1", "-n", "200")
    assert sampled.exit_code == 0, sampled.stderr
    assert len(sampled.stdout) == 200 and set(sampled.stdout) <= set(PATTERN)
    text = tmp_path / "text.txt"
    text.write_text(PATTERN * 20, encoding="utf-8")
    int8 = json.loads(run_cli("eval", str(tmp_path / "int8.onnx"), str(text), "--json").stdout)
    fp32 = json.loads(run_cli("eval", str(trained_run), str(text), "--json").stdout)
    assert abs(int8["total"]["bits_per_char"] - fp32["total"]["bits_per_char"]) < 0.05


def test_an_export_runs_on_the_threads_it_is_given(exported_run, monkeypatch):
    monkeypatch.setattr(torch, "get_num_threads", lambda: 3)
    model = load_onnx_model(exported_run).model
    assert isinstance(model, OnnxCharRNN)
    assert model.session.get_session_options().intra_op_num_threads == 3


def test_metadata_that_does_not_describe_the_graph_is_one_error(exported_run, tmp_path):
    proto = onnx.load(str(exported_run))
    metadata = graph.metadata_of(proto)
    config = json.loads(metadata[graph.MODEL_CONFIG_KEY])
    config["num_layers"] += 1  # the head still fits: only the state shows the lie
    graph.set_metadata(proto, {graph.MODEL_CONFIG_KEY: json.dumps(config)})
    onnx.save(proto, str(tmp_path / "lying.onnx"))
    assert "is corrupted" in _one_error(run_cli("sample", str(tmp_path / "lying.onnx"), "-n", "5"))


def test_a_graph_that_fails_inside_onnxruntime_is_one_error(exported_run, tmp_path):
    from onnx import numpy_helper

    proto = onnx.load(str(exported_run))
    for index, tensor in enumerate(proto.graph.initializer):
        if tensor.name == "direction_axis_0":  # squeeze the time axis instead: fails when it runs
            proto.graph.initializer[index].CopyFrom(
                numpy_helper.from_array(np.array([0], np.int64), tensor.name)
            )
    onnx.save(proto, str(tmp_path / "broken.onnx"))
    text = tmp_path / "text.txt"
    text.write_text(PATTERN * 3, encoding="utf-8")
    assert "failed in onnxruntime" in _one_error(run_cli("eval", str(tmp_path / "broken.onnx"), str(text)))
