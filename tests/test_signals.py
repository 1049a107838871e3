"""Real signals and real kills: Ctrl-C / SIGTERM save and say how to resume;
SIGKILL never breaks a checkpoint."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import REPO, TINY_MODEL_OPTIONS, error_lines, run_cli

from charrnn.atomic import TEST_PAUSE_ENV, is_temp_file, temp_name
from charrnn.cli.signals import StopRequest
from charrnn.store.checkpoint import load_training_state, load_weights
from charrnn.store.run_dir import RunDir

ENDLESS = ["--max-steps", "1000000", "--eval-every", "1000000", "--max-time", "10m"]


class TrainingProcess:
    """`python -m charrnn ARGS` in the background, with its stderr collected line by line."""

    def __init__(self, *args: str, pause_in_save: float | None = None) -> None:
        env = dict(os.environ)
        env.pop(TEST_PAUSE_ENV, None)
        if pause_in_save is not None:
            env[TEST_PAUSE_ENV] = str(pause_in_save)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "charrnn", *args],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for raw in self.process.stderr:
            self.lines.append(raw.decode("utf-8", "replace").rstrip("\n"))

    def wait_for(self, condition, what: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if self.process.poll() is not None and not condition():
                raise AssertionError(f"process ended ({self.process.returncode}) before {what}: {self.lines}")
            if time.monotonic() > deadline:
                self.process.kill()
                raise AssertionError(f"timed out waiting for {what}: {self.lines}")
            time.sleep(0.02)

    def wait_until_training(self) -> None:
        self.wait_for(
            lambda: any(line.startswith("run directory:") for line in self.lines), "training to start"
        )

    def finish(self, timeout: float = 60) -> int:
        code = self.process.wait(timeout=timeout)
        self._reader.join(timeout=5)
        return code


class FakeConsole:
    """What StopRequest needs of the console: whether stderr's reader is gone, and print."""

    def __init__(self) -> None:
        self.reader_gone = False
        self.printed: list[str] = []

    def print(self, text: str, **options: object) -> None:
        self.printed.append(text)


# -- the handler itself, called as Python would call it (no process, no waiting) ---------------


def test_a_first_signal_asks_for_a_saved_stop_and_a_second_ctrl_c_stops_at_once():
    console = FakeConsole()
    stop = StopRequest(console)
    assert not stop()
    stop.handle(signal.SIGTERM)
    assert stop() and stop.exit_code == 143
    assert console.printed == ["stopping after this step and saving (Ctrl-C again to stop at once)"]
    stop.handle(signal.SIGTERM)  # a second SIGTERM is still the orderly stop
    with pytest.raises(KeyboardInterrupt):
        stop.handle(signal.SIGINT)


def test_ctrl_c_exits_130_and_a_reader_that_went_away_asks_to_stop_too():
    console = FakeConsole()
    stop = StopRequest(console)
    stop.handle(signal.SIGINT)
    assert stop.exit_code == 130
    quiet = StopRequest(FakeConsole())
    quiet._console.reader_gone = True
    assert quiet() and quiet.reader_gone and quiet.signal_number is None


def test_the_handlers_are_installed_only_inside_the_block():
    stop = StopRequest(FakeConsole())
    before = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM)}
    with stop.installed():
        assert signal.getsignal(signal.SIGINT) == stop.handle
        assert signal.getsignal(signal.SIGTERM) == stop.handle
    assert {number: signal.getsignal(number) for number in before} == before


# -- real processes ------------------------------------------------------------------------------


def _temp_files(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if is_temp_file(p)]


@pytest.mark.parametrize("signal_number, exit_code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_finishes_the_step_saves_and_says_how_to_resume(
    pattern_corpus, tmp_path, signal_number, exit_code
):
    out = tmp_path / "run"
    training = TrainingProcess("train", str(pattern_corpus), "--out", str(out), *ENDLESS, *TINY_MODEL_OPTIONS)
    training.wait_until_training()
    # However many steps have run by now (none, or some), the step in progress finishes and is saved.
    training.process.send_signal(signal_number)
    assert training.finish() == exit_code
    resume_lines = [line for line in training.lines if "resume with" in line]
    assert resume_lines == [
        f"interrupted at step {load_training_state(out / 'state.pt')['step']}, "
        f"saved in {out}; resume with: charrnn train --resume {out}"
    ]
    assert not any("Traceback" in line for line in training.lines)
    saved_step = load_training_state(out / "state.pt")["step"]
    assert load_weights(out / "latest.safetensors").info["step"] == saved_step
    assert not _temp_files(out)
    # The printed command works, and continues from the saved step.
    result = run_cli("train", "--resume", str(out), "--max-steps", str(saved_step + 3))
    assert result.exit_code == 0, result.stderr
    assert f"resuming at step {saved_step}" in result.stderr


