"""The Python API: charrnn.load / Model / charrnn.train, and the README's Python examples."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, TINY_MODEL_OPTIONS, run_cli

import charrnn
from charrnn.errors import CheckpointError, UsageProblem

SHAKESPEARE = (REPO / "data" / "tinyshakespeare.txt").read_text(encoding="utf-8")[:20_000]


def test_import_is_cheap_and_the_names_are_documented():
    code = "import sys, charrnn; print('torch' in sys.modules); print(sorted(charrnn.__all__))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.stdout.splitlines()[0] == "False"
    assert "load" in result.stdout and "train" in result.stdout
    with pytest.raises(AttributeError):
        charrnn.no_such_name


def test_load_resolves_like_the_commands(trained_run, tmp_path, monkeypatch):
    by_dir = charrnn.load(trained_run, device="cpu")
    assert by_dir.path == trained_run / "best.safetensors"
    assert charrnn.load(trained_run / "latest.safetensors", device="cpu").path.name == "latest.safetensors"
    monkeypatch.chdir(tmp_path)
    # With no run at all, the bundled model; and without that (a build that left it out), one clear error.
    assert charrnn.load().path.name == "shakespeare.safetensors"
    monkeypatch.setattr(
        "charrnn.store.bundled.BUNDLED_MODELS", {"shakespeare": tmp_path / "absent.safetensors"}
    )
    with pytest.raises(CheckpointError, match="no trained model under runs/"):
        charrnn.load()
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "only").symlink_to(trained_run)
    assert charrnn.load().path == Path("runs/only/best.safetensors")


def test_generate_is_what_charrnn_sample_writes(trained_run):
    model = charrnn.load(trained_run, device="cpu")
    options = dict(temperature=0.7, length=120, prime="the ", seed=5, top_k=5)
    text = model.generate_text(**options)
    assert "".join(model.generate(**options)) == text
    cli = run_cli(
        "sample",
        str(trained_run),
        "--temperature",
        "0.7",
        "--length",
        "120",
        "--prime",
        "the ",
        "--seed",
        "5",
        "--top-k",
        "5",
    )
    assert cli.stdout == text
    assert text.startswith("the ") and len(text) == 124
    with pytest.raises(TypeError):
        model.generate_text(no_such_option=1)


def test_score_and_evaluate_agree_with_the_commands(trained_run, tmp_path):
    model = charrnn.load(trained_run, device="cpu")
    path = tmp_path / "text.txt"
    path.write_text("the quick brown fox\njumps over the lazy dog.\n", encoding="utf-8")
    from_text = model.evaluate(path.read_text(encoding="utf-8"))
    from_path = model.evaluate(path)
    assert from_text.bits_per_char == pytest.approx(from_path.bits_per_char, rel=1e-9)
    assert from_path.name == str(path)
    import json

    cli = json.loads(run_cli("eval", str(trained_run), str(path), "--json").stdout)["files"][0]
    assert cli["bits_per_char"] == pytest.approx(from_path.bits_per_char, rel=1e-9)
    scores = model.score("the quick brown fox\njumps over the lazy dog.\n")
    assert [s.line for s in scores] == ["the quick brown fox", "jumps over the lazy dog."]
    assert [s.line for s in model.score_file(path)] == [s.line for s in scores]


def test_train_returns_the_trained_model_and_refuses_unknown_options(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(SHAKESPEARE, encoding="utf-8")
    with pytest.raises(UsageProblem, match="unknown training options: hiden_size"):
        charrnn.train(corpus, hiden_size=3)
    options = dict(
        zip([o.lstrip("-").replace("-", "_") for o in TINY_MODEL_OPTIONS[::2]], TINY_MODEL_OPTIONS[1::2])
    )
    typed = {k: (float(v) if k == "dropout" else int(v)) for k, v in options.items()}
    model = charrnn.train(corpus, max_steps=5, precision="fp32", **typed)
    assert model.path == Path("runs/corpus/best.safetensors")
    assert model.info["training"]["step"] == 5
    assert charrnn.train(corpus, max_steps=5, **typed).path == Path("runs/corpus-2/best.safetensors")


def _readme_python_blocks() -> list[str]:
    page = (REPO / "docs" / "python-api.md").read_text(encoding="utf-8")
    return re.findall(r"```python\n(.*?)```", page, flags=re.S)


def test_the_readme_python_examples_run(tmp_path, monkeypatch, capsys):
    blocks = _readme_python_blocks()
    assert len(blocks) >= 3
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "tinyshakespeare.txt").write_text(SHAKESPEARE, encoding="utf-8")
    result = run_cli(
        "train",
        "data/tinyshakespeare.txt",
        "--out",
        "runs/tinyshakespeare",
        "--max-steps",
        "10",
        *TINY_MODEL_OPTIONS,
    )
    assert result.exit_code == 0, result.stderr
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, "docs/python-api.md", "exec"), namespace)
    printed = capsys.readouterr().out
    assert "<charrnn.Model lstm 1x32 char" in printed
    assert "ROMEO:" in printed and "bits/char over 19,999 characters" in printed
    assert (tmp_path / "runs" / "api-demo" / "best.safetensors").is_file()
