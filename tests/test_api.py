"""The Python API: charrnn.load / Model / charrnn.train, and the README's Python examples."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from conftest import REPO, TINY_MODEL_OPTIONS, run_cli

import charrnn
from charrnn import events
from charrnn.errors import CheckpointError, UsageProblem
from charrnn.events import StopReason
from charrnn.store.checkpoint import load_training_state
from charrnn.store.run_dir import RunDir

SHAKESPEARE = (REPO / "data" / "tinyshakespeare.txt").read_text(encoding="utf-8")[:20_000]


def test_import_is_cheap_and_the_names_are_documented():
    code = "import sys, charrnn; print('torch' in sys.modules); print(sorted(charrnn.__all__))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.stdout.splitlines() == [
        "False",
        "['CharrnnError', 'LineScore', 'Model', 'ModelConfig', 'SampleConfig', 'TextEvaluation', "
        "'TrainConfig', '__version__', 'load', 'train']",
    ]
    with pytest.raises(AttributeError):
        # The attribute access is the test: the module's __getattr__ must raise.
        charrnn.no_such_name  # noqa: B018


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
    with pytest.raises(UsageProblem, match="unknown sampling options: no_such_option"):
        model.generate_text(no_such_option=1)  # as train() refuses an unknown option


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


def _tiny_options() -> dict:
    """TINY_MODEL_OPTIONS as `charrnn.train` keywords."""
    options = dict(
        zip([o.lstrip("-").replace("-", "_") for o in TINY_MODEL_OPTIONS[::2]], TINY_MODEL_OPTIONS[1::2])
    )
    return {k: (float(v) if k == "dropout" else int(v)) for k, v in options.items()}


@pytest.fixture
def corpus(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "corpus.txt"
    path.write_text(SHAKESPEARE, encoding="utf-8")
    return path


def test_train_returns_the_trained_model_and_refuses_unknown_options(corpus):
    with pytest.raises(UsageProblem, match="^unknown training options: hiden_size$"):
        charrnn.train(corpus, hiden_size=3)
    model = charrnn.train(corpus, max_steps=5, precision="fp32", **_tiny_options())
    assert model.path == Path("runs/corpus/best.safetensors")
    assert model.info["training"]["step"] == 5
    assert (model.outcome.reason, model.outcome.step, model.outcome.stopped) == (StopReason.DONE, 5, False)
    assert charrnn.train(corpus, max_steps=5, **_tiny_options()).path == Path(
        "runs/corpus-2/best.safetensors"
    )


def test_train_from_a_worker_thread_returns_the_model(corpus):
    # A notebook, a web app or a task queue trains off the main thread, where Python refuses
    # signal handlers: the API must not install any.
    finished: dict = {}

    def work() -> None:
        try:
            finished["model"] = charrnn.train(corpus, out="runs/threaded", max_steps=3, **_tiny_options())
        except BaseException as error:  # noqa: BLE001 - the test reports whatever the thread raised
            finished["error"] = error

    worker = threading.Thread(target=work)
    worker.start()
    worker.join(timeout=120)
    assert "error" not in finished, repr(finished.get("error"))
    assert finished["model"].path == Path("runs/threaded/best.safetensors")
    assert finished["model"].info["training"]["step"] == 3


def test_should_stop_saves_and_returns_the_model_trained_so_far(corpus):
    stop = threading.Event()

    def stop_after_four_steps(event: object) -> None:
        if isinstance(event, events.StepDone) and event.step == 4:
            stop.set()  # as another thread would

    out = Path("runs/stopped")
    model = charrnn.train(
        corpus, out=out, max_steps=1000, should_stop=stop, on_event=stop_after_four_steps, **_tiny_options()
    )
    assert (model.outcome.reason, model.outcome.step, model.outcome.stopped) == (
        StopReason.INTERRUPTED,
        4,
        True,
    )
    assert model.path == out / "latest.safetensors"  # no evaluation yet, so no best weights
    assert load_training_state(out / "state.pt")["step"] == 4
    assert RunDir(out).read_end() == {"reason": "interrupted", "step": 4}
    assert not RunDir(out).is_locked()
    resumed = charrnn.train(corpus, out=out, resume=True, max_steps=6, **_tiny_options())
    assert (resumed.outcome.reason, resumed.outcome.step) == (StopReason.DONE, 6)


def test_ctrl_c_propagates_as_a_plain_keyboard_interrupt_and_keeps_the_last_checkpoint(corpus):
    def ctrl_c_at_step_three(event: object) -> None:
        if isinstance(event, events.StepDone) and event.step == 3:
            raise KeyboardInterrupt  # what Python raises in the main thread on Ctrl-C

    out = Path("runs/ctrl-c")
    with pytest.raises(KeyboardInterrupt) as caught:
        charrnn.train(
            corpus, out=out, max_steps=10, eval_every=2, on_event=ctrl_c_at_step_three, **_tiny_options()
        )
    assert caught.value.args == ()  # no invented message
    assert not RunDir(out).is_locked()
    assert load_training_state(out / "state.pt")["step"] == 2  # the checkpoint of step 2, whole
    assert RunDir(out).read_end() is None  # the session did not end: `runs` shows it stopped


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
        "--precision",
        "fp32",
        *TINY_MODEL_OPTIONS,
    )
    assert result.exit_code == 0, result.stderr
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, "docs/python-api.md", "exec"), namespace)
    printed = capsys.readouterr().out.splitlines()
    vocabulary = namespace["model"].tokenizer.vocab_size
    assert printed[0] == (
        f"<charrnn.Model lstm 1x32 char vocabulary {vocabulary} from "
        "runs/tinyshakespeare/best.safetensors on cpu>"
    )
    assert printed[1].startswith("ROMEO:")
    [evaluation] = [line for line in printed if "bits/char over" in line]
    assert re.fullmatch(r"\d+\.\d{4} bits/char over 19,999 characters", evaluation)
    assert (tmp_path / "runs" / "api-demo" / "best.safetensors").is_file()
