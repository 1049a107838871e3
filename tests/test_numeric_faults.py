"""Non-finite losses and gradients: skipped and counted, divergence stops cleanly, bad weights never saved."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import PATTERN, TINY_MODEL_OPTIONS, error_lines, run_cli

from charrnn import events
from charrnn.config import ModelConfig, TrainConfig
from charrnn.data.in_memory import Corpus, prepare_corpus
from charrnn.model import CharRNN
from charrnn.store.checkpoint import load_training_state, load_weights
from charrnn.store.run_dir import RunDir
from charrnn.training.loop import Trainer, TrainingDiverged


class _NanGradient(torch.autograd.Function):
    """Identity forward, NaN backward: a finite loss whose gradient is not."""

    @staticmethod
    def forward(ctx, tensor):
        return tensor.view_as(tensor)

    @staticmethod
    def backward(ctx, grad):
        return grad * math.nan


@pytest.fixture
def poison(monkeypatch):
    """poison(loss_steps, grad_steps): training forward calls (1-based) that give a NaN loss /
    NaN gradient."""
    plan = {"loss": set(), "grad": set(), "calls": 0}
    real_forward = CharRNN.forward

    def forward(self, tokens, state=None, **options):
        logits, new_state = real_forward(self, tokens, state, **options)
        if self.training:
            plan["calls"] += 1
            if plan["calls"] in plan["loss"]:
                logits = logits * math.nan
            if plan["calls"] in plan["grad"]:
                logits = _NanGradient.apply(logits)
        return logits, new_state

    monkeypatch.setattr(CharRNN, "forward", forward)

    def configure(loss_steps=(), grad_steps=()):
        plan["loss"], plan["grad"] = set(loss_steps), set(grad_steps)

    return configure


def _trainer(run_path, **overrides):
    corpus = prepare_corpus(Corpus(PATTERN * 60, "p", "p.txt"), "char", 0.1)
    settings = dict(
        seq_len=16, batch_size=4, max_steps=8, eval_every=4, warmup_steps=1, threads=1, precision="fp32"
    )
    run_dir = RunDir(run_path)
    run_dir.prepare()
    seen = {"notices": [], "params": {}}

    def record(event):
        if isinstance(event, events.Notice):
            seen["notices"].append(event.message)
        elif isinstance(event, events.StepDone):
            seen["params"][event.step] = [p.detach().clone() for p in trainer.model.parameters()]

    trainer = Trainer(
        corpus,
        ModelConfig(hidden_size=16, embedding_size=8, num_layers=1, dropout=0.0),
        TrainConfig(**{**settings, **overrides}),
        run_dir,
        on_event=record,
    )
    return trainer, seen


def test_non_finite_steps_are_skipped_counted_and_leave_the_weights_alone(tmp_path, poison):
    poison(loss_steps=[3], grad_steps=[6])
    trainer, seen = _trainer(tmp_path / "run")
    finished = trainer.run()
    assert finished.reason == "done" and finished.step == 8
    for skipped in (3, 6):
        assert all(torch.equal(a, b) for a, b in zip(seen["params"][skipped - 1], seen["params"][skipped]))
    assert not all(torch.equal(a, b) for a, b in zip(seen["params"][3], seen["params"][4]))
    assert seen["notices"] == [
        "step 3: non-finite loss, step skipped (1 skipped so far)",
        "step 6: non-finite gradient, step skipped (2 skipped so far)",
    ]
    assert [r["skipped_steps"] for r in trainer.run_dir.read_metrics()] == [1, 2]
    assert load_training_state(tmp_path / "run/state.pt")["skipped_steps"] == 2
    load_weights(tmp_path / "run/latest.safetensors")  # finite, loadable


def test_several_non_finite_steps_in_a_row_stop_training_keeping_last_good_checkpoint(
    pattern_corpus, tmp_path, poison
):
    poison(loss_steps=range(13, 100))
    out = tmp_path / "run"
    result = run_cli(
        "train",
        str(pattern_corpus),
        "--out",
        str(out),
        "--max-steps",
        "40",
        "--eval-every",
        "10",
        *TINY_MODEL_OPTIONS,
    )
    assert result.exit_code == 1
    lines = error_lines(result.stderr)
    assert [line for line in lines if line.startswith("Error")] == [lines[-1]]
    assert lines[-1] == (
        f"Error: training diverged: 5 non-finite steps in a row, the last at step 17; "
        f"the last good checkpoint in {out} is kept (try a lower --lr or --grad-clip)"
    )
    assert load_training_state(out / "state.pt")["step"] == 10
    assert load_weights(out / "latest.safetensors").info["step"] == 10


def test_non_finite_weights_are_never_saved(tmp_path):
    trainer, _ = _trainer(tmp_path / "run", max_steps=4)
    trainer.run()
    before = {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir() if p.is_file()}
    with torch.no_grad():
        next(trainer.model.parameters())[0, 0] = math.inf
    with pytest.raises(TrainingDiverged, match="non-finite at step 4; nothing was saved"):
        trainer.checkpointer.save(trainer.model, trainer.run_state(), info={}, is_best=True)
    assert {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir() if p.is_file()} == before


def test_pre_clip_gradient_norm_is_logged(pattern_corpus, tmp_path):
    out = tmp_path / "run"
    result = run_cli(
        "train",
        str(pattern_corpus),
        "--out",
        str(out),
        "--max-steps",
        "10",
        "--eval-every",
        "5",
        "--grad-clip",
        "0.001",
        *TINY_MODEL_OPTIONS,
    )
    assert result.exit_code == 0, result.stderr
    assert "grad norm" in result.stderr and "(before clipping)" in result.stderr
    records = RunDir(out).read_metrics()
    assert len(records) == 2
    for record in records:
        # Clipped to 0.001, yet the logged norms are the larger ones from before clipping.
        assert record["grad_norm_max"] >= record["grad_norm_mean"] > 0.001
