"""The training loop: truncated BPTT over contiguous streams, with evaluation and checkpoints.

It reports through `on_event` (objects from `events.py`) and never prints. Window i
of the data, the learning rate at step i and the carried hidden state all follow
from the step and the run state, which is what makes resuming exact. The parts
live next door: `store.run_state` (what is saved), `schedule` (learning rate, budget,
when to evaluate), `checkpointing` (files), `resume` (what a resume may change),
`clock` (clock, speed), `inspect.evaluation` (validation loss), `data.windows` (the data windows).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch

from charrnn import events
from charrnn.config import ModelConfig, TrainConfig
from charrnn.data.encoding import PreparedCorpus
from charrnn.data.in_memory import token_counts
from charrnn.data.windows import BatchStream, ShiftedPasses, fit_stream_layout
from charrnn.distributed import World, wrap_model
from charrnn.errors import CharrnnError, CheckpointError
from charrnn.events import StopReason
from charrnn.hardware import autocast, configure_threads, resolve_device, resolve_precision
from charrnn.inspect.evaluation import evaluate, evaluation_split
from charrnn.loss import head_cross_entropy
from charrnn.model import CharRNN, State, count_parameters, detach_state
from charrnn.store.run_dir import RunDir
from charrnn.store.run_state import (
    Counters,
    IntervalStats,
    RunState,
    SavedState,
    generator_states,
    hidden_for_saving,
    hidden_from_saved,
    restore_generators,
)
from charrnn.training.checkpointing import Checkpointer, TrainingDiverged
from charrnn.training.clock import SpeedMeter, TrainingClock, metrics_record, sample_preview, weights_info
from charrnn.training.resume import check_streams
from charrnn.training.schedule import LearningRateAnchor, Schedule

MAX_BAD_STEPS_IN_A_ROW = 5
# Devices where PyTorch has a fused AdamW kernel that this project has run.
FUSED_ADAMW_DEVICES = ("cpu", "cuda")


def build_optimizer(model: torch.nn.Module, config: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW over every weight of `model`, fused into one kernel where the device has one.

    PyTorch's default on a CPU is its per-tensor Python loop, a few small operations per weight
    tensor every step; fused, they are one kernel, a measurable share of a small model's step
    (the performance page has the figures; `benchmarks/performance.py` times both).
    """
    # None is AdamW's default for `fused`: the same as not passing it.
    fused = True if device.type in FUSED_ADAMW_DEVICES else None
    return torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay, fused=fused)


def clip_norm(config: TrainConfig) -> float:
    """The global gradient norm a step clips to: --grad-clip, or no clipping at 0."""
    return config.grad_clip if config.grad_clip > 0 else math.inf


