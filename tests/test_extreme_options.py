"""Options at their extremes: a tiny temperature or top-p is greedy sampling, too many threads is one line."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import TINY_MODEL_OPTIONS, error_lines, run_charrnn_process, run_cli

from charrnn import hardware
from charrnn.config import SampleConfig
from charrnn.errors import UsageProblem
from charrnn.generate.sampler import choose_next_tokens
from charrnn.generate.token_choice import TokenChooser, UniformStream

# Any RuntimeWarning (numpy's overflow in divide, invalid value in subtract) fails these tests.
pytestmark = pytest.mark.filterwarnings("error")


def sample(trained_run, *options: str) -> str:
    result = run_cli("sample", str(trained_run), "--length", "150", "--prime", "the", *options)
    assert result.exit_code == 0, result.stderr
    assert result.stderr == ""
    return result.stdout


@pytest.mark.parametrize(
    "options",
    [
        ("--temperature", "1e-37"),
        ("--temperature", "1e-40"),  # float32 overflows: x / 1e-40 is inf
        ("--temperature", "1e-46"),  # rounds to 0 in float32
        ("--temperature", "5e-324"),  # the smallest positive float64
        ("--top-p", "1e-30"),
        ("--top-p", "1e-46"),  # rounds to 0 in float32
        ("--top-p", "5e-324"),
        ("--temperature", "1e-40", "--top-p", "0.9"),
        ("--temperature", "1e-40", "--top-k", "3"),
    ],
)
def test_a_tiny_temperature_or_top_p_writes_what_greedy_writes(trained_run, options):
    """The limit of a tiny temperature (or nucleus) is the most likely token every time."""
    greedy = sample(trained_run, "--greedy")
    assert "quick brown fox" in greedy  # the model has learnt its sentence: greedy is not trivial
    for seed in ("1", "2"):
        assert sample(trained_run, *options, "--seed", seed) == greedy


def test_a_tiny_temperature_is_greedy_for_every_sample_of_a_batch(trained_run):
    greedy = sample(trained_run, "--greedy", "--num-samples", "3", "--separator", "|")
    assert sample(trained_run, "--temperature", "1e-40", "--num-samples", "3", "--separator", "|") == greedy


@pytest.mark.parametrize("temperature", [1e-40, 1e-46, 1e-300])
@pytest.mark.parametrize("batch", [1, 4])
def test_the_chooser_takes_the_largest_logit_at_a_tiny_temperature(temperature, batch):
    logits = (torch.randn(50, batch, 65, generator=torch.Generator().manual_seed(3)) * 4).numpy()
    logits[:, :, 7] = -np.inf  # a banned token, as the sampler bans silent ids
    logits[::2] -= 1000.0  # rows that are all far below 0 (x / T overflows to -inf everywhere)
    chooser = TokenChooser(SampleConfig(temperature=temperature))
    streams = [UniformStream(torch.Generator().manual_seed(row)) for row in range(batch)]
    config = SampleConfig(temperature=temperature)
    for step in logits:
        assert chooser.choose(step, streams).tolist() == step.argmax(axis=1).tolist()
        reference = choose_next_tokens(torch.from_numpy(step), config, torch.Generator().manual_seed(1))
        assert reference.tolist() == step.argmax(axis=1).tolist()


def test_a_tiny_top_p_keeps_the_top_token_only():
    logits = (torch.randn(50, 3, 65, generator=torch.Generator().manual_seed(5)) * 2).numpy()
    config = SampleConfig(top_p=1e-46)
    chooser = TokenChooser(config)
    streams = [UniformStream(torch.Generator().manual_seed(row)) for row in range(3)]
    for step in logits:
        assert chooser.choose(step, streams).tolist() == step.argmax(axis=1).tolist()
        reference = choose_next_tokens(torch.from_numpy(step), config, torch.Generator().manual_seed(1))
        assert reference.tolist() == step.argmax(axis=1).tolist()


THREAD_COMMANDS = {
    "sample": ["sample", "{run}", "-n", "5"],
    "eval": ["eval", "{run}", "{text}"],
    "score": ["score", "{run}", "{text}"],
    "explain": ["explain", "{run}", "{text}"],
    "train": [
        "train",
        "{text}",
        "--out",
        "{out}",
        "--max-steps",
        "2",
        "--hidden-size",
        "8",
        "--num-layers",
        "1",
    ],
}


@pytest.mark.parametrize("command", sorted(THREAD_COMMANDS))
@pytest.mark.parametrize("threads", ["100000", "30000"])
def test_too_many_threads_is_one_error_line_for_every_command(trained_run, tmp_path, command, threads):
    """100000 threads used to end in a segmentation fault, 30000 in libgomp's "Thread creation failed"."""
    text = tmp_path / "text.txt"
    text.write_text("the quick brown fox\n" * 20)
    arguments = [
        part.format(run=trained_run, text=text, out=tmp_path / "out") for part in THREAD_COMMANDS[command]
    ]
    result = run_charrnn_process(*arguments, "--threads", threads, timeout=120)
    stderr = result.stderr.decode()
    assert result.returncode == 2, stderr
    assert result.stdout == b""
    [line] = error_lines(stderr)
    assert line.startswith("Error: --threads must be 1..") and line.endswith(f"got {threads}")
    assert not (tmp_path / "out").exists()  # refused before a run directory was made


