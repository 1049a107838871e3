"""Litter left by killed processes (temp token files, stdin spools): the next run removes it,
a live one's stays."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import TINY_MODEL_OPTIONS, error_lines
from test_token_cache import _streamed, _write


def _finished_process_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_temp_files_of_a_killed_encoding_are_removed_by_the_next_run(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    dead = _finished_process_pid()
    # An encoding of another corpus killed midway: its temp token file and sidecar temp remain.
    killed = [
        cache / f".other-0123456789abcdef.tokens.tmp-{dead}",
        cache / f".other-0123456789abcdef.json.tmp-{dead}",
    ]
    for leftover in killed:
        leftover.write_bytes(b"\x00" * 100)
    (cache / "other-0123456789abcdef.lock").touch()
    # A live encoding of a third corpus: its lock is held, so its temp file must stay.
    live = cache / f".busy-fedcba9876543210.tokens.tmp-{os.getpid()}"
    live.write_bytes(b"\x01" * 10)
    import fcntl

    with open(cache / "busy-fedcba9876543210.lock", "a+") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        _streamed(_write(tmp_path / "corpus.txt", "next run\n" * 50), cache_dir=cache)
    assert not any(leftover.exists() for leftover in killed)
    assert live.exists()


def test_stdin_spools_of_dead_processes_on_this_machine_are_removed(tmp_path):
    from charrnn.data.token_cache import _host_tag, remove_stale_files

    cache = tmp_path / "cache"
    cache.mkdir()
    dead = cache / f".stdin-{_host_tag()}-{_finished_process_pid()}-a1b2c3.txt"
    alive = cache / f".stdin-{_host_tag()}-{os.getpid()}-d4e5f6.txt"
    elsewhere = cache / f".stdin-another_machine-{_finished_process_pid()}-g7h8i9.txt"
    for spool in (dead, alive, elsewhere):
        spool.write_text("spooled text")
    remove_stale_files(cache)
    assert not dead.exists()
    assert alive.exists() and elsewhere.exists()  # in use here, or maybe in use on another machine


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


def _wait_for(predicate, seconds: float = 60) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


@pytest.mark.parametrize("how", ["ctrl-c", "kill"])
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
        assert _wait_for(lambda: cache.exists() and any(cache.glob(".stdin-*.txt")))
        process.send_signal(signal.SIGINT if how == "ctrl-c" else signal.SIGKILL)
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    if how == "ctrl-c":
        assert process.returncode == 130
        assert error_lines(stderr.decode()) == ["Error: interrupted"]
        assert not list(cache.glob(".stdin-*"))
    else:
        assert list(cache.glob(".stdin-*.txt"))  # a killed process cannot clean up...
        _streamed(_write(tmp_path / "next.txt", "next run\n" * 50), cache_dir=cache)
        assert not list(cache.glob(".stdin-*"))  # ...the next run does
