"""Training under torchrun: 2 processes on CPU (gloo, loopback only), restarts, signals.

Run these alone with `pytest -m distributed`; they also run with the rest of the suite.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import TINY_MODEL_OPTIONS, error_lines, run_charrnn_process

from charrnn.distributed import DistributedError, World

pytestmark = pytest.mark.distributed

SENTENCES = [
    "the quick brown fox jumps over the lazy dog.\n",
    "pack my box with five dozen jugs!\n",
    "how vexingly quick daft zebras jump?\n",
    "sphinx of black quartz, judge my vow.\n",
]
# Per process: 2 processes x batch 4 = the 1-process batch of 8 (TINY_MODEL_OPTIONS).
PER_PROCESS_OPTIONS = [*TINY_MODEL_OPTIONS, "--batch-size", "4"]
# fp32: under bf16 autocast the two gradient reductions round differently, beyond the tolerance.
RUN_OPTIONS = [
    "--max-steps",
    "100",
    "--eval-every",
    "20",
    "--lr",
    "0.01",
    "--warmup-steps",
    "5",
    "--precision",
    "fp32",
]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _torchrun_command(*args: str, processes: int = 2, max_restarts: int = 0) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        str(processes),
        "--rdzv-backend",
        "c10d",
        "--rdzv-endpoint",
        f"127.0.0.1:{_free_port()}",
        "--max-restarts",
        str(max_restarts),
        "-m",
        "charrnn",
        *args,
    ]


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _worker_pids(launcher: subprocess.Popen) -> dict[int, int]:
    """rank -> pid of the workers torchrun started (its direct children)."""
    children = Path(f"/proc/{launcher.pid}/task/{launcher.pid}/children").read_text().split()
    ranks = {}
    for pid in map(int, children):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        for entry in environ:
            if entry.startswith(b"RANK="):
                ranks[int(entry[5:])] = pid
    return ranks


def _start_and_kill_rank_1(tmp_path: Path, run: Path, corpus: Path, max_restarts: int):
    """Start a 2-process run, SIGKILL rank 1 right after the first checkpoint;
    return (launcher, kill time)."""
    command = _torchrun_command(
        "train", str(corpus), "--out", str(run), *RUN_OPTIONS, *PER_PROCESS_OPTIONS, max_restarts=max_restarts
    )
    # The launcher has its own copy of the descriptor: ours can close once it has started.
    with open(tmp_path / "launcher.err", "wb") as launcher_err:
        launcher = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=launcher_err)
    deadline = time.monotonic() + 60
    while not (run / "state.pt").exists():
        assert launcher.poll() is None, (tmp_path / "launcher.err").read_text()
        assert time.monotonic() < deadline, "no checkpoint within 60 s"
        time.sleep(0.02)
    os.kill(_worker_pids(launcher)[1], signal.SIGKILL)
    return launcher, time.monotonic()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "pangrams.txt"
    path.write_text("".join(SENTENCES) * 60, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory, corpus) -> tuple[Path, subprocess.CompletedProcess]:
    """One uninterrupted 2-process run (the reference for the other tests)."""
    folder = tmp_path_factory.mktemp("ddp")
    run = folder / "run"
    result = subprocess.run(
        _torchrun_command("train", str(corpus), "--out", str(run), *RUN_OPTIONS, *PER_PROCESS_OPTIONS),
        cwd=folder,
        capture_output=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr.decode()[-3000:]
    return run, result


def test_world_comes_from_torchrun_environment():
    assert World.from_env({}) == World()
    world = World.from_env({"RANK": "1", "LOCAL_RANK": "1", "WORLD_SIZE": "2"})
    assert (world.rank, world.world_size, world.is_distributed, world.is_writer) == (1, 2, True, False)
    with pytest.raises(DistributedError, match="outside WORLD_SIZE"):
        World.from_env({"RANK": "2", "WORLD_SIZE": "2"})


def test_two_processes_match_one_process_with_the_same_global_batch(two_process_run, corpus, tmp_path):
    run, result = two_process_run
    stderr = result.stderr.decode()
    assert result.stdout == b""
    # Only rank 0 writes: one header, one line per evaluation, one set of files.
    assert stderr.count("charrnn: ") == 1 and "x 2 processes" in stderr
    metrics = _metrics(run)
    assert [record["step"] for record in metrics] == [20, 40, 60, 80, 100]
    assert sorted(p.name for p in run.iterdir() if not p.name.startswith(".")) == [
        "best.safetensors",
        "end.json",
        "latest.safetensors",
        "metrics.jsonl",
        "state.pt",
    ]
    state = torch.load(run / "state.pt", weights_only=True)
    assert state["world_size"] == 2 and state["batch_size"] == 4
    assert state["stream_groups"] == 8
    assert state["hidden"][0].shape[1] == 8 * 8  # both ranks' streams of every group are saved

    single = tmp_path / "single"
    alone = run_charrnn_process(
        "train", str(corpus), "--out", str(single), *RUN_OPTIONS, *TINY_MODEL_OPTIONS, cwd=tmp_path
    )
    assert alone.returncode == 0, alone.stderr.decode()
    for together, by_itself in zip(metrics, _metrics(single), strict=True):
        assert together["val_loss"] == pytest.approx(by_itself["val_loss"], rel=1e-4)
        assert together["train_loss"] == pytest.approx(by_itself["train_loss"], rel=1e-4)
    assert metrics[-1]["val_loss"] < metrics[0]["val_loss"] - 0.5  # it learned something


def test_resuming_with_another_number_of_processes_is_refused(two_process_run, corpus, tmp_path):
    run, _ = two_process_run
    before = (run / "state.pt").read_bytes()
    result = run_charrnn_process(
        "train", str(corpus), "--out", str(run), "--resume", "--max-steps", "120", cwd=tmp_path
    )
    lines = error_lines(result.stderr.decode())
    assert result.returncode == 1
    assert len(lines) == 1 and lines[0].startswith(
        "Error: cannot resume: this run was trained with 2 processes but this launch has 1 process"
    )
    assert (run / "state.pt").read_bytes() == before


def test_killed_worker_is_restarted_and_the_run_resumes_where_it_was(two_process_run, corpus, tmp_path):
    reference, _ = two_process_run
    run = tmp_path / "run"
    launcher, _ = _start_and_kill_rank_1(tmp_path, run, corpus, max_restarts=1)
    launcher.wait(timeout=120)
    stderr = (tmp_path / "launcher.err").read_text()
    assert launcher.returncode == 0, stderr[-3000:]
    assert "resuming at step" in stderr
    metrics = _metrics(run)
    assert metrics[-1]["step"] == 100
    # Exact resume: the restarted run ends where the uninterrupted one did.
    assert metrics[-1]["val_loss"] == pytest.approx(_metrics(reference)[-1]["val_loss"], rel=1e-4)


def test_survivor_of_a_dead_worker_stops_promptly_with_one_error_line(corpus, tmp_path):
    run = tmp_path / "run"
    launcher, killed_at = _start_and_kill_rank_1(tmp_path, run, corpus, max_restarts=0)
    launcher.wait(timeout=60)
    # torchrun would SIGKILL a survivor that ignored its SIGTERM only after 30 s.
    assert time.monotonic() - killed_at < 25
    assert launcher.returncode != 0
    stderr = (tmp_path / "launcher.err").read_text()
    # The survivor says what happened in one line; the traceback after it is torchrun's own.
    # Which line depends on who notices first: the survivor's next collective fails ("lost
    # contact"), or torchrun's SIGTERM finds it blocked and the watchdog ends it.
    assert "Error: lost contact with another training process" in stderr or (
        "Error: still running 20 s after SIGTERM" in stderr
    ), stderr[-3000:]
    assert "[rank0]: Traceback" not in stderr and "RuntimeError" not in stderr
    assert (run / "state.pt").is_file() and (run / "best.safetensors").is_file()


def test_a_worker_ends_with_its_exit_code_and_its_message_flushed(corpus, tmp_path):
    # Workers skip the interpreter's shutdown (distributed.end_worker_process); the exit code
    # and the one error line must come through all the same.
    environment = {**os.environ, "RANK": "1", "LOCAL_RANK": "1", "WORLD_SIZE": "2"}
    result = subprocess.run(
        [sys.executable, "-m", "charrnn", "train", str(corpus)],
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert error_lines(result.stderr.decode()) == [
        "Error: under torchrun, pass --out RUN_DIR: every process and every restart must find the "
        "same run directory"
    ]


def test_a_worker_that_cannot_stop_after_sigterm_is_ended_with_one_line(tmp_path):
    # A survivor blocked in a collective with a dead peer cannot run Python's signal handler;
    # the watchdog ends it after the grace period, and says so (it used to exit silently).
    script = (
        "import signal, time\n"
        "from charrnn.distributed import TerminationWatchdog\n"
        "signal.signal(signal.SIGTERM, lambda *_: None)  # noted, but the stop never comes\n"
        "TerminationWatchdog(grace=0.3).install()\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path
    )
    assert process.stdout is not None and process.stdout.readline() == b"ready\n"
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 128 + signal.SIGTERM
    assert error_lines(stderr.decode()) == [
        "Error: still running 0.3 s after SIGTERM (waiting for another training process?): "
        "stopped without saving; the last checkpoint is intact"
    ]
