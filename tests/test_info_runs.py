"""`charrnn info` and `charrnn runs`: what a checkpoint holds, and every run ranked with its state."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import PATTERN, TINY_MODEL_OPTIONS, error_lines, run_charrnn_process, run_cli

from charrnn.api import load
from charrnn.errors import CheckpointError
from charrnn.model import count_parameters
from charrnn.store.run_dir import RunDir


@pytest.fixture(scope="module")
def runs_folder(tmp_path_factory) -> Path:
    """runs/ with a short run and a longer (better) one, both finished."""
    folder = tmp_path_factory.mktemp("runs-root")
    corpus = folder / "pattern.txt"
    corpus.write_text(PATTERN * 100, encoding="utf-8")
    for name, steps in (("short", "5"), ("longer", "60")):
        result = run_cli(
            "train",
            str(corpus),
            "--out",
            str(folder / "runs" / name),
            "--max-steps",
            steps,
            "--lr",
            "0.01",
            "--warmup-steps",
            "5",
            "--precision",
            "fp32",
            *TINY_MODEL_OPTIONS,
        )
        assert result.exit_code == 0, result.stderr
    return folder / "runs"


def test_info_shows_the_checkpoint_at_a_glance(trained_run):
    result = run_cli("info", str(trained_run))
    assert result.exit_code == 0 and result.stderr == ""
    text = result.stdout
    for expected in (
        "lstm, 1 layers x 32 units",
        "char, vocabulary",
        "corpus sha256",
        "best val bits/char",
        "best.safetensors",
        "metrics.jsonl",
        "state.pt",
        "steps",
        "150",
    ):
        assert expected in text


def test_info_json_holds_the_figures(trained_run):
    answer = json.loads(run_cli("info", str(trained_run / "best.safetensors"), "--json").stdout)
    model = load(trained_run, device="cpu")
    assert answer["model"]["parameters"] == count_parameters(model.module)
    assert answer["tokenizer"]["vocab_size"] == model.tokenizer.vocab_size
    assert answer["tokenizer"]["chars"] == "⏎␠.abcdefghijklmnopqrstuvwxyz"
    metrics = [json.loads(line) for line in (trained_run / "metrics.jsonl").read_text().splitlines()]
    assert answer["training"]["best_val_bpc"] == pytest.approx(min(m["val_bpc"] for m in metrics))
    assert answer["training"]["corpus"] == "pattern"
    assert len(answer["training"]["corpus_fingerprint"]) == 64
    assert {entry["name"] for entry in answer["files"]} >= {"best.safetensors", "state.pt", "metrics.jsonl"}
    assert model.info == answer


def test_info_of_a_damaged_or_missing_model_is_one_error_line(trained_run, tmp_path):
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes((trained_run / "best.safetensors").read_bytes()[:-10])
    result = run_cli("info", str(cut))
    assert result.exit_code == 1
    [line] = error_lines(result.stderr)
    assert line.startswith(f"Error: {cut} is corrupted (it holds ")
    damaged = tmp_path / "model.safetensors"
    damaged.write_bytes(b"not a checkpoint at all")
    result = run_cli("info", str(damaged))
    assert result.exit_code == 1
    assert error_lines(result.stderr) == [
        f"Error: {damaged} is corrupted or not a charrnn checkpoint (bad header length)"
    ]
    missing = run_cli("info", str(tmp_path / "nope.safetensors"))
    assert error_lines(missing.stderr) == [f"Error: checkpoint not found: {tmp_path / 'nope.safetensors'}"]


def test_runs_are_sorted_by_best_bits_per_char_with_their_state(runs_folder):
    result = run_cli("runs", str(runs_folder))
    assert result.exit_code == 0 and result.stderr == ""
    lines = result.stdout.splitlines()
    assert lines[0].split()[:3] == ["run", "model", "tokeniser"]
    assert [line.split()[0] for line in lines[1:]] == ["longer", "short"]
    assert all(line.endswith("finished") for line in lines[1:])
    rows = json.loads(run_cli("runs", str(runs_folder), "--json").stdout)
    assert [row["name"] for row in rows] == ["longer", "short"]
    assert rows[0]["best_val_bpc"] < rows[1]["best_val_bpc"]
    assert (
        rows[0]["steps"] == 60 and rows[0]["model"] == "lstm 1x32" and rows[0]["tokenizer"].startswith("char")
    )


def test_training_records_how_it_ended(runs_folder):
    assert RunDir(runs_folder / "longer").read_end() == {"reason": "done", "step": 60}


def test_a_live_lock_means_in_progress(runs_folder):
    run = RunDir(runs_folder / "short")
    run.lock()
    try:
        assert run.is_locked()
        states = {
            row["name"]: row["state"]
            for row in json.loads(run_cli("runs", str(runs_folder), "--json").stdout)
        }
        assert states == {"short": "in progress", "longer": "finished"}
    finally:
        run.unlock()
    assert not run.is_locked()
    # Held by another process, as a training holds it.
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from charrnn.store.run_dir import RunDir; r = RunDir(sys.argv[1]); "
            "r.lock(); print('locked', flush=True); sys.stdin.read()",
            str(run.path),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout.readline() == b"locked\n"
        assert run.is_locked()
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    assert not run.is_locked()


def test_an_interrupted_run_is_stopped(runs_folder, tmp_path):
    import shutil

    copy = tmp_path / "runs" / "copy"
    shutil.copytree(runs_folder / "longer", copy)
    RunDir(copy).record_end("interrupted", 60)
    assert json.loads(run_cli("runs", str(copy.parent), "--json").stdout)[0]["state"] == "stopped"
    # Without a record, a run whose --max-steps was reached is finished.
    (copy / "end.json").unlink()
    assert json.loads(run_cli("runs", str(copy.parent), "--json").stdout)[0]["state"] == "finished"
    # A record of an earlier session (another step) does not count.
    RunDir(copy).record_end("interrupted", 30)
    assert json.loads(run_cli("runs", str(copy.parent), "--json").stdout)[0]["state"] == "finished"


def test_runs_of_a_missing_folder_is_one_error_line(tmp_path):
    result = run_cli("runs", str(tmp_path / "nowhere"))
    assert result.exit_code == 1
    assert error_lines(result.stderr) == [
        f"Error: no runs folder {tmp_path / 'nowhere'}: train a model first, or name the folder"
    ]


def test_a_training_takes_its_lock_even_while_someone_is_looking(tmp_path):
    # `charrnn runs` looks by taking a shared lock for an instant; a training starting at that
    # moment must wait that instant out, not report the folder as busy.
    import fcntl
    import threading

    run = RunDir(tmp_path / "run")
    run.prepare()
    # The handle outlives this block on purpose: the timer thread closes it while lock() waits.
    looker = open(run.path / ".lock", "a+")  # noqa: SIM115
    fcntl.flock(looker.fileno(), fcntl.LOCK_SH)
    threading.Timer(0.05, looker.close).start()
    run.lock()
    try:
        assert run.is_locked()
    finally:
        run.unlock()


def test_stop_reasons_keep_the_strings_that_run_files_hold():
    from charrnn.events import StopReason

    # end.json files of old runs hold these strings: they must read back as the same reasons.
    assert [reason.value for reason in StopReason] == ["done", "time", "interrupted", "early-stop"]
    assert StopReason("early-stop") is StopReason.EARLY_STOP
    assert str(StopReason.TIME) == "time" and json.dumps({"reason": StopReason.DONE}) == '{"reason": "done"}'
    assert [reason.finished for reason in StopReason] == [True, True, False, True]


def test_a_header_longer_than_allowed_is_refused_without_reading_it(tmp_path):
    """info read the 100 MB a header may hold before it refused a longer one."""
    import struct
    import tracemalloc

    from charrnn.store.checkpoint import MAX_HEADER_BYTES
    from charrnn.store.describe import read_header

    path = tmp_path / "big.safetensors"
    with open(path, "wb") as handle:
        handle.write(struct.pack("<Q", MAX_HEADER_BYTES + 1))
        handle.truncate(MAX_HEADER_BYTES + 100)  # sparse: zeros that take no disk
    tracemalloc.start()
    try:
        with pytest.raises(CheckpointError, match="bad header length"):
            read_header(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


@pytest.mark.parametrize(
    "command",
    [
        ["info", "MODEL"],
        ["sample", "MODEL", "--length", "5"],
        ["eval", "MODEL", "-"],
        ["export", "MODEL", "-o", "x.onnx"],
    ],
)
def test_a_model_path_that_is_a_fifo_is_refused_at_once(tmp_path, command):
    # Reading a FIFO blocks until something writes to it: `info` waited forever.
    fifo = tmp_path / "model.safetensors"
    os.mkfifo(fifo)
    arguments = [str(fifo) if argument == "MODEL" else argument for argument in command]
    result = run_charrnn_process(*arguments, input=b"text", cwd=tmp_path, timeout=60)
    assert result.returncode == 1
    assert error_lines(result.stderr.decode()) == [
        f"Error: {fifo} is a FIFO (named pipe), not a checkpoint: give a .safetensors file or a run directory"
    ]
    assert stat.S_ISFIFO(fifo.stat().st_mode) and not (tmp_path / "x.onnx").exists()