def test_stderr_piped_to_head_saves_and_ends_quietly(pattern_corpus, tmp_path):
    # `charrnn train ... 2>&1 | head`: once head has its lines, the run saves and ends with exit 0
    # like `sample | head`, instead of dying between checkpoints (or training on with no reader).
    out = tmp_path / "run"
    command = " ".join(
        [
            sys.executable,
            "-m",
            "charrnn",
            "train",
            str(pattern_corpus),
            "--out",
            str(out),
            *ENDLESS,
            *TINY_MODEL_OPTIONS,
        ]
    )
    finished = subprocess.run(
        ["bash", "-c", f"set -o pipefail; {command} 2>&1 >/dev/null | head -2"],
        capture_output=True,
        timeout=120,
        cwd=REPO,
    )
    assert finished.returncode == 0, finished.stderr
    assert finished.stdout.decode().splitlines()[1] == f"run directory: {out}"
    saved_step = load_training_state(out / "state.pt")["step"]
    assert 1 <= saved_step < 1000
    assert load_weights(out / "latest.safetensors").info["step"] == saved_step
    result = run_cli("train", "--resume", str(out), "--max-steps", str(saved_step + 3))
    assert result.exit_code == 0, result.stderr
    assert f"resuming at step {saved_step}" in result.stderr


def _train_first_checkpoint(corpus: Path, out: Path) -> dict[str, bytes]:
    result = run_cli(
        "train",
        str(corpus),
        "--out",
        str(out),
        "--max-steps",
        "10",
        "--eval-every",
        "10",
        *TINY_MODEL_OPTIONS,
    )
    assert result.exit_code == 0, result.stderr
    return {
        name: (out / name).read_bytes() for name in ("state.pt", "latest.safetensors", "best.safetensors")
    }


def test_second_ctrl_c_during_the_save_stops_at_once_and_keeps_the_last_checkpoint(pattern_corpus, tmp_path):
    out = tmp_path / "run"
    before = _train_first_checkpoint(pattern_corpus, out)
    training = TrainingProcess("train", "--resume", str(out), *ENDLESS, pause_in_save=60)
    training.wait_until_training()
    training.process.send_signal(signal.SIGINT)  # first: save and stop ...
    training.wait_for(lambda: bool(_temp_files(out)), "the save to begin")
    started = time.monotonic()
    training.process.send_signal(signal.SIGINT)  # ... second: stop now, mid-save
    assert training.finish() == 130
    assert time.monotonic() - started < 10  # did not sit out the 60 s pause
    assert training.lines[-1] == (
        f"Error: stopped at once: the last complete checkpoint in {out} is "
        f"intact; resume with: charrnn train --resume {out}"
    )
    assert {name: (out / name).read_bytes() for name in before} == before
    assert not _temp_files(out)  # the abandoned temp file was removed
    load_training_state(out / "state.pt")


def test_sigkill_while_saving_leaves_previous_checkpoint_and_next_run_cleans_up(pattern_corpus, tmp_path):
    out = tmp_path / "run"
    before = _train_first_checkpoint(pattern_corpus, out)
    training = TrainingProcess("train", "--resume", str(out), *ENDLESS, pause_in_save=60)
    training.wait_until_training()
    training.process.send_signal(signal.SIGINT)
    training.wait_for(lambda: bool(_temp_files(out)), "the save to begin")  # and paused inside it
    training.process.kill()
    assert training.finish() == -signal.SIGKILL
    leftovers = _temp_files(out)
    assert leftovers, "the kill should have left the temp file of the save it interrupted"
    assert {name: (out / name).read_bytes() for name in before} == before
    assert load_training_state(out / "state.pt")["step"] == 10
    assert load_weights(out / "latest.safetensors").info["step"] == 10
    # The kernel released the dead process's lock; the next run removes the stray file and goes on.
    result = run_cli("train", "--resume", str(out), "--max-steps", "12")
    assert result.exit_code == 0, result.stderr
    assert not _temp_files(out)
    assert load_training_state(out / "state.pt")["step"] == 12


def test_second_training_into_the_same_run_dir_stops_at_once(pattern_corpus, tmp_path):
    out = tmp_path / "run"
    _train_first_checkpoint(pattern_corpus, out)
    holder = RunDir(out)
    holder.lock()  # as a live training would
    live_temp = out / temp_name("latest.safetensors")
    live_temp.write_bytes(b"the live training is writing this")
    try:
        for args in (
            ["train", "--resume", str(out)],
            ["train", str(pattern_corpus), "--out", str(out), *TINY_MODEL_OPTIONS],
        ):
            started = time.monotonic()
            result = run_cli(*args)
            assert result.exit_code == 1
            assert error_lines(result.stderr) == [
                f"Error: another training is already writing to {out} (pid {os.getpid()}); "
                "wait for it to finish or choose another --out"
            ]
            assert time.monotonic() - started < 5
        assert live_temp.exists(), "a second training must not touch the live one's temp files"
    finally:
        holder.unlock()
    assert run_cli("train", "--resume", str(out), "--max-steps", "11").exit_code == 0
    assert not live_temp.exists()  # once the lock is ours, leftovers are cleaned up