class Trainer:
    """Trains one model on one prepared corpus into one run directory; built ready to `run()`."""

    def __init__(
        self,
        corpus: PreparedCorpus,
        model_config: ModelConfig,
        train_config: TrainConfig,
        run_dir: RunDir,
        on_event: Callable[[object], None] = lambda event: None,
        should_stop: Callable[[], bool] = lambda: False,
        resume_state: SavedState | None = None,
        world: World = World(),
        initial_weights: dict[str, torch.Tensor] | None = None,
        parent: dict[str, Any] | None = None,
        time_source: Callable[[], float] | None = None,
        sizing: dict[str, Any] | None = None,
    ) -> None:
        """`resume_state` (from `read_saved_state`) continues a saved run; `initial_weights` (a state
        dict) start a new run from a trained model (`--init-from`), whose record `parent` (name,
        weights hash) the run keeps; a resume restores both itself. `sizing` is the record of what
        the sizing rule chose for a new run (`sizing.SizingChoice.record`), kept in the run too.
        `time_source` (seconds, like `time.perf_counter`, the default) is the clock every budget,
        evaluation-spacing and step-time decision reads: tests give a fake one to make them exact."""
        self.time_source = time_source or time.perf_counter
        saved = resume_state.record if resume_state is not None else None
        # A resumed run keeps its windows (states older than the shift continue unshifted, and
        # states older than stream groups with one group).
        config = (
            replace(
                train_config,
                shift_passes=resume_state.record.shift_passes,
                stream_groups=resume_state.train_config.stream_groups,
            )
            if resume_state is not None
            else train_config
        )
        self.train_config = config = config.validate()
        self.model_config = replace(model_config, vocab_size=corpus.tokenizer.vocab_size).validate()
        self.corpus, self.run_dir, self.world = corpus, run_dir, world
        self.on_event, self.should_stop = on_event, should_stop
        self.device = world.device_for(resolve_device(config.device))
        self.threads = configure_threads(config.threads, world.local_world_size)
        self.precision = resolve_precision(config.precision, self.device)
        torch.manual_seed(config.seed)
        self.model = CharRNN(self.model_config).to(self.device)
        self.parent = saved.parent if saved is not None else parent
        self.sizing = saved.sizing if saved is not None else sizing
        if initial_weights is not None:
            self.model.load_state_dict(initial_weights)
        else:
            # Same counts on every rank (the same prefix of the same file): the replicas start equal.
            self.model.set_output_prior(
                torch.from_numpy(token_counts(corpus.train_tokens, self.model_config.vocab_size))
            )
        if world.is_distributed:
            torch.manual_seed(config.seed + world.rank)  # each rank its own dropout masks
        self.optimizer = build_optimizer(self.model, config, self.device)
        self.batch_size, self.stream_groups = fit_stream_layout(
            len(corpus.train_tokens),
            config.batch_size,
            config.stream_groups,
            config.seq_len,
            world.world_size,
        )
        if self.stream_groups < config.stream_groups:
            on_event(
                events.Notice(
                    f"the corpus is small: --stream-groups lowered from {config.stream_groups} to "
                    f"{self.stream_groups} so every stream holds a whole window"
                )
            )
        if self.batch_size < config.batch_size:
            on_event(
                events.Notice(
                    f"the corpus is small: --batch-size lowered from {config.batch_size} to "
                    f"{self.batch_size} so every stream holds a whole window"
                )
            )
        window_args = (corpus.train_tokens, self.batch_size, config.seq_len, world.rank, world.world_size)
        self.stream = (
            ShiftedPasses(*window_args, seed=config.seed, stream_groups=self.stream_groups)
            if config.shift_passes
            else BatchStream(*window_args, stream_groups=self.stream_groups)
        )
        self.chars_per_token = corpus.train_chars / max(1, len(corpus.train_tokens))
        self.evaluation_sample = evaluation_split(corpus, config.eval_tokens)
        self.speed = SpeedMeter(
            self.batch_size * world.world_size * config.seq_len * self.chars_per_token, self.chars_per_token
        )
        self.checkpointer = Checkpointer(run_dir, corpus, world, config.keep)
        self.counters = Counters()
        # The carried state of each stream group (None until the group's first window).
        self.hidden: list[State | None] = [None] * self.stream_groups
        self.clock = TrainingClock(world, time_source=self.time_source)
        self.schedule = Schedule(config)
        self.resumed = resume_state is not None
        if resume_state is not None:
            self._restore(resume_state)
            # Records after the saved step belong to work that was lost: it will be redone.
            self.checkpointer.forget_metrics_after(self.counters.step)
        self.learning_rate = self.schedule.learning_rate(self.counters.step, self.clock.elapsed())
        # What the training step runs: the model itself, or its DDP wrapper (which averages gradients).
        self.train_model = wrap_model(self.model, world, self.device)

    @property
    def step(self) -> int:
        """Steps done so far, over the whole run."""
        return self.counters.step

    def run(self) -> events.TrainingFinished:
        """Train until the budget is spent or `should_stop()`; return how it ended."""
        config, counters, schedule = self.train_config, self.counters, self.schedule
        self.clock.start()
        self.on_event(
            events.TrainingStarted(
                run_dir=self.run_dir.path,
                num_parameters=count_parameters(self.model),
                vocab_size=self.corpus.tokenizer.vocab_size,
                tokenizer=self.corpus.tokenizer.kind,
                chars_per_token=self.chars_per_token,
                train_tokens=len(self.corpus.train_tokens),
                val_tokens=len(self.corpus.val_tokens),
                eval_tokens=self.evaluation_sample.tokens_covered,
                batch_size=self.batch_size,
                stream_groups=self.stream_groups,
                seq_len=config.seq_len,
                device=str(self.device),
                precision=self.precision,
                threads=self.threads,
                start_step=counters.step,
                max_steps=config.max_steps,
                budget_seconds=schedule.budget_seconds,
                processes=self.world.world_size,
                parent=self.parent,
                sizing=self.sizing,
                resumed=self.resumed,
            )
        )
        self.model.train()
        while (reason := self._stop_reason()) is None:
            started = self.time_source()
            loss, grad_norm = self.train_step()
            counters.step_seconds = self.time_source() - started
            self.speed.record(counters.step_seconds)
            self.on_event(
                events.StepDone(
                    step=counters.step,
                    loss=loss,
                    learning_rate=self.learning_rate,
                    grad_norm=grad_norm,
                    elapsed=self.clock.elapsed(),
                    chars_per_second=self.speed.chars_per_second,
                    progress=schedule.progress(counters.step, self.clock.elapsed()),
                )
            )
            if schedule.evaluation_due(counters.step, self.clock.elapsed()):
                self._evaluate_and_save()
        if counters.last_eval_step != counters.step:
            if reason in (StopReason.DONE, StopReason.TIME):
                self._evaluate_and_save()
            elif reason is StopReason.INTERRUPTED:
                self.checkpointer.save(self.model, self.run_state(), self._info({}), is_best=False)
        return events.TrainingFinished(
            step=counters.step,
            reason=reason,
            best_val_loss=counters.best_val_loss,
            best_val_bpc=counters.best_val_bpc,
            elapsed=self.clock.elapsed(),
            run_dir=self.run_dir.path,
        )

    def _stop_reason(self) -> StopReason | None:
        """Why training should stop before the next step, or None to go on."""
        counters, schedule = self.counters, self.schedule
        if schedule.steps_done(counters.step):
            return StopReason.DONE
        # Stop early enough that the final evaluation (with its preview and saves) and one
        # more step also fit in the budget.
        reserve = (
            1.2
            * (
                counters.eval_clock_seconds
                or self.speed.guess_eval_seconds(self.evaluation_sample.tokens_covered)
            )
            + counters.step_seconds
        )
        # All ranks must stop at the same step, or some would wait in a collective forever.
        time_up, stop_requested = self.clock.agree(
            schedule.time_up(self.clock.local_elapsed(), reserve), self.should_stop()
        )
        if time_up or stop_requested:
            return StopReason.TIME if time_up else StopReason.INTERRUPTED
        early_stop = self.train_config.early_stop
        if early_stop is not None and counters.evals_without_improvement >= early_stop:
            return StopReason.EARLY_STOP
        return None

    def train_step(self) -> tuple[float, float]:
        """One truncated-BPTT step: next window, forward from the carried state, loss, backward,
        clip, step."""
        config, step = self.train_config, self.counters.step
        stream_group = self.stream.group_of(step)
        carried = self.hidden[stream_group]
        if self.stream.starts_epoch(step) or carried is None:
            carried = self.model.initial_state(self.batch_size, self.device)  # a pass starts cold
        inputs, targets = (
            torch.from_numpy(array).to(self.device, non_blocking=True) for array in self.stream.window(step)
        )
        self.learning_rate = self.schedule.learning_rate(step, self.clock.elapsed())
        for group in self.optimizer.param_groups:
            group["lr"] = self.learning_rate
        self.optimizer.zero_grad(set_to_none=True)  # before the loss, which builds the head's gradients
        with autocast(self.precision, self.device):
            features, hidden = self.train_model(inputs, carried, features_only=True)
            loss = head_cross_entropy(features, self.model.head, targets)
        loss.backward()
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip_norm(config)))
        loss_value = loss.item()
        if math.isfinite(loss_value) and math.isfinite(grad_norm):
            self.optimizer.step()
            self.hidden[stream_group] = detach_state(hidden)  # truncated BPTT: carry the state, cut the graph
        else:
            self.hidden[stream_group] = None  # a poisoned state would poison every later window
        self._count_step(loss_value, grad_norm)
        return loss_value, grad_norm

    def _count_step(self, loss_value: float, grad_norm: float) -> None:
        """Add a finished step to the statistics, or count it as skipped; give up after too many."""
        counters = self.counters
        counters.step += 1
        if math.isfinite(loss_value) and math.isfinite(grad_norm):
            counters.bad_steps_in_a_row = 0
            counters.interval.add(loss_value, grad_norm)
            return
        counters.skipped_steps += 1
        counters.bad_steps_in_a_row += 1
        self.on_event(
            events.Notice(
                f"step {counters.step}: non-finite {'loss' if not math.isfinite(loss_value) else 'gradient'}"
                f", step skipped ({counters.skipped_steps} skipped so far)"
            )
        )
        if counters.bad_steps_in_a_row >= MAX_BAD_STEPS_IN_A_ROW:
            raise TrainingDiverged(
                f"training diverged: {counters.bad_steps_in_a_row} non-finite steps in a row, the last "
                f"at step {counters.step}; the last good checkpoint in {self.run_dir.path} is kept "
                "(try a lower --lr or --grad-clip)"
            )

    def _evaluate_and_save(self) -> None:
        """Evaluate, log, checkpoint and report; remember what all of that cost on the shared clock."""
        counters, started = self.counters, self.clock.elapsed()
        # Weights that overflowed (a huge --lr) are refused before they are evaluated, previewed
        # (NumPy warned of invalid values) or logged (metrics.jsonl got a record of nulls).
        self.checkpointer.check_finite(self.model, counters.step)
        # Always in fp32, whatever the training precision: the reported figures stay comparable.
        sample = self.evaluation_sample
        result = evaluate(
            self.model, sample.tokens, sample.chars, self.device, world=self.world, limit=sample.limit
        )
        self.clock.agree()  # the clock moved on during evaluation
        train_loss = self.world.sum(counters.interval.mean_loss())[0] / self.world.world_size
        is_best = result.loss < counters.best_val_loss
        if is_best:
            counters.best_val_loss, counters.best_val_bpc = result.loss, result.bits_per_char
            counters.evals_without_improvement = 0
        else:
            counters.evals_without_improvement += 1
        record = metrics_record(
            counters, result, train_loss, self.learning_rate, self.clock.elapsed(), self.speed
        )
        preview = (
            sample_preview(self.model, self.corpus.tokenizer, counters.step) if self.world.is_writer else ""
        )
        counters.interval, counters.last_eval_step = IntervalStats(), counters.step
        # The state saved below must know what this evaluation cost (so far: the save itself comes
        # after), or a resumed run would keep too small a reserve and overrun a spent budget.
        counters.eval_clock_seconds = max(counters.eval_clock_seconds, self.clock.elapsed() - started)
        self.checkpointer.append_metrics(record)
        self.checkpointer.save(
            self.model,
            self.run_state(),
            is_best=is_best,
            info=self._info({"val_loss": result.loss, "val_bpc": result.bits_per_char}),
        )
        self.on_event(
            events.EvaluationDone(
                step=counters.step,
                train_loss=train_loss,
                val_loss=result.loss,
                val_bpc=result.bits_per_char,
                is_best=is_best,
                elapsed=self.clock.elapsed(),
                eval_seconds=result.seconds,
                preview=preview,
            )
        )
        counters.eval_clock_seconds = self.clock.elapsed() - started
        self.schedule.evaluated(counters.step, started, counters.eval_clock_seconds)

    def _info(self, extra: dict[str, Any]) -> dict[str, Any]:
        """The training summary stored in the weights' metadata."""
        return weights_info(
            self.counters,
            self.corpus.name,
            self.corpus.fingerprint,
            self.clock.elapsed(),
            self.precision,
            self.train_config,
            self.parent,
            extra,
            self.sizing,
        )

    # -- the run state ----------------------------------------------------------------------

    def run_state(self) -> RunState:
        """The record of the current step (every rank must call it: it gathers the ranks' states)."""
        return RunState(
            counters=replace(self.counters, interval=replace(self.counters.interval)),
            elapsed=self.clock.elapsed(),
            model_config=json.dumps(self.model_config.to_dict()),
            train_config=json.dumps(self.train_config.to_dict()),
            tokenizer=json.dumps(self.corpus.tokenizer.to_dict()),
            corpus_fingerprint=self.corpus.fingerprint,
            # Absolute, so `charrnn train --resume RUN_DIR` finds the corpus from any folder.
            corpus_source=self.corpus.source
            if self.corpus.source == "-"
            else os.path.abspath(self.corpus.source),
            # No copy: the record is saved at once, before the weights change again.
            model={k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            optimizer=self.optimizer.state_dict(),
            hidden=hidden_for_saving(self.hidden, self.world),
            batch_size=self.batch_size,
            stream_groups=self.stream_groups,
            world_size=self.world.world_size,
            lr_anchor=self.schedule.anchor.to_dict(),
            shift_passes=self.train_config.shift_passes,
            parent=self.parent,
            sizing=self.sizing,
            **generator_states(self.world, self.device),
        )

    def _restore(self, resume_state: SavedState) -> None:
        """Continue from a saved record: weights, optimiser, carried state, generators, counters, schedule."""
        saved = resume_state.record
        check_streams(saved.batch_size, self.batch_size, saved.stream_groups, self.stream_groups)
        try:
            self.model.load_state_dict(saved.model)
            self.optimizer.load_state_dict(saved.optimizer)
            self.hidden = hidden_from_saved(
                saved.hidden, self.world, self.batch_size, self.device, self.stream_groups
            )
            restore_generators(saved, self.world, self.device)
            anchor = LearningRateAnchor.saved(saved.lr_anchor, resume_state.train_config)
        except (KeyError, ValueError, TypeError, RuntimeError, IndexError, CharrnnError) as error:
            raise CheckpointError(
                f"{self.run_dir.state} is corrupted ({str(error).splitlines()[0][:200]})"
            ) from None
        self.counters = saved.counters
        self.clock = TrainingClock(self.world, saved.elapsed, self.time_source)
        self.schedule = Schedule.resumed(self.train_config, anchor, saved.counters.step, saved.elapsed)
