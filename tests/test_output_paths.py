"""Paths the user names for output (`explain --html`, `plot -o`): a new or regular file is written
atomically; a symlink is followed and its target written; a FIFO or a character device is written
to as `>` does; a folder, a block device or a socket is refused with one line. Nothing that is not
a regular file is ever replaced."""

from __future__ import annotations

import errno
import os
import socket
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from conftest import PATTERN, TINY_MODEL_OPTIONS, error_lines, run_cli
from faults import deny_writes_under

from charrnn.atomic import atomic_write_bytes, is_temp_file, write_output
from charrnn.errors import CharrnnError

COMMANDS = ["explain", "plot"]
SUFFIX = {"explain": ".html", "plot": ".png"}


def _args(command: str, run: Path, output: Path, tmp_path: Path) -> list[str]:
    if command == "plot":
        return ["plot", str(run), "-o", str(output)]
    text = tmp_path / "text.txt"
    text.write_text(PATTERN * 3, encoding="utf-8")
    return ["explain", str(run), str(text), "--html", str(output), "--top", "1"]


def _is_the_answer(command: str, data: bytes) -> bool:
    if command == "plot":
        return data.startswith(b"\x89PNG\r\n\x1a\n")
    return data.lstrip().lower().startswith(b"<!doctype html>")


def _no_temp_files(folder: Path) -> bool:
    return not [path for path in folder.iterdir() if is_temp_file(path)]


@pytest.mark.parametrize("command", COMMANDS)
def test_a_symlink_is_followed_and_kept(command, trained_run, tmp_path):
    target = tmp_path / "elsewhere" / f"target{SUFFIX[command]}"
    target.parent.mkdir()
    target.write_bytes(b"old")
    link = tmp_path / f"link{SUFFIX[command]}"
    link.symlink_to(target)
    result = run_cli(*_args(command, trained_run, link, tmp_path))
    assert result.exit_code == 0, result.stderr
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert _is_the_answer(command, target.read_bytes())
    assert _no_temp_files(tmp_path) and _no_temp_files(target.parent)


@pytest.mark.parametrize("command", COMMANDS)
def test_a_dangling_symlink_gets_its_target_made(command, trained_run, tmp_path):
    link = tmp_path / f"link{SUFFIX[command]}"
    link.symlink_to(f"made{SUFFIX[command]}")  # relative, as `ln -s` makes it
    result = run_cli(*_args(command, trained_run, link, tmp_path))
    assert result.exit_code == 0, result.stderr
    assert link.is_symlink()
    assert _is_the_answer(command, (tmp_path / f"made{SUFFIX[command]}").read_bytes())


@pytest.mark.parametrize("command", COMMANDS)
def test_a_fifo_is_written_through_and_stays_a_fifo(command, trained_run, tmp_path):
    fifo = tmp_path / f"fifo{SUFFIX[command]}"
    os.mkfifo(fifo)
    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()), daemon=True)
    reader.start()
    result = run_cli(*_args(command, trained_run, fifo, tmp_path))
    reader.join(timeout=60)
    assert result.exit_code == 0, result.stderr
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert received and _is_the_answer(command, received[0])
    assert _no_temp_files(tmp_path)


def _device(tmp_path: Path, name: str, like: str) -> Path:
    """A character device node in `tmp_path` with the numbers of `like` (e.g. /dev/null)."""
    node = tmp_path / name
    try:
        os.mknod(node, stat.S_IFCHR | 0o666, os.stat(like).st_rdev)
    except (PermissionError, OSError) as error:
        pytest.skip(f"cannot make a device node here: {error}")
    return node


@pytest.mark.parametrize("command", COMMANDS)
def test_a_character_device_is_written_to_and_stays_a_device(command, trained_run, tmp_path):
    null = _device(tmp_path, f"null{SUFFIX[command]}", "/dev/null")
    result = run_cli(*_args(command, trained_run, null, tmp_path))
    assert result.exit_code == 0, result.stderr
    assert stat.S_ISCHR(os.lstat(null).st_mode)
    assert _no_temp_files(tmp_path)