def test_the_thread_bound_follows_the_machine(monkeypatch):
    monkeypatch.setattr(hardware.os, "cpu_count", lambda: 2)
    assert hardware.max_threads() == 2 * hardware.THREADS_PER_CPU
    assert hardware.check_threads(8) == 8
    for refused in (0, -1, 9, 10**30, True):
        with pytest.raises(UsageProblem, match=r"--threads must be 1\.\.8 on this machine"):
            hardware.check_threads(refused)


def test_a_huge_omp_num_threads_is_refused_too(trained_run, tmp_path):
    text = tmp_path / "text.txt"
    text.write_text("the quick brown fox\n" * 20)
    result = subprocess.run(
        [sys.executable, "-m", "charrnn", "eval", str(trained_run), str(text)],
        env={**os.environ, "OMP_NUM_THREADS": "100000"},
        capture_output=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    [line] = error_lines(result.stderr.decode())
    assert line.startswith("Error: OMP_NUM_THREADS must be 1..") and line.endswith("got 100000")


@pytest.mark.parametrize("command", ["explain", "eval", "score"])
@pytest.mark.parametrize("source", ["file", "stdin"])
def test_an_empty_text_exits_1_for_every_command_that_reads_one(trained_run, tmp_path, command, source):
    """explain exited 2 (a usage error) where eval and score exit 1 (an input fault)."""
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    result = run_cli(command, str(trained_run), str(empty) if source == "file" else "-", input="")
    assert result.exit_code == 1, result.stderr
    [line] = error_lines(result.stderr)
    assert line.startswith("Error: ") and "is empty" in line
    assert ("empty.txt" if source == "file" else "standard input") in line


@pytest.mark.parametrize("temperature", ["1e38", "1e308"])
def test_a_huge_temperature_samples_evenly_without_warnings(trained_run, temperature):
    """1e308 warned of an overflow when NumPy cast it to float32; its limit is the uniform choice."""
    text = sample(trained_run, "--temperature", temperature, "--seed", "3", "--length", "3000")[3:]
    counts = {char: text.count(char) for char in set(text)}
    assert len(counts) >= 25 and max(counts.values()) < 3 * min(counts.values())  # 28 chars, ~107 each


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["sample", ""], 'the model is an empty name ("")'),
        (["info", ""], 'the model is an empty name ("")'),
        (["eval", "{run}", ""], 'the file is an empty name ("")'),
        (["score", "{run}", ""], 'the file is an empty name ("")'),
        (["explain", "{run}", ""], 'the text file is an empty name ("")'),
        (["runs", ""], 'DIR is an empty name ("")'),
        (["plot", "", "-o", "p.png"], 'a run is an empty name ("")'),
        (["train", ""], 'CORPUS is an empty name ("")'),
        (["train", "{text}", "--out", ""], '--out is an empty name ("")'),
        (["train", "{text}", "--cache-dir", ""], '--cache-dir is an empty name ("")'),
        (["train", "{text}", "--init-from", ""], 'the model is an empty name ("")'),
    ],
    ids=lambda value: "-".join(part or '""' for part in value) if isinstance(value, list) else "",
)
def test_an_empty_path_is_refused_not_read_as_the_current_folder(trained_run, in_tmp, arguments, message):
    """Path("") is ".": `train ""` trained on every .txt file of the current folder, `--out ""` would
    have made it the run directory, and `eval run ""` said ". is a directory"."""
    (in_tmp / "text.txt").write_text("the quick brown fox jumps over the lazy dog.\n" * 50)
    (in_tmp / "metrics.jsonl").write_text('{"step": 1, "val_bpc": 2.0}\n')
    result = run_cli(*(part.format(run=trained_run, text="text.txt") for part in arguments))
    assert result.exit_code == 2, result.stderr
    [line] = error_lines(result.stderr)
    assert line.startswith(f"Error: {message}")
    assert sorted(path.name for path in in_tmp.iterdir()) == ["metrics.jsonl", "text.txt"]  # nothing written


