"""Exact resume: an interrupted-and-resumed run equals the uninterrupted one, bit for bit."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import PATTERN, TINY_MODEL_OPTIONS, error_lines, run_cli

from charrnn import events
from charrnn.config import ModelConfig, TrainConfig
from charrnn.data.in_memory import Corpus, prepare_corpus
from charrnn.store.checkpoint import load_training_state, load_weights, read_saved_state
from charrnn.store.run_dir import RunDir
from charrnn.training.loop import Trainer

# Two layers and dropout, so the torch RNG matters between steps (dropout masks).
MODEL = dict(model="lstm", num_layers=2, hidden_size=24, embedding_size=8, dropout=0.2)
TEXT = "".join(f"{i} {PATTERN}" for i in range(120))


def _train(run_path, max_steps, stop_after=None, resume=False, **train_overrides):
    """Run a Trainer in-process; stop via should_stop after `stop_after` steps. Returns (losses, finished)."""
    corpus = prepare_corpus(Corpus(TEXT, "t", "t.txt"), "char", 0.1)
    settings = dict(
        seq_len=16,
        batch_size=4,
        max_steps=max_steps,
        eval_every=7,
        warmup_steps=5,
        lr=5e-3,
        threads=1,
        seed=3,
        precision="fp32",
    )
    train_config = TrainConfig(**{**settings, **train_overrides})
    run_dir = RunDir(run_path)
    run_dir.prepare()
    losses = []

    def record(event):
        if isinstance(event, events.StepDone):
            losses.append((event.step, event.loss, event.grad_norm))

    state = read_saved_state(run_dir.state) if resume else None
    trainer = Trainer(
        corpus,
        ModelConfig(**MODEL),
        train_config,
        run_dir,
        on_event=record,
        should_stop=lambda: stop_after is not None and len(losses) >= stop_after,
        resume_state=state,
    )
    return losses, trainer.run()


def _tensors(path):
    return load_weights(path).model.state_dict()


def test_interrupted_and_resumed_run_is_bit_identical_to_uninterrupted(tmp_path):
    straight_losses, straight = _train(tmp_path / "straight", max_steps=30)
    # Stop twice, neither on an evaluation step (every 7), then finish.
    first_losses, first = _train(tmp_path / "split", max_steps=30, stop_after=10)
    assert first.reason == "interrupted" and first.step == 10
    second_losses, second = _train(tmp_path / "split", max_steps=30, stop_after=9, resume=True)
    assert second.reason == "interrupted" and second.step == 19
    third_losses, third = _train(tmp_path / "split", max_steps=30, resume=True)
    assert third.reason == "done" and third.step == 30

    assert first_losses + second_losses + third_losses == straight_losses  # exact floats, every step
    resumed, uninterrupted = (
        _tensors(tmp_path / "split/latest.safetensors"),
        _tensors(tmp_path / "straight/latest.safetensors"),
    )
    for name in uninterrupted:
        assert torch.equal(resumed[name], uninterrupted[name]), name
    assert third.best_val_loss == straight.best_val_loss
    # The evaluation records (train loss over the interval, grad norms) match too, apart from timings.
    timing = {"elapsed", "chars_per_second", "eval_seconds"}

    def records(path):
        return [{k: v for k, v in r.items() if k not in timing} for r in RunDir(path).read_metrics()]

    assert records(tmp_path / "split") == records(tmp_path / "straight")


def test_resume_restores_optimizer_rng_and_carried_state(tmp_path):
    _train(tmp_path / "run", max_steps=30, stop_after=5)
    state = load_training_state(tmp_path / "run/state.pt")
    assert state["step"] == 5
    # LSTM (h, c), each with the 8 stream groups of 4 streams side by side
    assert len(state["hidden"]) == 2 and state["hidden"][0].shape == (2, 8 * 4, 24)
    assert state["stream_groups"] == 8
    assert state["optimizer"]["state"], "AdamW moments must be saved"
    assert state["torch_rng"].dtype == torch.uint8
    assert json.loads(state["train_config"])["max_steps"] == 30

    def plain(value):  # only what weights_only=True accepts: no numpy, no custom classes
        if isinstance(value, dict):
            return all(isinstance(k, (str, int)) and plain(v) for k, v in value.items())
        if isinstance(value, (list, tuple)):
            return all(plain(v) for v in value)
        return value is None or isinstance(value, (bool, int, float, str, torch.Tensor))

    assert plain(state)


def test_metrics_after_the_saved_step_are_dropped_on_resume(tmp_path):
    _train(tmp_path / "run", max_steps=30, stop_after=10)
    run_dir = RunDir(tmp_path / "run")
    # As if the process died after writing a record but before saving the state of step 14.
    run_dir.append_metrics({"step": 14, "val_loss": 1.0})
    _train(tmp_path / "run", max_steps=14, resume=True)
    steps = [r["step"] for r in run_dir.read_metrics()]
    assert steps == [7, 14]


# -- the command line --------------------------------------------------------------------------


def _cli_train(corpus, out, *extra):
    return run_cli(
        "train",
        str(corpus),
        "--out",
        str(out),
        "--eval-every",
        "10",
        "--lr",
        "0.01",
        "--warmup-steps",
        "2",
        *TINY_MODEL_OPTIONS,
        *extra,
    )


def test_resume_forms_run_dir_argument_and_out_option(pattern_corpus, tmp_path, monkeypatch):
    out = tmp_path / "run"
    assert _cli_train(pattern_corpus, out, "--max-steps", "10").exit_code == 0
    monkeypatch.chdir(tmp_path / "run")  # the corpus path is remembered absolutely
    result = run_cli("train", "--resume", str(out), "--max-steps", "20")
    assert result.exit_code == 0, result.stderr
    assert "resuming at step 10" in result.stderr
    assert load_training_state(out / "state.pt")["step"] == 20
    result = run_cli("train", str(pattern_corpus), "--resume", "--out", str(out), "--max-steps", "25")
    assert result.exit_code == 0, result.stderr
    assert load_training_state(out / "state.pt")["step"] == 25


def test_resume_of_default_run_dir_from_corpus(pattern_corpus, in_tmp):
    assert run_cli("train", str(pattern_corpus), "--max-steps", "5", *TINY_MODEL_OPTIONS).exit_code == 0
    result = run_cli("train", str(pattern_corpus), "--resume", "--max-steps", "8")
    assert result.exit_code == 0, result.stderr
    assert load_training_state(in_tmp / "runs/pattern/state.pt")["step"] == 8


@pytest.mark.parametrize(
    "option, value, named",
    [
        ("--hidden-size", "48", "--hidden-size is 48 but the run was trained with 32"),
        ("--model", "gru", "--model is 'gru' but the run was trained with 'lstm'"),
        ("--seq-len", "16", "--seq-len is 16 but the run was trained with 32"),
        ("--val-fraction", "0.2", "--val-fraction is 0.2 but the run was trained with 0.1"),
        ("--seed", "7", "--seed is 7 but the run was trained with 1337"),
    ],
)
def test_resume_with_other_settings_is_refused_naming_the_difference(
    pattern_corpus, tmp_path, option, value, named
):
    out = tmp_path / "run"
    assert _cli_train(pattern_corpus, out, "--max-steps", "5").exit_code == 0
    before = (out / "state.pt").read_bytes()
    result = run_cli("train", "--resume", str(out), option, value)
    assert result.exit_code == 1
    assert error_lines(result.stderr) == [f"Error: cannot resume: {named}"]
    assert (out / "state.pt").read_bytes() == before


def test_resume_on_another_corpus_is_refused(pattern_corpus, tmp_path):
    out = tmp_path / "run"
    assert _cli_train(pattern_corpus, out, "--max-steps", "5").exit_code == 0
    other = tmp_path / "other.txt"
    other.write_text(PATTERN.upper() * 200, encoding="utf-8")
    result = run_cli("train", str(other), "--resume", "--out", str(out))
    assert result.exit_code == 1
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and "the corpus differs" in lines[0] and str(pattern_corpus) in lines[0]


def test_resume_with_nothing_to_resume_and_fresh_run_over_old_one(pattern_corpus, tmp_path):
    result = run_cli("train", "--resume", str(tmp_path / "empty"))
    assert result.exit_code == 1 and error_lines(result.stderr)[0].startswith("Error: nothing to resume")
    out = tmp_path / "run"
    assert _cli_train(pattern_corpus, out, "--max-steps", "5").exit_code == 0
    again = _cli_train(pattern_corpus, out, "--max-steps", "5")
    assert again.exit_code == 1 and "add --resume" in again.stderr
    without_flag = run_cli("train", str(out))
    assert without_flag.exit_code == 2 and "add --resume" in without_flag.stderr


def test_keep_keeps_best_and_last_n(pattern_corpus, tmp_path):
    out = tmp_path / "run"
    result = _cli_train(pattern_corpus, out, "--max-steps", "50", "--keep", "2")
    assert result.exit_code == 0, result.stderr
    kept = sorted(p.name for p in out.glob("*.safetensors"))
    assert kept == [
        "best.safetensors",
        "latest.safetensors",
        "step-0000040.safetensors",
        "step-0000050.safetensors",
    ]
    assert load_weights(out / "step-0000040.safetensors").info["step"] == 40


def test_early_stop_after_n_evaluations_without_improvement(tmp_path):
    # lr so small that validation barely moves; any stall counts. Assert on the recorded history.
    losses, finished = _train(tmp_path / "run", max_steps=400, early_stop=2, lr=1e-9)
    records = RunDir(tmp_path / "run").read_metrics()
    assert finished.reason == "early-stop"
    best = min(r["val_loss"] for r in records)
    first_best = [r["val_loss"] for r in records].index(best)  # later equal losses are no improvement
    assert len(records) - 1 - first_best == 2  # exactly two evaluations without improvement
    assert finished.step == records[-1]["step"] < 400


def test_early_stop_option_is_validated():
    result = run_cli("train", "x.txt", "--early-stop", "0")
    assert result.exit_code == 2 and error_lines(result.stderr) == ["Error: --early-stop must be >= 1, got 0"]


def test_metrics_file_is_strict_json_even_when_a_figure_is_not_finite(tmp_path):
    run_dir = RunDir(tmp_path)
    run_dir.append_metrics({"step": 5, "train_loss": math.nan, "val_loss": 1.5})
    line = (tmp_path / "metrics.jsonl").read_text()
    assert json.loads(line, parse_constant=lambda name: pytest.fail(f"{name} in metrics.jsonl")) == {
        "step": 5,
        "train_loss": None,
        "val_loss": 1.5,
    }


class TickingClock:
    """A stand-in for the `time` module of the training code: every reading is `tick` seconds after the last.

    Training then takes the same steps, evaluations and stop decisions however loaded the
    machine is: its time budget is counted in clock readings, not in wall-clock seconds.
    """

    def __init__(self, tick: float) -> None:
        self.now, self.tick = 1000.0, tick

    def monotonic(self) -> float:
        self.now += self.tick
        return self.now

    perf_counter = monotonic


@pytest.fixture
def ticking_clock(monkeypatch) -> TickingClock:
    """Every clock the training loop, its reporting and its evaluation read, replaced by one ticking clock."""
    import charrnn.inspect.evaluation
    import charrnn.training.clock
    import charrnn.training.loop

    clock = TickingClock(0.01)
    for module in (charrnn.training.loop, charrnn.training.clock, charrnn.inspect.evaluation):
        monkeypatch.setattr(module, "time", clock)
    return clock


def _weights_files(run_path):
    return {p.name: p.read_bytes() for p in run_path.iterdir() if p.suffix == ".safetensors"}


def test_resuming_a_run_whose_time_budget_is_spent_changes_nothing(tmp_path, ticking_clock):
    losses, finished = _train(tmp_path / "run", max_steps=None, max_time=2.0, eval_every=None)
    assert finished.reason == "time" and losses
    assert len(RunDir(tmp_path / "run").read_metrics()) >= 2  # the saved state knows what an evaluation costs
    before = _weights_files(tmp_path / "run")
    more_losses, again = _train(tmp_path / "run", max_steps=None, max_time=2.0, eval_every=None, resume=True)
    # The saved cost of an evaluation keeps the reserve: no extra step, no evaluation past the budget.
    assert more_losses == [] and again.step == finished.step and again.reason == "time"
    assert _weights_files(tmp_path / "run") == before


def test_a_slow_last_evaluation_still_leaves_the_spent_budget_spent(tmp_path, ticking_clock, monkeypatch):
    import charrnn.training.loop

    real_evaluate, calls, session_start = charrnn.training.loop.evaluate, [], ticking_clock.now

    def evaluate_slowly_the_first_time(*arguments, **keywords):
        calls.append(1)
        if len(calls) == 1:  # a load spike: the first evaluation ends at 1.6 s of the 2 s budget
            ticking_clock.now = max(ticking_clock.now, session_start + 1.6)
        return real_evaluate(*arguments, **keywords)

    monkeypatch.setattr(charrnn.training.loop, "evaluate", evaluate_slowly_the_first_time)
    _, finished = _train(tmp_path / "run", max_steps=None, max_time=2.0, eval_every=None)
    assert finished.reason == "time" and len(calls) == 1  # it stopped: another such evaluation would not fit
    before = _weights_files(tmp_path / "run")
    monkeypatch.setattr(charrnn.training.loop, "evaluate", real_evaluate)
    more_losses, again = _train(tmp_path / "run", max_steps=None, max_time=2.0, eval_every=None, resume=True)
    assert more_losses == [] and again.step == finished.step
    assert _weights_files(tmp_path / "run") == before
