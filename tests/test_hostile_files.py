"""Damaged, foreign, lying and malicious files: one clear line, exit 1, nothing runs, nothing is damaged."""

from __future__ import annotations

import errno
import io
import json
import os
import pickle
import struct
from pathlib import Path

import pytest
import torch
from conftest import TINY_MODEL_OPTIONS, error_lines, run_cli
from faults import deny_writes_under
from safetensors import safe_open
from safetensors.torch import save as safetensors_bytes

from charrnn.atomic import is_temp_file
from charrnn.config import ModelConfig
from charrnn.model import CharRNN
from charrnn.store.checkpoint import FORMAT_VERSION, expected_tensor_shapes


def _tensors_and_metadata(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(path), framework="pt") as handle:
        return {name: handle.get_tensor(name) for name in handle.keys()}, handle.metadata()  # noqa: SIM118 (not iterable)


def _assert_one_error_line(result, expected: str) -> None:
    """Exit 1, nothing on stdout, and stderr is the one line `expected`.

    An `expected` ending in " (" is the part of the line that is charrnn's: the line goes on
    with the words of the library that found the damage (safetensors, torch), in brackets.
    """
    assert result.exit_code == 1, (result.exit_code, result.stderr)
    assert result.stdout == ""
    lines = error_lines(result.stderr)
    assert len(lines) == 1, result.stderr
    if expected.endswith(" ("):
        assert lines[0].startswith(expected) and lines[0].endswith(")"), lines[0]
        assert "\n" not in lines[0] and "Traceback" not in lines[0]
    else:
        assert lines[0] == expected


# -- weights files (what `sample` reads) -------------------------------------------------------