@pytest.mark.parametrize("command", COMMANDS)
def test_a_full_device_is_one_error_and_stays_a_device(command, trained_run, tmp_path):
    full = _device(tmp_path, f"full{SUFFIX[command]}", "/dev/full")
    result = run_cli(*_args(command, trained_run, full, tmp_path))
    assert result.exit_code == 1
    assert error_lines(result.stderr)[-1] == f"Error: cannot write {full}: No space left on device"
    assert "wrote" not in result.stderr and "Traceback" not in result.stderr
    assert stat.S_ISCHR(os.lstat(full).st_mode)


@pytest.mark.parametrize("command", COMMANDS)
def test_a_block_device_is_refused_before_the_work(command, tmp_path):
    disk = tmp_path / f"disk{SUFFIX[command]}"
    try:
        os.mknod(disk, stat.S_IFBLK | 0o600, os.makedev(7, 0))
    except OSError as error:
        pytest.skip(f"cannot make a device node here: {error}")
    # The model does not exist: the output is checked first, so that is not what is reported.
    result = run_cli(*_args(command, tmp_path / "no-such-run", disk, tmp_path))
    assert result.exit_code == 1
    assert error_lines(result.stderr) == [
        f"Error: cannot write {disk}: it is a block device, not a regular file (left as it is)"
    ]
    assert stat.S_ISBLK(os.lstat(disk).st_mode)


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize(
    "case, message",
    [
        ("missing folder", "{parent} does not exist"),
        ("file as folder", "{parent} is not a folder"),
        ("symlink loop", "Too many levels of symbolic links"),
        ("socket", "it is a socket, not a regular file (left as it is)"),
    ],
)
def test_impossible_outputs_are_refused_before_the_work(command, case, message, tmp_path):
    name = f"out{SUFFIX[command]}"
    if case == "missing folder":
        output = tmp_path / "missing" / name
    elif case == "file as folder":
        (tmp_path / "a-file").write_text("x")
        output = tmp_path / "a-file" / name
    elif case == "symlink loop":
        output = tmp_path / name
        output.symlink_to(output)
    else:
        output = tmp_path / name
        listener = socket.socket(socket.AF_UNIX)
        listener.bind(str(output))
    result = run_cli(*_args(command, tmp_path / "no-such-run", output, tmp_path))
    assert result.exit_code == 1
    expected = message.format(parent=output.parent)
    assert error_lines(result.stderr) == [f"Error: cannot write {output}: {expected}"]
    if case == "symlink loop":
        assert output.is_symlink()
    if case == "socket":
        assert stat.S_ISSOCK(os.lstat(output).st_mode)
        listener.close()


@pytest.mark.parametrize("command", COMMANDS)
def test_a_folder_is_refused_before_the_work(command, tmp_path):
    folder = tmp_path / f"folder{SUFFIX[command]}"
    folder.mkdir()
    result = run_cli(*_args(command, tmp_path / "no-such-run", folder, tmp_path))
    assert result.exit_code == 2  # click's own check of the option
    [line] = error_lines(result.stderr)
    assert line.startswith("Error: Invalid value for") and line.endswith(f"'{folder}' is a directory.")
    with pytest.raises(CharrnnError, match=f"cannot write {folder}: it is a folder"):
        write_output(folder, b"x")  # the library says so too
    assert folder.is_dir()


@pytest.mark.parametrize("how", ["pipe", "file"])
def test_html_to_dev_stdout_goes_to_stdout_and_no_link_is_replaced(trained_run, tmp_path, how):
    # A private link to /dev/stdout, so a failure could never replace the system's own link.
    stdout_link = tmp_path / "my-stdout"
    stdout_link.symlink_to("/dev/stdout")
    text = tmp_path / "text.txt"
    text.write_text(PATTERN * 3, encoding="utf-8")
    command = [sys.executable, "-m", "charrnn", "explain", str(trained_run), str(text), "--top", "1"]
    for output in (stdout_link, Path("/dev/stdout")):
        captured = tmp_path / "captured.html"
        with open(captured, "wb") as file:
            process = subprocess.run(
                [*command, "--html", str(output)],
                stdout=subprocess.PIPE if how == "pipe" else file,
                stderr=subprocess.PIPE,
                timeout=120,
            )
        assert process.returncode == 0, process.stderr.decode()
        page = process.stdout if how == "pipe" else captured.read_bytes()
        assert _is_the_answer("explain", page)
        assert stdout_link.is_symlink() and os.path.islink("/dev/stdout")
        assert _no_temp_files(tmp_path)


