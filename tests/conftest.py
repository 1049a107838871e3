"""Shared test helpers: one torch thread, tiny corpora, a CLI runner that keeps stdout and stderr apart."""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

# Tests must not fight over the two cores: one thread for torch here and in every subprocess.
os.environ["OMP_NUM_THREADS"] = "1"
os.environ["MKL_NUM_THREADS"] = "1"
# Token files go to a private folder, never to the user's ~/.cache, and the folder goes when the
# session ends (every run of the suite, and every xdist worker, made one that stayed in /tmp).
if "CHARRNN_CACHE_DIR" not in os.environ:
    _TEST_CACHE = tempfile.mkdtemp(prefix="charrnn-test-cache-")
    os.environ["CHARRNN_CACHE_DIR"] = _TEST_CACHE
    atexit.register(shutil.rmtree, _TEST_CACHE, ignore_errors=True)

import torch  # noqa: E402

torch.set_num_threads(1)

from click.testing import CliRunner  # noqa: E402

from charrnn.cli import cli  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
PATTERN = "the quick brown fox jumps over the lazy dog.\n"
TINY_MODEL_OPTIONS = [
    "--hidden-size",
    "32",
    "--embedding-size",
    "16",
    "--num-layers",
    "1",
    "--dropout",
    "0",
    "--seq-len",
    "32",
    "--batch-size",
    "8",
    "--threads",
    "1",
]


class FakeClock:
    """A time source (`Trainer(time_source=...)`) whose time moves only when a test moves it.

    A test advances it per training step and per evaluation, so a time budget is spent in
    exact, made-up seconds however loaded the machine is.
    """

    def __init__(self) -> None:
        self.now = 1000.0  # not 0: code must use differences of readings, never a reading itself

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        """Let `seconds` pass."""
        self.now += seconds


def run_cli(*args: str, input: str | None = None):
    """Run `charrnn ARGS` in-process; the result has .exit_code, .stdout and .stderr apart."""
    return CliRunner().invoke(cli, list(args), input=input, catch_exceptions=False)


def run_charrnn_process(
    *args: str, input: bytes | None = None, cwd: Path | None = None, timeout: float = 120
) -> subprocess.CompletedProcess:
    """Run `python -m charrnn ARGS` as a real process (for real pipes and signals)."""
    return subprocess.run(
        [sys.executable, "-m", "charrnn", *args], input=input, cwd=cwd, capture_output=True, timeout=timeout
    )


def error_lines(stderr: str) -> list[str]:
    """Non-empty lines of stderr (an error must be exactly one, starting with 'Error: ')."""
    return [line for line in stderr.splitlines() if line.strip()]


@pytest.fixture
def in_tmp(tmp_path, monkeypatch) -> Path:
    """Run the test from an empty folder, so `runs/` is private to it."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def pattern_corpus(tmp_path) -> Path:
    """A corpus that repeats one sentence: a model can learn it perfectly in seconds."""
    path = tmp_path / "pattern.txt"
    path.write_text(PATTERN * 200, encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> Path:
    """A run directory with a tiny model trained on the repeated sentence (trained once per session)."""
    folder = tmp_path_factory.mktemp("trained")
    corpus = folder / "pattern.txt"
    corpus.write_text(PATTERN * 200, encoding="utf-8")
    out = folder / "run"
    result = run_cli(
        "train",
        str(corpus),
        "--out",
        str(out),
        "--max-steps",
        "150",
        "--eval-every",
        "50",
        "--lr",
        "0.01",
        "--warmup-steps",
        "10",
        "--precision",
        "fp32",
        # One stream group, the layout the samples expected of this model were learned with: on
        # this 8,100-token text 8 groups would leave each stream three windows, and the model
        # would see far less carried context in its 150 steps.
        "--stream-groups",
        "1",
        *TINY_MODEL_OPTIONS,
    )
    assert result.exit_code == 0, result.stderr
    return out
