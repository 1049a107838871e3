"""Checkpoints written by earlier charrnn releases keep working.

The fixtures are made by tests/fixtures/make_fixtures.py. When the format changes, add fixtures
of the new version beside these; never regenerate the old ones.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import run_cli

from charrnn.store.checkpoint import load_training_state, load_weights

FIXTURES = Path(__file__).resolve().parent / "fixtures"
VERSIONS = sorted(p.name[: -len(".expected.json")] for p in FIXTURES.glob("tiny-v*.expected.json"))


def test_there_is_a_fixture_of_the_current_format():
    from charrnn.store.checkpoint import FORMAT_VERSION

    assert f"tiny-v{FORMAT_VERSION}" in VERSIONS


@pytest.mark.parametrize("name", VERSIONS)
def test_old_weights_load_and_sample_the_same_text(name):
    expected = json.loads((FIXTURES / f"{name}.expected.json").read_text(encoding="utf-8"))
    loaded = load_weights(FIXTURES / f"{name}.safetensors")
    assert loaded.info["step"] == expected["step"]
    assert loaded.tokenizer.vocab_size == expected["vocab_size"]
    result = run_cli(
        "sample",
        str(FIXTURES / f"{name}.safetensors"),
        "--greedy",
        "--prime",
        expected["prime"],
        "--length",
        str(len(expected["greedy_sample"]) - len(expected["prime"])),
    )
    assert result.exit_code == 0, result.stderr
    assert result.stdout == expected["greedy_sample"]


@pytest.mark.parametrize("name", VERSIONS)
def test_old_training_state_resumes(name, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    shutil.copyfile(FIXTURES / f"{name}.state.pt", run / "state.pt")
    step = load_training_state(run / "state.pt")["step"]
    result = run_cli(
        "train",
        str(FIXTURES / "tiny-corpus.txt"),
        "--resume",
        "--out",
        str(run),
        "--max-steps",
        str(step + 5),
        "--threads",
        "1",
    )
    assert result.exit_code == 0, result.stderr
    assert f"resuming at step {step}" in result.stderr
    assert load_training_state(run / "state.pt")["step"] == step + 5