@pytest.mark.parametrize("command", COMMANDS)
def test_a_regular_file_is_replaced_whole_keeping_its_permissions(command, trained_run, tmp_path):
    output = tmp_path / f"private{SUFFIX[command]}"
    output.write_bytes(b"old")
    output.chmod(0o600)
    result = run_cli(*_args(command, trained_run, output, tmp_path))
    assert result.exit_code == 0, result.stderr
    assert _is_the_answer(command, output.read_bytes())
    assert stat.S_IMODE(output.stat().st_mode) == 0o600
    assert _no_temp_files(tmp_path)


@pytest.mark.parametrize("command", COMMANDS)
def test_a_name_as_long_as_the_file_system_allows_is_written(command, trained_run, tmp_path):
    output = tmp_path / ("n" * (255 - len(SUFFIX[command])) + SUFFIX[command])
    result = run_cli(*_args(command, trained_run, output, tmp_path))
    assert result.exit_code == 0, result.stderr
    assert _is_the_answer(command, output.read_bytes())


def test_a_file_we_may_not_write_is_refused_like_the_shell_does(trained_run, tmp_path, monkeypatch):
    output = tmp_path / "read-only.png"
    output.write_bytes(b"keep me")
    real_access = os.access
    monkeypatch.setattr(
        os,
        "access",
        lambda path, mode, **kw: mode != os.W_OK if Path(path) == output else real_access(path, mode, **kw),
    )
    result = run_cli("plot", str(trained_run), "-o", str(output))
    assert result.exit_code == 1
    assert error_lines(result.stderr) == [f"Error: cannot write {output}: Permission denied"]
    assert output.read_bytes() == b"keep me"


@pytest.mark.parametrize("error_number", [errno.EACCES, errno.EROFS])
def test_a_folder_we_may_not_write_in_is_one_error_and_the_file_unchanged(
    trained_run, tmp_path, monkeypatch, error_number
):
    folder = tmp_path / "locked"
    folder.mkdir()
    output = folder / "curves.png"
    output.write_bytes(b"keep me")
    deny_writes_under(monkeypatch, folder, error_number)
    result = run_cli("plot", str(trained_run), "-o", str(output))
    assert result.exit_code == 1
    [line] = error_lines(result.stderr)
    assert line.startswith(f"Error: cannot write {output}: {os.strerror(error_number)}")
    if error_number == errno.EACCES:
        assert line.endswith(f"so its folder {folder} must be writable)")
    assert output.read_bytes() == b"keep me"
    assert _no_temp_files(folder)


def test_files_charrnn_names_itself_refuse_special_files_and_follow_symlinks(tmp_path):
    fifo = tmp_path / "latest.safetensors"
    os.mkfifo(fifo)
    with pytest.raises(CharrnnError, match=r"it is a FIFO \(named pipe\), not a regular file"):
        atomic_write_bytes(fifo, b"weights")  # never blocks waiting for a reader, never replaces
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    target = tmp_path / "target.json"
    link = tmp_path / "end.json"
    link.symlink_to(target.name)
    atomic_write_bytes(link, b"{}")
    assert link.is_symlink() and target.read_bytes() == b"{}"


def test_write_output_to_a_fifo_whose_reader_leaves_early_is_one_error(tmp_path):
    fifo = tmp_path / "page.html"
    os.mkfifo(fifo)

    def read_a_little():
        with open(fifo, "rb") as pipe:
            pipe.read(10)

    reader = threading.Thread(target=read_a_little, daemon=True)
    reader.start()
    with pytest.raises(CharrnnError, match=f"cannot write {fifo}: Broken pipe"):
        write_output(fifo, b"x" * (8 << 20))
    reader.join(timeout=60)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


# -- the run directory of `train --out` ----------------------------------------------------------


