"""The model that ships with charrnn: found by name or as the fallback, stored in 16-bit floats, packaged."""

from __future__ import annotations

import subprocess
import sys
import zipfile

import pytest
import torch
from conftest import REPO, error_lines, run_cli
from safetensors.torch import load_file, save_file

from charrnn.errors import CheckpointError
from charrnn.store.bundled import BUNDLED_MODELS, is_bundled
from charrnn.store.checkpoint import load_weights, read_metadata
from charrnn.store.run_dir import resolve_weights

BUNDLED = BUNDLED_MODELS["shakespeare"]


def _stored_as(source, target, dtype, only=None):
    tensors = load_file(str(source))
    metadata = read_metadata(source.read_bytes(), source)
    converted = {
        name: tensor.to(dtype) if only in (None, name) else tensor for name, tensor in tensors.items()
    }
    save_file(converted, str(target), metadata=metadata)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_weights_stored_in_16_bit_floats_load_as_float32(trained_run, tmp_path, dtype):
    full = load_weights(trained_run / "best.safetensors")
    _stored_as(trained_run / "best.safetensors", tmp_path / "half.safetensors", dtype)
    half = load_weights(tmp_path / "half.safetensors")
    for name, tensor in half.model.state_dict().items():
        assert tensor.dtype == torch.float32
        torch.testing.assert_close(tensor, full.model.state_dict()[name].to(dtype).float())
    sampled = run_cli("sample", str(tmp_path / "half.safetensors"), "--greedy", "--prime", "the", "-n", "50")
    assert sampled.stdout == "the quick brown fox jumps over the lazy dog.\nthe quic"


@pytest.mark.parametrize(
    "dtype, only", [(torch.int32, None), (torch.float64, None), (torch.float16, "head.weight")]
)
def test_other_or_mixed_tensor_types_are_still_refused(trained_run, tmp_path, dtype, only):
    _stored_as(trained_run / "best.safetensors", tmp_path / "odd.safetensors", dtype, only)
    with pytest.raises(CheckpointError, match="is corrupted \\(tensor"):
        load_weights(tmp_path / "odd.safetensors")


def test_bundled_model_loads_is_small_and_records_how_it_was_made():
    assert BUNDLED.is_file() and BUNDLED.stat().st_size < 5_000_000
    loaded = load_weights(BUNDLED)
    assert loaded.tokenizer.kind == "char" and "R" in loaded.tokenizer.chars
    assert loaded.info["stored_dtype"] == "float16"
    readme = (BUNDLED.parent / "README.md").read_text(encoding="utf-8")
    assert "charrnn train data/tinyshakespeare.txt" in readme and "make pretrained" in readme


def test_sample_without_runs_uses_the_bundled_model_and_says_nothing_off_a_terminal(in_tmp):
    assert is_bundled(resolve_weights(None))
    result = run_cli("sample", "-n", "200", "--seed", "1", "--prime", "ROMEO:")
    assert result.exit_code == 0 and result.stderr == ""
    assert result.stdout.startswith("ROMEO:") and len(result.stdout) == 206
    named = run_cli("sample", "shakespeare", "-n", "200", "--seed", "1", "--prime", "ROMEO:")
    assert named.stdout == result.stdout


def test_the_bundled_model_is_announced_on_a_terminal(tmp_path):
    from test_stop_and_lines import run_with_terminal_stderr

    finished, told = run_with_terminal_stderr("sample", "-n", "20", "--seed", "3", cwd=tmp_path)
    assert finished.returncode == 0 and len(finished.stdout.decode()) == 20
    assert "bundled model" in told and "--seed" not in told  # seeded: no seed notice


def test_an_existing_path_wins_over_a_bundled_name(in_tmp, trained_run):
    (in_tmp / "shakespeare").symlink_to(trained_run, target_is_directory=True)
    assert resolve_weights("shakespeare").resolve() == trained_run.resolve() / "best.safetensors"
    missing = run_cli("sample", "no-such-model")
    assert missing.exit_code == 1 and "checkpoint not found: no-such-model" in error_lines(missing.stderr)[0]


def test_the_wheel_carries_the_bundled_model(tmp_path):
    """A wheel built from the project holds the model (installing that wheel in a fresh venv and
    running `cd / && charrnn sample -n 200` was checked by hand: see the README)."""
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            str(REPO),
            "--no-deps",
            "--no-build-isolation",
            "--quiet",
            "-w",
            str(tmp_path),
        ],
        capture_output=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr.decode()[-2000:]
    (wheel,) = tmp_path.glob("charrnn-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert (
        "charrnn/store/bundled/shakespeare.safetensors" in names
        and "charrnn/store/bundled/README.md" in names
    )
