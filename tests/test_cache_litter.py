"""Temporary files (token cache parts, stdin spools, evaluation spills, atomic writes): one naming
scheme, one sweep. However a process ends, what it left is removed by a later command; a live
process's files stay."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import PATTERN, TINY_MODEL_OPTIONS, error_lines, run_cli
from test_token_cache import _streamed, _write

from charrnn.atomic import (
    TEMP_PREFIX,
    _host_tag,
    _process_start,
    create_temp_file,
    is_temp_file,
    remove_stale_temp_files,
    temp_name,
)


def _finished_process_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def _temp_of(pid: int, label: str, host: str | None = None, start: int | None = None) -> str:
    """The name process `pid` would give a temp file."""
    start = _process_start(pid) if start is None else start
    return f"{TEMP_PREFIX}{host or _host_tag()}-{pid}-{start}-0123abcd-{label}"


def _temps(folder: Path) -> list[Path]:
    return sorted(path for path in folder.iterdir() if is_temp_file(path)) if folder.exists() else []


def _wait_for(predicate, seconds: float = 60) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_every_temp_file_is_named_for_its_machine_and_process(tmp_path):
    descriptor, path = create_temp_file(tmp_path, "a label / with odd characters and a long tail" * 10)
    os.close(descriptor)
    assert is_temp_file(path) and path.name.startswith(f"{TEMP_PREFIX}{_host_tag()}-{os.getpid()}-")
    assert "/" not in path.name[1:] and len(path.name.encode()) < 120  # fits NAME_MAX whatever the label
    assert temp_name("x") != temp_name("x")  # two writes of one file in one process never collide


def test_the_sweep_removes_the_dead_and_keeps_the_living(tmp_path):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        dead = tmp_path / _temp_of(_finished_process_pid(), "stdin.txt")
        live = tmp_path / _temp_of(sleeper.pid, "eval.tokens")
        mine = tmp_path / temp_name("latest.safetensors")
        # A pid that is alive again, but for a later process than the one that made the file.
        reused = tmp_path / _temp_of(sleeper.pid, "x.tokens", start=_process_start(sleeper.pid) - 1)
        elsewhere = tmp_path / _temp_of(_finished_process_pid(), "plot.png", host="0badc0de")
        not_ours = [tmp_path / ".stdin-notes.txt", tmp_path / f"{TEMP_PREFIX}garbled", tmp_path / "keep.txt"]
        for path in (dead, live, mine, reused, elsewhere, *not_ours):
            path.write_text("litter?")
        remove_stale_temp_files(tmp_path)
        assert not dead.exists() and not reused.exists()
        for kept in (live, mine, elsewhere, *not_ours):
            assert kept.exists(), kept.name
    finally:
        sleeper.kill()
        sleeper.wait()
    remove_stale_temp_files(tmp_path)
    assert not live.exists()  # its process is gone now


def test_temp_files_of_a_killed_encoding_are_removed_by_the_next_run(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    dead = _finished_process_pid()
    killed = [cache / _temp_of(dead, "other-0123.tokens"), cache / _temp_of(dead, "other-0123.json")]
    for leftover in killed:
        leftover.write_bytes(b"\x00" * 100)
    live = cache / temp_name("busy-4567.tokens")  # this process is alive: its file stays
    live.write_bytes(b"\x01" * 10)
    _streamed(_write(tmp_path / "corpus.txt", "next run\n" * 50), cache_dir=cache)
    assert not any(leftover.exists() for leftover in killed)
    assert live.exists()


def test_ctrl_c_while_stdin_is_copied_leaves_no_spool(tmp_path):
    from charrnn.data.token_cache import spool_stream

    class InterruptedStream(io.RawIOBase):
        reads = 0

        def readable(self):
            return True

        def readinto(self, buffer):
            self.reads += 1
            if self.reads > 2:
                raise KeyboardInterrupt
            buffer[:5] = b"text\n"
            return 5

    cache = tmp_path / "cache"
    with pytest.raises(KeyboardInterrupt):
        spool_stream(io.BufferedReader(InterruptedStream(), buffer_size=5), cache)
    assert list(cache.iterdir()) == []


def _spools(cache: Path) -> list[Path]:
    return [path for path in _temps(cache) if path.name.endswith("-stdin.txt")]


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm", "kill"])
def test_a_run_stopped_while_copying_stdin_leaves_no_spool_behind(tmp_path, how):
    cache = tmp_path / "cache"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "charrnn",
            "train",
            "-",
            "--out",
            str(tmp_path / "run"),
            "--cache-dir",
            str(cache),
            *TINY_MODEL_OPTIONS,
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=tmp_path,
    )
    try:
        process.stdin.write(b"half of a corpus\n" * 1000)
        process.stdin.flush()
        assert _wait_for(lambda: bool(_spools(cache)))
        signals = {"ctrl-c": signal.SIGINT, "sigterm": signal.SIGTERM, "kill": signal.SIGKILL}
        process.send_signal(signals[how])
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    if how != "kill":
        assert process.returncode == (130 if how == "ctrl-c" else 143)
        expected = "Error: interrupted" if how == "ctrl-c" else "Error: terminated"
        assert error_lines(stderr.decode()) == [expected]
        assert not _temps(cache)
    else:
        assert _spools(cache)  # a killed process cannot clean up...
        _streamed(_write(tmp_path / "next.txt", "next run\n" * 50), cache_dir=cache)
        assert not _temps(cache)  # ...the next run does


# An `eval` that spills its tokens to the cache at once (a tiny threshold), then stalls in the
# evaluation, so a test can stop it while its temporary token file exists.
STALLED_EVAL = textwrap.dedent(
    """
    import sys, time
    import charrnn.inspect.eval_text as eval_text
    eval_text.SPILL_BYTES = 256
    def stalled(*args, **kwargs):
        print("evaluating", file=sys.stderr, flush=True)
        time.sleep(300)
    eval_text.evaluate = stalled
    from charrnn.cli import main
    sys.argv[0] = "charrnn"
    main()
    """
)


@pytest.mark.parametrize("signal_number", [signal.SIGTERM, signal.SIGKILL])
def test_eval_stopped_mid_way_leaves_nothing_a_later_command_does_not_clean(
    trained_run, tmp_path, monkeypatch, signal_number
):
    cache = tmp_path / "cache"
    text = tmp_path / "big.txt"
    text.write_text(PATTERN * 200, encoding="utf-8")  # 9 KB of tokens: far over the threshold
    environment = {**os.environ, "CHARRNN_CACHE_DIR": str(cache)}
    process = subprocess.Popen(
        [sys.executable, "-c", STALLED_EVAL, "eval", str(trained_run), str(text)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=environment,
        cwd=tmp_path,
    )
    try:
        assert process.stderr.readline() == b"evaluating\n"
        spilled = _temps(cache)
        assert [path.name.split("-")[-1] for path in spilled] == ["eval.tokens"]
        assert spilled[0].stat().st_size == len(PATTERN) * 200  # one byte a token
        process.send_signal(signal_number)
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    if signal_number == signal.SIGTERM:
        # SIGTERM unwinds like Ctrl-C: the file is deleted on the way out.
        assert process.returncode == 143
        assert error_lines(stderr.decode()) == ["Error: terminated"]
        assert not _temps(cache)
    else:
        assert process.returncode == -signal.SIGKILL
        assert _temps(cache) == spilled  # nothing can clean up after SIGKILL...
    # ...but any later command that uses the folder does, a small eval that never spills included.
    small = tmp_path / "small.txt"
    small.write_text(PATTERN, encoding="utf-8")
    monkeypatch.setenv("CHARRNN_CACHE_DIR", str(cache))
    result = run_cli("eval", str(trained_run), str(small), "--json")
    assert result.exit_code == 0, result.stderr
    assert not _temps(cache)


def test_a_live_evals_spill_is_left_alone_by_another_command(trained_run, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setenv("CHARRNN_CACHE_DIR", str(cache))
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live = cache / _temp_of(sleeper.pid, "eval.tokens")
        live.write_bytes(b"\x00" * 1000)
        small = tmp_path / "small.txt"
        small.write_text(PATTERN, encoding="utf-8")
        assert run_cli("eval", str(trained_run), str(small)).exit_code == 0
        assert live.exists()
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_killed_writers_temp_file_beside_an_output_is_removed_by_the_next_write(trained_run, tmp_path):
    dead = tmp_path / _temp_of(_finished_process_pid(), "curves.png")
    dead.write_bytes(b"half a png")
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live = tmp_path / _temp_of(sleeper.pid, "other.png")
        live.write_bytes(b"being written")
        result = run_cli("plot", str(trained_run), "-o", str(tmp_path / "curves.png"))
        assert result.exit_code == 0, result.stderr
        assert not dead.exists() and live.exists()
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_run_directory_sweep_takes_the_runs_own_temp_files_whoever_wrote_them(tmp_path):
    from charrnn.store.run_dir import RunDir

    run = tmp_path / "run"
    run.mkdir()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        # A checkpoint temp of a training killed on another machine sharing the folder: only the
        # lock holder writes checkpoints, so it is litter whoever made it.
        remote = run / _temp_of(12345, "state.pt", host="0badc0de")
        step = run / _temp_of(12345, "step-100.safetensors", host="0badc0de")
        live_plot = run / _temp_of(sleeper.pid, "plot.png")  # someone plotting into the run: live
        for path in (remote, step, live_plot):
            path.write_bytes(b"x")
        holder = RunDir(run)
        holder.lock()
        holder.unlock()
        assert not remote.exists() and not step.exists()
        assert live_plot.exists()
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_cache_folder_that_is_a_file_is_named_as_such(trained_run, pattern_corpus, tmp_path, monkeypatch):
    import charrnn.inspect.eval_text as eval_text

    not_a_folder = tmp_path / "cache"
    not_a_folder.write_text("a file")
    monkeypatch.setenv("CHARRNN_CACHE_DIR", str(not_a_folder))
    monkeypatch.setattr(eval_text, "SPILL_BYTES", 64)
    result = run_cli("eval", str(trained_run), str(pattern_corpus))
    assert result.exit_code == 1
    assert error_lines(result.stderr) == [
        f"Error: cannot write temporary tokens in {not_a_folder}: it is not a folder "
        "(choose another folder with CHARRNN_CACHE_DIR)"
    ]
    from charrnn.errors import CharrnnError

    with pytest.raises(CharrnnError) as raised:
        _streamed(pattern_corpus, cache_dir=not_a_folder)  # (the command line's click says so first)
    assert str(raised.value) == (
        f"cannot create the token cache folder {not_a_folder}: it is not a folder "
        "(choose another with --cache-dir or CHARRNN_CACHE_DIR)"
    )
    assert not_a_folder.read_text() == "a file"


def test_the_suites_own_cache_folder_is_removed_when_the_session_ends(tmp_path):
    """Every run of the suite made a charrnn-test-cache-* folder that stayed in /tmp."""
    script = (
        "import os, sys; sys.path.insert(0, sys.argv[1]); import conftest; "
        "print(os.environ['CHARRNN_CACHE_DIR'])"
    )
    env = {key: value for key, value in os.environ.items() if key != "CHARRNN_CACHE_DIR"}
    env["TMPDIR"] = str(tmp_path)
    done = subprocess.run(
        [sys.executable, "-c", script, str(Path(__file__).parent)],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    folder = Path(done.stdout.strip())
    assert folder.parent == tmp_path and folder.name.startswith("charrnn-test-cache-")
    assert not folder.exists()