@pytest.mark.parametrize("case", ["fifo", "device", "dangling symlink", "symlink loop"])
def test_a_run_directory_that_is_not_a_folder_is_one_line_and_left_alone(case, pattern_corpus, tmp_path):
    out = tmp_path / "run"
    if case == "fifo":
        os.mkfifo(out)
        expected = "it is a FIFO (named pipe), not a folder"
    elif case == "device":
        out = _device(tmp_path, "run", "/dev/null")
        expected = "it is a character device, not a folder"
    elif case == "dangling symlink":
        out.symlink_to("nowhere")
        expected = "it is a symlink to nowhere, which does not exist"
    else:
        out.symlink_to(out)
        expected = "Too many levels of symbolic links"
    before = os.lstat(out)
    result = run_cli("train", str(pattern_corpus), "--out", str(out), "--max-steps", "2", *TINY_MODEL_OPTIONS)
    assert result.exit_code == 1
    assert error_lines(result.stderr) == [f"Error: cannot use {out} as the run directory: {expected}"]
    after = os.lstat(out)
    assert (after.st_mode, after.st_ino) == (before.st_mode, before.st_ino)


def test_a_run_directory_given_as_a_symlink_to_a_folder_trains_there(pattern_corpus, tmp_path):
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    out = tmp_path / "run"
    out.symlink_to(folder)
    result = run_cli("train", str(pattern_corpus), "--out", str(out), "--max-steps", "2", *TINY_MODEL_OPTIONS)
    assert result.exit_code == 0, result.stderr
    assert out.is_symlink() and (folder / "latest.safetensors").is_file()
    assert _no_temp_files(folder)


# -- outputs that are the command's own inputs ---------------------------------------------------


def test_html_dash_writes_the_page_to_stdout_and_an_empty_name_is_refused(trained_run, tmp_path):
    text = tmp_path / "text.txt"
    text.write_text(PATTERN, encoding="utf-8")
    result = run_cli("explain", str(trained_run), str(text), "--html", "-", "--top", "1")
    assert result.exit_code == 0, result.stderr
    assert _is_the_answer("explain", result.stdout.encode())
    assert not (tmp_path / "-").exists() and not Path("-").exists()
    empty = run_cli("explain", str(trained_run), str(text), "--html", "")
    assert empty.exit_code == 2
    assert error_lines(empty.stderr) == ["Error: --html needs a file name (- writes the page to stdout)"]


@pytest.mark.parametrize("target", ["text", "text through a link", "model", "other checkpoint", "state"])
def test_explain_never_writes_its_page_over_what_it_reads_or_the_runs_checkpoints(
    trained_run, tmp_path, target
):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    text = tmp_path / "text.txt"
    text.write_text(PATTERN, encoding="utf-8")
    model = run / "best.safetensors"
    output, what = {
        "text": (text, "the text being explained"),
        "text through a link": (tmp_path / "page.html", "the text being explained"),
        "model": (model, "the model's weights"),
        "other checkpoint": (run / "latest.safetensors", "a checkpoint beside the model"),
        "state": (run / "state.pt", "a checkpoint beside the model"),
    }[target]
    if target == "text through a link":
        output.symlink_to(text)
    before = {path: path.read_bytes() for path in (text, *run.iterdir()) if path.is_file()}
    result = run_cli("explain", str(model), str(text), "--html", str(output))
    assert result.exit_code == 1
    assert error_lines(result.stderr) == [f"Error: cannot write {output}: it is {what}; choose another file"]
    assert {path: path.read_bytes() for path in before} == before


def test_plot_never_writes_over_the_metrics_it_reads(trained_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    metrics = (run / "metrics.jsonl").read_bytes()
    image = tmp_path / "curves.png"
    image.symlink_to(run / "metrics.jsonl")
    result = run_cli("plot", str(run), "-o", str(image))
    assert result.exit_code == 1
    assert error_lines(result.stderr)[-1] == (
        f"Error: cannot write {image}: it is the metrics of a run being plotted; choose another file"
    )
    assert (run / "metrics.jsonl").read_bytes() == metrics


def test_a_full_disk_keeps_the_previous_output_and_leaves_no_temp_file(trained_run, tmp_path, monkeypatch):
    output = tmp_path / "curves.png"
    output.write_bytes(b"the previous chart")

    def disk_full(descriptor, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "write", disk_full)
    result = run_cli("plot", str(trained_run), "-o", str(output))
    assert result.exit_code == 1
    assert error_lines(result.stderr) == [
        f"Error: disk full while writing {output}: any previous file there is unchanged; free some space"
    ]
    assert output.read_bytes() == b"the previous chart"
    assert _no_temp_files(tmp_path)
