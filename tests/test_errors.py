"""Every bad input: one `Error:` line on stderr, the right exit code, no traceback, nothing on stdout."""

from __future__ import annotations

import errno

import pytest
from conftest import TINY_MODEL_OPTIONS, error_lines, run_charrnn_process, run_cli
from faults import deny_opening, deny_writes_under, refuse_locks_under


def assert_one_error_line(result, exit_code: int, *fragments: str) -> None:
    lines = error_lines(result.stderr)
    assert result.exit_code == exit_code, result.stderr
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: ")
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_missing_corpus(in_tmp):
    assert_one_error_line(run_cli("train", "nope.txt"), 1, "not found", "nope.txt")


def test_directory_without_text(in_tmp):
    (in_tmp / "empty_dir").mkdir()
    (in_tmp / "empty_dir" / "notes.md").write_text("not a txt file")
    assert_one_error_line(run_cli("train", "empty_dir"), 1, "no .txt files")


def test_empty_corpus(in_tmp):
    (in_tmp / "empty.txt").write_text("")
    assert_one_error_line(run_cli("train", "empty.txt"), 1, "empty")


def test_corpus_shorter_than_one_window(in_tmp):
    (in_tmp / "short.txt").write_text("a short corpus.\n" * 3)
    assert_one_error_line(
        run_cli("train", "short.txt", "--seq-len", "100"), 1, "shorter than one training window"
    )


def test_corpus_not_utf8_says_where(in_tmp):
    (in_tmp / "latin1.txt").write_bytes("line one\ncaf\xe9 au lait\n".encode("latin-1"))
    assert_one_error_line(run_cli("train", "latin1.txt"), 1, "not valid UTF-8", "offset 12", "line 2")


def test_unreadable_corpus(in_tmp, monkeypatch):
    path = in_tmp / "secret.txt"
    path.write_text("text " * 1000)
    deny_opening(monkeypatch, path)  # as a file without read permission, for root too
    assert_one_error_line(run_cli("train", "secret.txt"), 1, "cannot read secret.txt: permission denied")


# -- the token cache folder ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "error_number, words", [(errno.EACCES, "Permission denied"), (errno.EROFS, "Read-only file system")]
)
@pytest.mark.parametrize("corpus", ["file", "stdin"])
def test_unwritable_cache_folder_is_one_error_line(
    in_tmp, pattern_corpus, monkeypatch, error_number, words, corpus
):
    cache = in_tmp / "cache"
    cache.mkdir()
    deny_writes_under(monkeypatch, cache, error_number)
    if corpus == "file":
        result = run_cli("train", str(pattern_corpus), "--cache-dir", str(cache), *TINY_MODEL_OPTIONS)
        assert_one_error_line(result, 1, f"cannot lock the token cache entry {cache}", words, "--cache-dir")
    else:
        result = run_cli(
            "train",
            "-",
            "--out",
            "run",
            "--cache-dir",
            str(cache),
            *TINY_MODEL_OPTIONS,
            input=pattern_corpus.read_text(),
        )
        assert_one_error_line(result, 1, f"cannot store standard input in {cache}", words, "--cache-dir")
    assert list(cache.iterdir()) == []


def test_cache_folder_that_cannot_be_created_is_one_error_line(in_tmp, pattern_corpus):
    (in_tmp / "a-file").write_text("not a folder")
    result = run_cli(
        "train", str(pattern_corpus), "--cache-dir", str(in_tmp / "a-file" / "cache"), *TINY_MODEL_OPTIONS
    )
    assert_one_error_line(result, 1, "cannot create the token cache folder", "--cache-dir")


def test_read_only_cache_that_holds_the_entry_is_still_used(in_tmp, pattern_corpus, monkeypatch):
    cache = in_tmp / "cache"
    arguments = [str(pattern_corpus), "--cache-dir", str(cache), "--max-steps", "1", *TINY_MODEL_OPTIONS]
    assert run_cli("train", *arguments, "--out", "first").exit_code == 0
    deny_writes_under(monkeypatch, cache)
    result = run_cli("train", *arguments, "--out", "second")
    assert result.exit_code == 0, result.stderr


def test_permission_error_on_the_cache_lock_is_one_error_line(in_tmp, pattern_corpus, monkeypatch):
    cache = in_tmp / "cache"
    cache.mkdir()
    real_open = open

    def lock_file_refused(file, mode="r", *args, **kwargs):
        if str(file).startswith(str(cache)) and str(file).endswith(".lock"):
            raise PermissionError(errno.EACCES, "Permission denied", str(file))
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr("builtins.open", lock_file_refused)
    result = run_cli("train", str(pattern_corpus), "--cache-dir", str(cache), *TINY_MODEL_OPTIONS)
    assert_one_error_line(result, 1, "cannot lock the token cache entry", "Permission denied")


