"""The parts of the training core on their own: schedule, run-state record, shifted windows, reporting."""

from __future__ import annotations

import dataclasses
import io

import numpy as np
import pytest
import torch
from conftest import PATTERN
from rich.console import Console

import charrnn.training.loop
from charrnn import events
from charrnn.cli.console import TrainingDisplay
from charrnn.config import EVALS_PER_RUN, ModelConfig, TrainConfig
from charrnn.data.in_memory import Corpus, prepare_corpus
from charrnn.data.windows import BatchStream, ShiftedPasses
from charrnn.distributed import World
from charrnn.errors import CheckpointError
from charrnn.store.checkpoint import load_training_state, read_saved_state
from charrnn.store.run_dir import RunDir
from charrnn.store.run_state import Counters, RunState, required_fields
from charrnn.training.loop import Trainer
from charrnn.training.schedule import Schedule

MODEL = ModelConfig(hidden_size=16, embedding_size=8, num_layers=1, dropout=0.0)
TEXT = "".join(f"{i} {PATTERN}" for i in range(60))


def _trainer(run_path, resume=False, world=World(), stop_after=None, **overrides):
    corpus = prepare_corpus(Corpus(TEXT, "t", "t.txt"), "char", 0.1)
    settings = dict(
        seq_len=16,
        batch_size=4,
        max_steps=12,
        eval_every=6,
        warmup_steps=2,
        threads=1,
        precision="fp32",
        seed=5,
    )
    run_dir = RunDir(run_path)
    run_dir.prepare()
    seen = []

    def record(event):
        if isinstance(event, events.StepDone):
            seen.append(event)

    state = read_saved_state(run_dir.state) if resume else None
    trainer = Trainer(
        corpus,
        MODEL,
        TrainConfig(**{**settings, **overrides}),
        run_dir,
        on_event=record,
        should_stop=lambda: stop_after is not None and len(seen) >= stop_after,
        resume_state=state,
        world=world,
    )
    return trainer, seen


# -- the optimiser -----------------------------------------------------------------------------