def _damaged_weights(kind: str, good: Path) -> bytes:
    data = good.read_bytes()
    tensors, metadata = _tensors_and_metadata(good)
    if kind == "truncated":
        return data[: len(data) // 2]
    if kind == "empty":
        return b""
    if kind == "random bytes":
        return os.urandom(4096)
    if kind == "a .pt renamed":
        buffer = io.BytesIO()
        torch.save({"weights": torch.zeros(3)}, buffer)
        return buffer.getvalue()
    if kind == "foreign safetensors":
        return safetensors_bytes({"weight": torch.zeros(2, 2)}, metadata={"format": "pt"})
    if kind == "newer format":
        return safetensors_bytes(tensors, metadata={**metadata, "format_version": str(FORMAT_VERSION + 1)})
    if kind == "huge header length":
        return struct.pack("<Q", 2**62) + data[8:]
    if kind == "wrong dtype":
        return safetensors_bytes({**tensors, "head.bias": tensors["head.bias"].half()}, metadata=metadata)
    if kind == "missing tensor":
        return safetensors_bytes({k: v for k, v in tensors.items() if k != "head.bias"}, metadata=metadata)
    if kind == "header claims a giant model":
        giant = {**json.loads(metadata["model_config"]), "hidden_size": 16384, "num_layers": 16}
        return safetensors_bytes(tensors, metadata={**metadata, "model_config": json.dumps(giant)})
    if kind == "offsets past the end":
        header_len = struct.unpack("<Q", data[:8])[0]
        header = json.loads(data[8 : 8 + header_len])
        header["head.bias"]["data_offsets"] = [0, 10**12]
        raw = json.dumps(header).encode()
        return struct.pack("<Q", len(raw)) + raw + data[8 + header_len :]
    if kind == "tokeniser not an object":  # failed with an AttributeError (a traceback)
        return safetensors_bytes(tensors, metadata={**metadata, "tokenizer": "[]"})
    if kind == "model config not an object":
        return safetensors_bytes(tensors, metadata={**metadata, "model_config": "null"})
    if kind == "a size that is not a whole number":
        sized = {**json.loads(metadata["model_config"]), "hidden_size": 32.0}
        return safetensors_bytes(tensors, metadata={**metadata, "model_config": json.dumps(sized)})
    if kind == "non-finite weights":
        return safetensors_bytes(
            {**tensors, "head.bias": tensors["head.bias"] * float("nan")}, metadata=metadata
        )
    raise AssertionError(kind)


@pytest.mark.parametrize(
    "kind, problem",
    [
        ("truncated", "is corrupted ("),  # then safetensors' words
        ("empty", "is corrupted (too short to be a checkpoint)"),
        ("random bytes", "is corrupted or not a charrnn checkpoint (bad header length)"),
        ("a .pt renamed", "is corrupted or not a charrnn checkpoint (bad header length)"),
        ("foreign safetensors", "is not a charrnn checkpoint"),
        (
            "newer format",
            f"was written by a newer charrnn (format {FORMAT_VERSION + 1}; this one reads up to "
            f"{FORMAT_VERSION}): upgrade charrnn to use it",
        ),
        ("huge header length", "is corrupted or not a charrnn checkpoint (bad header length)"),
        (
            "wrong dtype",
            "is corrupted (tensor head.bias is torch.float16 (29,), expected torch.float32 (29,))",
        ),
        ("missing tensor", "is corrupted (missing tensor head.bias)"),
        ("header claims a giant model", "is corrupted (missing tensor recurrent.bias_hh_l1)"),
        ("offsets past the end", "is corrupted ("),  # then safetensors' words
        ("non-finite weights", "is corrupted (tensor head.bias has non-finite values)"),
        (
            "tokeniser not an object",
            "is corrupted (bad metadata: a tokeniser is stored as an object, not list)",
        ),
        (
            "model config not an object",
            "is corrupted (bad metadata: ModelConfig is stored as an object, not NoneType)",
        ),
        (
            "a size that is not a whole number",
            "is corrupted (bad metadata: --hidden-size must be a whole number, got 32.0)",
        ),
    ],
)
def test_damaged_weights_file_is_one_clear_line_and_builds_no_model(
    trained_run, tmp_path, monkeypatch, kind, problem
):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(_damaged_weights(kind, trained_run / "best.safetensors"))
    # The file is checked before a model is built: a lying header (a giant model) costs nothing.
    # Building one here fails at once instead, so a regression cannot allocate the giant.
    models_built = []

    def refuse_to_build(self, *args, **kwargs):
        models_built.append(args)
        raise AssertionError("a model was built from a damaged file")

    monkeypatch.setattr(CharRNN, "__init__", refuse_to_build)
    result = run_cli("sample", str(bad), "--length", "5")
    assert models_built == []
    _assert_one_error_line(result, f"Error: {bad} {problem}")


def test_expected_shapes_match_the_real_model():
    for kind in ("lstm", "gru", "rnn"):
        config = ModelConfig(model=kind, num_layers=3, hidden_size=7, embedding_size=5, vocab_size=11)
        actual = {name: tuple(t.shape) for name, t in CharRNN(config).state_dict().items()}
        assert expected_tensor_shapes(config) == actual


# -- malicious pickles -------------------------------------------------------------------------


class _CreatesMarker:
    """Unpickling this calls open(marker, 'w'): the marker file appears if any code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _payloads(marker: Path) -> dict[str, bytes]:
    buffer = io.BytesIO()
    torch.save({"format": "charrnn", "format_version": 1, "evil": _CreatesMarker(marker)}, buffer)
    return {"torch zip": buffer.getvalue(), "raw pickle": pickle.dumps(_CreatesMarker(marker))}


def test_the_payloads_are_live(tmp_path):
    # Proof that the files below would run code if anything unpickled them carelessly.
    marker = tmp_path / "proof"
    payloads = _payloads(marker)
    torch.load(io.BytesIO(payloads["torch zip"]), weights_only=False)
    assert marker.exists()
    marker.unlink()
    pickle.loads(payloads["raw pickle"])
    assert marker.exists()


@pytest.mark.parametrize("payload", ["torch zip", "raw pickle"])
def test_state_with_code_payload_is_refused_without_running_it(pattern_corpus, tmp_path, payload):
    out = tmp_path / "run"
    assert (
        run_cli(
            "train", str(pattern_corpus), "--out", str(out), "--max-steps", "3", *TINY_MODEL_OPTIONS
        ).exit_code
        == 0
    )
    marker = tmp_path / "pwned"
    (out / "state.pt").write_bytes(_payloads(marker)[payload])
    result = run_cli("train", "--resume", str(out))
    _assert_one_error_line(result, f"Error: {out / 'state.pt'} is corrupted or not a charrnn training state")
    assert not marker.exists()


@pytest.mark.parametrize("payload", ["torch zip", "raw pickle"])
def test_sampling_never_unpickles(tmp_path, payload):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    evil.write_bytes(_payloads(marker)[payload])
    _assert_one_error_line(
        run_cli("sample", str(evil)),
        f"Error: {evil} is corrupted or not a charrnn checkpoint (bad header length)",
    )
    assert not marker.exists()


# -- damaged training states (what `train --resume` reads) --------------------------------------


def _state_bytes(kind: str, good: bytes) -> bytes:
    if kind == "truncated":
        return good[: len(good) // 2]
    if kind == "empty":
        return b""
    if kind == "random bytes":
        return os.urandom(2048)
    if kind == "safetensors renamed":
        return safetensors_bytes({"x": torch.zeros(1)})
    state = torch.load(io.BytesIO(good), weights_only=True)
    if kind == "foreign torch file":
        state = {"model": state["model"]}
    elif kind == "newer format":
        state["format_version"] = FORMAT_VERSION + 1
    elif kind == "field of the wrong type":
        state["step"] = "ten"
    elif kind == "tensor of the wrong shape":
        state["model"]["head.bias"] = torch.zeros(3)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


@pytest.mark.parametrize(
    "kind, problem",
    [
        ("truncated", "is corrupted or not a charrnn training state"),
        ("empty", "is corrupted (empty file)"),
        ("random bytes", "is corrupted or not a charrnn training state"),
        ("safetensors renamed", "is corrupted or not a charrnn training state"),
        ("foreign torch file", "is not a charrnn training state"),
        (
            "newer format",
            f"was written by a newer charrnn (format {FORMAT_VERSION + 1}; this one reads up to "
            f"{FORMAT_VERSION}): upgrade charrnn to resume it",
        ),
        ("field of the wrong type", "is corrupted (field 'step' is missing or has the wrong type)"),
        ("tensor of the wrong shape", "is corrupted ("),  # then torch's words
    ],
)
def test_damaged_training_state_is_one_clear_line(pattern_corpus, tmp_path, kind, problem):
    out = tmp_path / "run"
    assert (
        run_cli(
            "train", str(pattern_corpus), "--out", str(out), "--max-steps", "3", *TINY_MODEL_OPTIONS
        ).exit_code
        == 0
    )
    state = out / "state.pt"
    state.write_bytes(_state_bytes(kind, state.read_bytes()))
    latest = (out / "latest.safetensors").read_bytes()
    _assert_one_error_line(run_cli("train", "--resume", str(out)), f"Error: {state} {problem}")
    assert (out / "latest.safetensors").read_bytes() == latest


# -- the disk fills up; the folder cannot be written ------------------------------------------


def test_disk_full_while_saving_is_one_line_and_changes_nothing(pattern_corpus, tmp_path, monkeypatch):
    out = tmp_path / "run"
    assert (
        run_cli(
            "train",
            str(pattern_corpus),
            "--out",
            str(out),
            "--max-steps",
            "10",
            "--eval-every",
            "10",
            *TINY_MODEL_OPTIONS,
        ).exit_code
        == 0
    )
    before = {p.name: p.read_bytes() for p in out.glob("*.*")}
    real_write = os.write

    def write_until_full(descriptor, data):
        # Half the checkpoint fits, then the disk is full: as on a real file system.
        if "latest.safetensors" in os.readlink(f"/proc/self/fd/{descriptor}"):
            if len(data) > 64:
                return real_write(descriptor, bytes(data[:64]))
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(descriptor, data)

    monkeypatch.setattr(os, "write", write_until_full)
    result = run_cli("train", "--resume", str(out), "--max-steps", "20")
    assert result.exit_code == 1
    lines = error_lines(result.stderr)  # progress lines first, then the one error line
    assert [line for line in lines if line.startswith("Error")] == [lines[-1]]
    assert lines[-1] == (
        f"Error: disk full while saving {out / 'latest.safetensors'}: the previous "
        "checkpoint is unchanged; free some space, then resume"
    )
    assert "Traceback" not in result.stderr
    for name in ("latest.safetensors", "best.safetensors", "state.pt"):
        assert (out / name).read_bytes() == before[name], name
    assert not [p for p in out.iterdir() if is_temp_file(p)]


def test_unwritable_output_directory_fails_before_training(pattern_corpus, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    result = run_cli("train", str(pattern_corpus), "--out", str(blocker / "run"), *TINY_MODEL_OPTIONS)
    _assert_one_error_line(
        result, f"Error: cannot write to run directory {blocker / 'run'}: {os.strerror(errno.ENOTDIR)}"
    )
    assert "parameters" not in result.stderr


def test_read_only_output_directory_fails_before_training(pattern_corpus, tmp_path, monkeypatch):
    read_only = tmp_path / "ro"
    read_only.mkdir()
    deny_writes_under(monkeypatch, read_only)  # simulated: file modes do not stop root
    result = run_cli("train", str(pattern_corpus), "--out", str(read_only), *TINY_MODEL_OPTIONS)
    _assert_one_error_line(
        result, f"Error: cannot write to run directory {read_only}: {os.strerror(errno.EACCES)}"
    )
    assert "parameters" not in result.stderr
    assert list(read_only.iterdir()) == []