def test_file_system_that_refuses_locks_is_one_error_line(in_tmp, pattern_corpus, monkeypatch):
    cache = in_tmp / "cache"
    cache.mkdir()
    refuse_locks_under(monkeypatch, cache, errno.ENOLCK)
    result = run_cli("train", str(pattern_corpus), "--cache-dir", str(cache), *TINY_MODEL_OPTIONS)
    assert_one_error_line(
        result, 1, f"the file system of the token cache {cache} refuses file locks", "--cache-dir"
    )
    assert not list(cache.glob("*.tokens"))


@pytest.mark.parametrize(
    "option,value,fragment",
    [
        ("--lr", "nan", "--lr must be a finite number"),
        ("--lr", "inf", "--lr must be a finite number"),
        ("--lr", "-1", "--lr must be > 0"),
        ("--dropout", "1.5", "--dropout must be in [0, 1)"),
        ("--grad-clip", "nan", "--grad-clip must be a finite number"),
        ("--val-fraction", "0", "--val-fraction"),
        ("--seq-len", "0", "--seq-len"),
        ("--hidden-size", "-3", "--hidden-size"),
        ("--max-time", "soon", "duration"),
        ("--max-time", "0s", "duration must be positive"),
        ("--model", "transformer", "transformer"),
        ("--batch-size", "many", "many"),
    ],
)
def test_bad_train_options_are_usage_errors(in_tmp, pattern_corpus, option, value, fragment):
    assert_one_error_line(run_cli("train", str(pattern_corpus), option, value), 2, fragment)


@pytest.mark.parametrize(
    "option,value,fragment",
    [
        ("--temperature", "nan", "--temperature must be a finite number"),
        ("--temperature", "inf", "--temperature must be a finite number"),
        ("--temperature", "0", "--temperature must be > 0"),
        ("--top-p", "1.5", "--top-p"),
        ("--top-k", "0", "--top-k"),
        ("--length", "-5", "--length"),
    ],
)
def test_bad_sample_options_are_usage_errors(trained_run, option, value, fragment):
    assert_one_error_line(run_cli("sample", str(trained_run), option, value), 2, fragment)


def test_missing_checkpoint(in_tmp):
    assert_one_error_line(run_cli("sample", "missing.safetensors"), 1, "not found")


def test_no_runs_yet_says_how_to_train(in_tmp, monkeypatch):
    # With no run under runs/, `sample` uses the bundled model; without one (a build that left it out):
    monkeypatch.setattr(
        "charrnn.store.bundled.BUNDLED_MODELS", {"shakespeare": in_tmp / "absent.safetensors"}
    )
    assert_one_error_line(run_cli("sample"), 1, "charrnn train")


@pytest.mark.parametrize("content", [b"", b"garbage" * 10, b"\xff" * 8 + b"{}"])
def test_corrupt_checkpoint(in_tmp, content):
    (in_tmp / "bad.safetensors").write_bytes(content)
    result = run_cli("sample", "bad.safetensors")
    assert_one_error_line(result, 1, "bad.safetensors")
    assert "weights_only" not in result.stderr


def test_truncated_checkpoint(in_tmp, trained_run):
    data = (trained_run / "best.safetensors").read_bytes()
    (in_tmp / "cut.safetensors").write_bytes(data[: len(data) // 2])
    assert_one_error_line(run_cli("sample", "cut.safetensors"), 1, "corrupted")


def test_unknown_command_is_one_line():
    assert_one_error_line(run_cli("fly"), 2, "fly")


def test_errors_from_a_real_process_have_no_traceback(in_tmp):
    finished = run_charrnn_process("train", "nope.txt", "--lr", "nan", cwd=in_tmp)
    assert finished.returncode == 2
    assert finished.stdout == b""
    assert finished.stderr.decode().strip().count("\n") == 0


def test_help_lists_every_train_option_with_defaults():
    result = run_cli("train", "--help")
    for option in [
        "--model",
        "--num-layers",
        "--hidden-size",
        "--embedding-size",
        "--dropout",
        "--seq-len",
        "--batch-size",
        "--lr",
        "--grad-clip",
        "--max-steps",
        "--max-time",
        "--val-fraction",
        "--eval-every",
        "--out",
        "--seed",
        "--device",
        "--threads",
    ]:
        assert option in result.stdout
    assert result.stdout.count("default:") >= 15


def test_training_on_a_directory_and_on_stdin(in_tmp):
    folder = in_tmp / "texts"
    folder.mkdir()
    (folder / "b.txt").write_text("second file. " * 100)
    (folder / "a.txt").write_text("first file! " * 100)
    result = run_cli("train", "texts", "--max-steps", "2", *TINY_MODEL_OPTIONS)
    assert result.exit_code == 0, result.stderr
    from_stdin = run_cli(
        "train",
        "-",
        "--max-steps",
        "2",
        "--out",
        "runs/stdin",
        *TINY_MODEL_OPTIONS,
        input="words from a pipe. " * 100,
    )
    assert from_stdin.exit_code == 0, from_stdin.stderr
    from charrnn.store.checkpoint import load_weights

    vocabulary = set(load_weights(in_tmp / "runs" / "texts" / "best.safetensors").tokenizer.chars)
    assert {"!", "."} <= vocabulary
