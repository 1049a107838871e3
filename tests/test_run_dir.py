"""The run directory: which folder a training takes, its lock, what it refuses to overwrite, pruning."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY_MODEL_OPTIONS, error_lines, run_cli

from charrnn.store.run_dir import RunDir
from charrnn.training import session

QUICK = ["--max-steps", "2", "--eval-every", "2", *TINY_MODEL_OPTIONS]


def _files(folder: Path) -> dict[str, bytes]:
    """Every file of a folder (hidden ones too) with its bytes."""
    return {path.name: path.read_bytes() for path in folder.iterdir() if path.is_file()}


def _scan_must_not_run(*args, **kwargs):
    pytest.fail("the corpus was read before the run directory was locked")


# -- choosing the default run directory --------------------------------------------------------


def test_default_run_skips_a_folder_locked_by_a_training_that_has_not_saved_yet(in_tmp, pattern_corpus):
    live = RunDir(in_tmp / "runs" / "pattern")
    live.prepare()
    live.lock()  # a live training still reading its corpus: only its lock is there
    try:
        result = run_cli("train", str(pattern_corpus), *QUICK)
    finally:
        live.unlock()
    assert result.exit_code == 0, result.stderr
    assert (in_tmp / "runs" / "pattern-2" / "state.pt").exists()
    assert [path.name for path in live.path.iterdir()] == [".lock"]


def test_default_run_skips_a_folder_locked_by_another_live_process(in_tmp, pattern_corpus):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from charrnn.store.run_dir import RunDir; "
            "run = RunDir('runs/pattern'); run.prepare(); run.lock(); print('locked', flush=True); "
            "sys.stdin.read()",
        ],
        cwd=in_tmp,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline() == "locked\n"
        result = run_cli("train", str(pattern_corpus), *QUICK)
    finally:
        holder.stdin.close()  # the holder ends, and the kernel frees its lock
        holder.wait(timeout=30)
    assert result.exit_code == 0, result.stderr
    assert (in_tmp / "runs" / "pattern-2" / "state.pt").exists()
    assert not (in_tmp / "runs" / "pattern" / "state.pt").exists()


def test_default_run_skips_folders_in_use_and_folders_holding_runs(in_tmp, pattern_corpus, trained_run):
    shutil.copytree(trained_run, in_tmp / "runs" / "pattern")  # a finished run
    weights_only = in_tmp / "runs" / "pattern-2"  # weights someone put there
    weights_only.mkdir()
    shutil.copy(trained_run / "best.safetensors", weights_only)
    live = RunDir(in_tmp / "runs" / "pattern-3")
    live.prepare()
    live.lock()
    try:
        result = run_cli("train", str(pattern_corpus), *QUICK)
    finally:
        live.unlock()
    assert result.exit_code == 0, result.stderr
    assert (in_tmp / "runs" / "pattern-4" / "state.pt").exists()
    assert sorted(path.name for path in weights_only.iterdir()) == ["best.safetensors"]


def test_the_default_run_is_locked_before_the_corpus_is_read(in_tmp, pattern_corpus, monkeypatch):
    live = RunDir(in_tmp / "runs" / "pattern")
    live.prepare()
    live.lock()
    real_scan = session._scan
    seen = []

    def scan_after_checking_the_lock(*args, **kwargs):
        # Our own lock on runs/pattern-2 shows as held by this process.
        seen.append(RunDir(in_tmp / "runs" / "pattern-2").live_lock_holder())
        return real_scan(*args, **kwargs)

    monkeypatch.setattr(session, "_scan", scan_after_checking_the_lock)
    try:
        result = run_cli("train", str(pattern_corpus), *QUICK)
    finally:
        live.unlock()
    assert result.exit_code == 0, result.stderr
    assert seen == [str(os.getpid())]


def test_a_stdin_run_is_named_stdin_and_locked_before_stdin_is_read(in_tmp, monkeypatch):
    live = RunDir(in_tmp / "runs" / "stdin")
    live.prepare()
    live.lock()
    real_scan = session._scan

    def scan(*args, **kwargs):
        assert RunDir(in_tmp / "runs" / "stdin-2").live_lock_holder() == str(os.getpid())
        return real_scan(*args, **kwargs)

    monkeypatch.setattr(session, "_scan", scan)
    try:
        result = run_cli("train", "-", *QUICK, input="the quick brown fox jumps over the lazy dog.\n" * 200)
    finally:
        live.unlock()
    assert result.exit_code == 0, result.stderr
    assert (in_tmp / "runs" / "stdin-2" / "state.pt").exists()


def test_out_naming_a_locked_folder_stops_before_reading_the_corpus(tmp_path, pattern_corpus, monkeypatch):
    out = tmp_path / "run"
    live = RunDir(out)
    live.prepare()
    live.lock()
    monkeypatch.setattr(session, "_scan", _scan_must_not_run)
    try:
        for corpus, given_input in ((str(pattern_corpus), None), ("-", "never read\n")):
            result = run_cli("train", corpus, "--out", str(out), *QUICK, input=given_input)
            assert result.exit_code == 1
            assert error_lines(result.stderr) == [
                f"Error: another training is already writing to {out} (pid {os.getpid()}); "
                "wait for it to finish or choose another --out"
            ]
    finally:
        live.unlock()


# -- a folder holding weights but no state -----------------------------------------------------


@pytest.mark.parametrize(
    "left_there", [["best.safetensors"], ["latest.safetensors", "metrics.jsonl"], ["metrics.jsonl"]]
)
def test_out_naming_a_folder_with_a_runs_files_but_no_state_is_refused_untouched(
    tmp_path, pattern_corpus, trained_run, monkeypatch, left_there
):
    out = tmp_path / "run"
    out.mkdir()
    for name in left_there:
        shutil.copy(trained_run / name, out)
    before = _files(out)
    monkeypatch.setattr(session, "_scan", _scan_must_not_run)
    result = run_cli("train", str(pattern_corpus), "--out", str(out), *QUICK)
    assert result.exit_code == 1
    assert error_lines(result.stderr) == [
        f"Error: {out} holds {', '.join(sorted(left_there))} but no state.pt to resume from, and a "
        "new run would overwrite them: choose another --out, or move those files away"
    ]
    assert _files(out) == before  # not even a .lock was added


def test_weights_without_state_in_a_folder_in_use_is_reported_as_in_use(
    tmp_path, pattern_corpus, trained_run
):
    # A live training writes latest.safetensors before state.pt: between the two, the folder is busy.
    out = tmp_path / "run"
    live = RunDir(out)
    live.prepare()
    live.lock()
    shutil.copy(trained_run / "latest.safetensors", out)
    try:
        result = run_cli("train", str(pattern_corpus), "--out", str(out), *QUICK)
    finally:
        live.unlock()
    assert result.exit_code == 1
    assert error_lines(result.stderr) == [
        f"Error: another training is already writing to {out} (pid {os.getpid()}); "
        "wait for it to finish or choose another --out"
    ]


def test_out_naming_a_folder_with_only_a_stale_lock_starts_there(tmp_path, pattern_corpus):
    out = tmp_path / "run"
    out.mkdir()
    (out / ".lock").write_text("12345")  # left by a training that died before saving
    result = run_cli("train", str(pattern_corpus), "--out", str(out), *QUICK)
    assert result.exit_code == 0, result.stderr
    assert (out / "state.pt").exists()


# -- pruning step checkpoints ------------------------------------------------------------------


def test_step_checkpoints_are_pruned_by_step_number_not_by_name(tmp_path):
    run_dir = RunDir(tmp_path)
    steps = [9_999_998, 9_999_999, 10_000_000, 10_000_001]
    for step in steps:
        run_dir.step_weights(step).write_bytes(b"weights")
    (tmp_path / "step-notes.safetensors").write_bytes(b"not a step checkpoint")
    run_dir.prune_step_weights(keep=2)
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        "step-10000000.safetensors",
        "step-10000001.safetensors",
        "step-notes.safetensors",
    ]


def test_keep_zero_removes_every_step_checkpoint(tmp_path):
    run_dir = RunDir(tmp_path)
    for step in (5, 50, 500):
        run_dir.step_weights(step).write_bytes(b"weights")
    run_dir.prune_step_weights(keep=0)
    assert list(tmp_path.iterdir()) == []


def test_a_file_system_that_refuses_locks_is_one_error_line(tmp_path, pattern_corpus, monkeypatch):
    import errno
    import fcntl

    def refuse(fd, operation):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(fcntl, "flock", refuse)
    out = tmp_path / "run"
    result = run_cli("train", str(pattern_corpus), "--out", str(out), *QUICK)
    assert result.exit_code == 1
    assert error_lines(result.stderr) == [
        f"Error: cannot lock run directory {out}: {os.strerror(errno.ENOLCK)}"
    ]