def test_an_empty_unit_is_refused_not_ignored(trained_run, tmp_path):
    """explain --unit "" coloured by surprise as if no unit had been given."""
    text = tmp_path / "text.txt"
    text.write_text("the quick brown fox\n")
    result = run_cli("explain", str(trained_run), str(text), "--unit", "")
    assert result.exit_code == 2
    [line] = error_lines(result.stderr)
    assert line.startswith("Error: --unit must look like LAYER:INDEX") and line.endswith("got ''")


def test_weights_that_overflow_are_refused_before_they_are_evaluated(tmp_path):
    """--lr 1e308 overflowed the weights at the first step: the preview sampled them (NumPy's
    "invalid value" warning) and metrics.jsonl got a record of nulls before the save refused them."""
    corpus = tmp_path / "c.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog.\n" * 50)
    out = tmp_path / "run"
    result = run_cli(
        "train",
        str(corpus),
        "--out",
        str(out),
        "--max-steps",
        "3",
        "--eval-every",
        "1",
        "--lr",
        "1e308",
        *TINY_MODEL_OPTIONS,
    )
    assert result.exit_code == 1
    assert "Warning" not in result.stderr
    assert error_lines(result.stderr)[-1] == (
        f"Error: the weights became non-finite at step 1; nothing was saved over the last good "
        f"checkpoint in {out}"
    )
    assert not (out / "metrics.jsonl").exists() or (out / "metrics.jsonl").read_text() == ""


@pytest.mark.parametrize("option, bound", [("--seq-len", "1..1000000"), ("--batch-size", "1..1000000")])
def test_a_window_size_beyond_its_bound_names_the_bound(tmp_path, option, bound):
    """--seq-len 99999999999999999999 said "must be >= 1"."""
    corpus = tmp_path / "c.txt"
    corpus.write_text("the quick brown fox\n" * 50)
    result = run_cli("train", str(corpus), "--out", str(tmp_path / "run"), option, "99999999999999999999")
    assert result.exit_code == 2
    assert error_lines(result.stderr) == [f"Error: {option} must be {bound}, got 99999999999999999999"]


@pytest.fixture
def overflowing_run(trained_run, tmp_path):
    """A run whose output layer holds finite weights too large for float32 arithmetic (3.4e38)."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    run = tmp_path / "overflowing"
    run.mkdir()
    source = trained_run / "best.safetensors"
    with safe_open(str(source), "pt") as handle:
        metadata = handle.metadata()
    tensors = load_file(str(source))
    tensors["head.weight"] = (tensors["head.weight"] * 1e39).clamp(-3.4e38, 3.4e38)
    save_file(tensors, str(run / "best.safetensors"), metadata=metadata)
    return run


@pytest.mark.parametrize(
    "options",
    [
        (),
        ("--greedy",),
        ("--temperature", "1e-40"),
        ("--top-p", "0.5"),
        ("--num-samples", "3", "--format", "jsonl"),
    ],
)
def test_a_model_whose_output_overflows_is_one_error_not_garbage(overflowing_run, options):
    """Its logits were inf and nan: sampling wrote "zzzz" (or NaN log-probabilities) with NumPy warnings."""
    result = run_cli("sample", str(overflowing_run), "-n", "50", "--seed", "1", *options)
    assert result.exit_code == 1
    assert error_lines(result.stderr) == [
        "Error: the model's next-token scores are not finite numbers: its weights are too large for "
        "float32 arithmetic (a damaged checkpoint)"
    ]
    assert "zzz" not in result.stdout and "NaN" not in result.stdout