def test_training_on_a_cpu_uses_the_fused_adamw_with_the_same_updates(tmp_path):
    """PyTorch's default AdamW on a CPU is a per-tensor Python loop; the trainer asks for the
    fused kernel, which must make the same update (to float rounding) with the same settings."""
    trainer, _ = _trainer(tmp_path / "run")
    assert trainer.optimizer.defaults["fused"] is True
    torch.manual_seed(0)
    fused_model, loop_model = torch.nn.LSTM(4, 8), torch.nn.LSTM(4, 8)
    loop_model.load_state_dict(fused_model.state_dict())
    before = fused_model.weight_hh_l0.detach().clone()
    config = TrainConfig(lr=0.01, weight_decay=0.1)
    fused = charrnn.training.loop.build_optimizer(fused_model, config, torch.device("cpu"))
    loop = torch.optim.AdamW(loop_model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    for _ in range(5):
        for optimizer, model in ((fused, fused_model), (loop, loop_model)):
            optimizer.zero_grad()
            model(torch.ones(3, 4))[0].square().sum().backward()
            optimizer.step()
    for a, b in zip(fused_model.parameters(), loop_model.parameters()):
        torch.testing.assert_close(a, b)
    assert not torch.equal(fused_model.weight_hh_l0, before)  # the steps did move the weights


# -- the schedule ------------------------------------------------------------------------------


def test_schedule_warms_up_then_falls_by_cosine_to_the_floor():
    schedule = Schedule(TrainConfig(max_steps=100, warmup_steps=10, lr=1.0, min_lr_fraction=0.1))
    assert schedule.learning_rate(0, 0.0) == pytest.approx(0.1)
    assert schedule.learning_rate(9, 0.0) == pytest.approx(1.0)
    assert schedule.learning_rate(50, 0.0) == pytest.approx(0.1 + 0.9 * 0.5)
    assert schedule.learning_rate(100, 0.0) == pytest.approx(0.1)
    assert not schedule.steps_done(99) and schedule.steps_done(100)
    assert not schedule.time_up(1e9, 0.0)  # no time budget with --max-steps alone


def test_time_budget_schedule_is_driven_by_the_clock_readings_given():
    schedule = Schedule(TrainConfig(max_time=100.0, warmup_steps=0, lr=1.0, min_lr_fraction=0.0))
    assert schedule.learning_rate(5, 50.0) == pytest.approx(0.5)
    assert schedule.progress(5, 25.0) == pytest.approx(0.25)
    assert schedule.time_up(90.0, reserve=10.0) and not schedule.time_up(89.0, reserve=10.0)


def test_extended_step_budget_continues_the_cosine_without_a_jump():
    before = Schedule(TrainConfig(max_steps=100, warmup_steps=10, lr=1.0, min_lr_fraction=0.1))
    rate_at_stop = before.learning_rate(100, 0.0)
    after = Schedule.resumed(
        TrainConfig(max_steps=200, warmup_steps=10, lr=1.0, min_lr_fraction=0.1),
        before.anchor,
        step=100,
        elapsed=0.0,
    )
    assert after.learning_rate(100, 0.0) == pytest.approx(rate_at_stop)
    assert after.learning_rate(200, 0.0) == pytest.approx(0.1)
    middle = Schedule.resumed(
        TrainConfig(max_steps=200, warmup_steps=10, lr=1.0, min_lr_fraction=0.1),
        before.anchor,
        step=60,
        elapsed=0.0,
    )
    rates = [middle.learning_rate(step, 0.0) for step in range(60, 201)]
    assert rates[0] == pytest.approx(before.learning_rate(60, 0.0))
    assert all(a >= b for a, b in zip(rates, rates[1:])) and rates[-1] == pytest.approx(0.1)
    same = Schedule.resumed(TrainConfig(max_steps=100, warmup_steps=10, lr=1.0), before.anchor, 60, 0.0)
    assert same.anchor == before.anchor  # an unchanged budget keeps the schedule exactly


def test_evaluations_follow_the_step_budget_alone_or_eval_every():
    steps_only = Schedule(TrainConfig(max_steps=80))
    assert [s for s in range(1, 81) if steps_only.evaluation_due(s, 0.0)] == [10 * k for k in range(1, 9)]
    every = Schedule(TrainConfig(max_steps=80, max_time=5.0, eval_every=7))
    assert [s for s in range(1, 30) if every.evaluation_due(s, 1e6)] == [7, 14, 21, 28]


def test_with_both_budgets_evaluations_follow_the_one_that_runs_out_first():
    # Time runs out first: a million steps would never reach their first 1/8 before 100 s.
    schedule = Schedule(TrainConfig(max_steps=1_000_000, max_time=100.0))
    due = []
    for step in range(1, 1001):
        elapsed = step * 0.1
        if schedule.evaluation_due(step, elapsed):
            due.append(step)
            schedule.evaluated(step, elapsed, cost=0.01)
    assert len(due) == EVALS_PER_RUN and due[0] == 125
    # Steps run out first: evaluations by step progress, whatever the clock says.
    schedule = Schedule(TrainConfig(max_steps=80, max_time=1e6))
    due = []
    for step in range(1, 81):
        if schedule.evaluation_due(step, float(step)):
            due.append(step)
            schedule.evaluated(step, float(step), cost=0.01)
    assert due == [10 * k for k in range(1, 9)]


def test_timed_evaluations_keep_within_their_share_of_the_time():
    schedule = Schedule(TrainConfig(max_time=80.0))
    assert schedule.evaluation_due(1, 10.0)
    schedule.evaluated(1, 10.0, cost=3.0)  # costly: the next no sooner than 30 s later
    assert not schedule.evaluation_due(2, 25.0) and not schedule.evaluation_due(3, 39.9)
    assert schedule.evaluation_due(4, 40.0)


def test_a_long_budget_still_evaluates_and_saves_every_half_hour():
    # A day's budget spread 8 evaluations 3 hours apart (and a million steps 125,000 apart), so a
    # crash lost up to 3 hours: now at most 30 minutes pass between checkpoints.
    for config in (TrainConfig(max_time=24 * 3600.0), TrainConfig(max_steps=1_000_000)):
        schedule = Schedule(config)
        due = []
        for step in range(1, 4 * 360 + 1):  # a step every 5 s, for 2 hours
            elapsed = step * 5.0
            if schedule.evaluation_due(step, elapsed):
                due.append(elapsed)
                schedule.evaluated(step, elapsed, cost=10.0)
        assert due == [1800.0, 3600.0, 5400.0, 7200.0]
    resumed = Schedule(TrainConfig(max_time=24 * 3600.0), start_step=100, start_elapsed=5000.0)
    assert not resumed.evaluation_due(101, 6799.0) and resumed.evaluation_due(102, 6800.0)


# -- the run-state record ------------------------------------------------------------------------


def test_run_state_record_round_trips_and_is_the_list_the_checkpoint_checks(tmp_path):
    trainer, _ = _trainer(tmp_path / "run", max_steps=3)
    trainer.run()
    saved = load_training_state(tmp_path / "run/state.pt")
    record = RunState.from_dict(saved, "state.pt")
    assert record.counters.step == 3 and record.shift_passes is True
    assert record.to_dict(saved["format"], saved["format_version"]).keys() == saved.keys()
    names = (
        {f.name for f in dataclasses.fields(RunState)} - {"counters"}
        | {f.name for f in dataclasses.fields(Counters)}
        | {"format", "format_version"}
    )
    assert set(saved) == names  # nothing saved outside the record
    assert set(required_fields()) <= set(saved)
    assert required_fields()["step"] == (int,) and required_fields()["torch_rng"] == (torch.Tensor,)


def test_run_state_of_an_older_file_gets_the_defaults_that_reproduce_it():
    old = {
        "step": 7,
        "elapsed": 1.5,
        "model_config": "{}",
        "train_config": "{}",
        "tokenizer": "{}",
        "corpus_fingerprint": "f",
        "corpus_source": "c",
        "best_val_loss": 1.0,
        "best_val_bpc": 2.0,
        "model": {},
        "optimizer": {},
        "hidden": [],
        "torch_rng": torch.get_rng_state(),
    }
    record = RunState.from_dict(old, "state.pt")
    assert record.counters.last_eval_step == 7 and record.counters.skipped_steps == 0
    assert record.shift_passes is False and record.lr_anchor is None and record.world_size == 1
    assert record.stream_groups == 1  # before stream groups: one group
    with pytest.raises(CheckpointError, match="state.pt is corrupted"):
        RunState.from_dict({**old, "interval": {"bogus": 1}}, "state.pt")


# -- defects -------------------------------------------------------------------------------------


def test_only_the_writer_rank_cuts_the_metrics_on_resume(tmp_path, monkeypatch):
    trainer, _ = _trainer(tmp_path / "run", max_steps=12)
    trainer.run()
    run_dir = RunDir(tmp_path / "run")
    run_dir.append_metrics({"step": 99, "val_loss": 1.0})  # after the saved step: rank 0 drops it
    before = run_dir.metrics.read_bytes()
    monkeypatch.setattr(charrnn.training.loop, "wrap_model", lambda model, world, device: model)
    _trainer(tmp_path / "run", resume=True, world=World(rank=1, world_size=2), max_steps=24)
    assert run_dir.metrics.read_bytes() == before
    _trainer(tmp_path / "run", resume=True, max_steps=24)
    assert [r["step"] for r in run_dir.read_metrics()] == [6, 12]


def test_with_both_budgets_a_run_that_runs_out_of_time_evaluates_on_the_way(tmp_path):
    trainer, _ = _trainer(tmp_path / "run", max_steps=10_000_000, max_time=3.0, eval_every=None)
    finished = trainer.run()
    records = RunDir(tmp_path / "run").read_metrics()
    assert finished.reason == "time"
    assert len(records) >= 2 and records[0]["step"] < finished.step


def test_resuming_with_a_longer_step_budget_does_not_raise_the_learning_rate(tmp_path):
    trainer, first = _trainer(tmp_path / "run", max_steps=20, min_lr_fraction=0.1)
    trainer.run()
    trainer, second = _trainer(tmp_path / "run", resume=True, max_steps=40, min_lr_fraction=0.1)
    trainer.run()
    rates = [event.learning_rate for event in first + second]
    assert len(rates) == 40
    after_warmup = rates[2:]
    assert all(a >= b - 1e-12 for a, b in zip(after_warmup, after_warmup[1:])), rates
    assert rates[-1] == pytest.approx(TrainConfig().lr * 0.1, rel=0.02)


def test_a_finished_run_decayed_to_zero_goes_on_learning_when_extended(tmp_path):
    """The default floor is 0: a finished run ends at a rate of about 0, and its extension
    restarts the cosine from a tenth of --lr rather than staying at 0."""
    assert TrainConfig().min_lr_fraction == 0.0
    trainer, first = _trainer(tmp_path / "run", max_steps=20)
    trainer.run()
    trainer, second = _trainer(tmp_path / "run", resume=True, max_steps=40)
    trainer.run()
    lr = TrainConfig().lr
    assert first[-1].learning_rate < 0.01 * lr
    rates = [event.learning_rate for event in second]
    assert rates[0] == pytest.approx(0.1 * lr, rel=0.05)
    assert all(a >= b - 1e-12 for a, b in zip(rates, rates[1:])) and rates[-1] < 0.01 * lr


def test_extension_restarts_from_a_tenth_of_the_rate_only_when_it_had_fallen_below():
    before = Schedule(TrainConfig(max_steps=100, warmup_steps=10, lr=1.0, min_lr_fraction=0.0))
    ended = Schedule.resumed(
        TrainConfig(max_steps=200, warmup_steps=10, lr=1.0, min_lr_fraction=0.0),
        before.anchor,
        step=100,
        elapsed=0.0,
    )
    assert before.learning_rate(100, 0.0) == pytest.approx(0.0)
    assert ended.learning_rate(100, 0.0) == pytest.approx(0.1)
    assert ended.learning_rate(200, 0.0) == pytest.approx(0.0)
    halfway = Schedule.resumed(
        TrainConfig(max_steps=200, warmup_steps=10, lr=1.0, min_lr_fraction=0.0),
        before.anchor,
        step=50,
        elapsed=0.0,
    )
    assert halfway.learning_rate(50, 0.0) == pytest.approx(before.learning_rate(50, 0.0))


def test_a_run_resumed_at_step_0_says_so():
    # A run interrupted before its first step is saved at step 0, and resumes there.
    out = io.StringIO()
    display = TrainingDisplay(Console(file=out, width=400))
    started = dict(
        run_dir="r", num_parameters=1, vocab_size=10, tokenizer="char", chars_per_token=1.0,
        train_tokens=1000, val_tokens=100, eval_tokens=100, batch_size=8, seq_len=16, device="cpu",
        precision="fp32", threads=1, start_step=0, max_steps=100, budget_seconds=None,
    )  # fmt: skip
    display(events.TrainingStarted(**started, resumed=True))
    assert "resuming at step 0" in out.getvalue()
    fresh = io.StringIO()
    TrainingDisplay(Console(file=fresh, width=400))(events.TrainingStarted(**started))
    assert "resuming" not in fresh.getvalue()


def test_remaining_time_counts_every_process():
    display = TrainingDisplay(Console(file=io.StringIO()))
    display(
        events.TrainingStarted(
            run_dir="r",
            num_parameters=1,
            vocab_size=10,
            tokenizer="char",
            chars_per_token=1.0,
            train_tokens=1000,
            val_tokens=100,
            eval_tokens=100,
            batch_size=8,
            seq_len=16,
            device="cpu",
            precision="fp32",
            threads=1,
            start_step=0,
            max_steps=100,
            budget_seconds=None,
            processes=4,
        )
    )
    step = events.StepDone(
        step=50,
        loss=1.0,
        learning_rate=0.1,
        grad_norm=1.0,
        elapsed=10.0,
        chars_per_second=8 * 16 * 4 * 10.0,
        progress=0.5,
    )  # 10 steps/s, all processes
    assert display._remaining(step) == pytest.approx(5.0)


# -- shifted passes ------------------------------------------------------------------------------


def test_shifted_passes_keep_the_first_pass_and_shift_the_later_ones_inside_the_text():
    tokens = np.arange(1000)
    plain, shifted = BatchStream(tokens, 4, 16), ShiftedPasses(tokens, 4, 16, seed=3)
    first = plain.windows_per_epoch
    for index in range(first):
        assert all(np.array_equal(a, b) for a, b in zip(plain.window(index), shifted.window(index)))
    assert shifted.starts_epoch(first) and shifted.starts_epoch(first + shifted.later_pass_windows)
    offsets = {shifted.offset(p) for p in range(1, 30)}
    assert len(offsets) > 5 and max(offsets) <= shifted.max_offset and shifted.max_offset >= 16
    for index in range(first, first + 20 * shifted.later_pass_windows):
        inputs, targets = shifted.window(index)
        pass_number, within = shifted.locate(index)
        assert inputs[0, 0] == shifted.offset(pass_number) + within * 16  # streams move together
        assert np.array_equal(inputs[:, 1:], targets[:, :-1]) and targets.max() < len(tokens)
    assert ShiftedPasses(tokens, 4, 16, seed=3).offset(7) == shifted.offset(7)  # seeded: resume is exact


def test_resume_across_shifted_passes_is_exact(tmp_path):
    options = dict(max_steps=40, eval_every=10, batch_size=16)  # about 10 windows a pass
    straight, straight_steps = _trainer(tmp_path / "straight", **options)
    straight.run()
    assert straight.stream.locate(39)[0] >= 3 and isinstance(straight.stream, ShiftedPasses)
    split, first_steps = _trainer(tmp_path / "split", stop_after=17, **options)
    assert split.run().reason == "interrupted"
    split, second_steps = _trainer(tmp_path / "split", resume=True, **options)
    split.run()
    assert [(e.step, e.loss, e.grad_norm) for e in first_steps + second_steps] == [
        (e.step, e.loss, e.grad_norm) for e in straight_steps
    ]


def test_an_unshifted_run_stays_unshifted_on_resume(tmp_path):
    trainer, _ = _trainer(tmp_path / "run", max_steps=5, shift_passes=False)
    trainer.run()
    trainer, _ = _trainer(tmp_path / "run", resume=True, max_steps=8)  # shift_passes defaults to True
    assert isinstance(trainer.stream, BatchStream) and not isinstance(trainer.stream, ShiftedPasses)
    assert trainer.train_config.shift_passes is False
