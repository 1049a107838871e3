"""The training loop: truncated BPTT over contiguous streams, evaluation, checkpoints.

It reports through `on_event` (objects from `events.py`) and never prints.
The loop is a plain function of the step number: window i of the data, the
learning rate at step i, and the carried hidden state all follow from the
step and the saved state, which is what makes resuming exact.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Optional

import torch

from . import events
from .checkpoint import FORMAT_NAME, FORMAT_VERSION, save_training_state, save_weights
from .config import EVALS_PER_RUN, ModelConfig, SampleConfig, TrainConfig
from .data import BatchStream, PreparedCorpus, fit_batch_size, token_counts
from .evaluation import evaluate, evaluation_split
from .distributed import World, wrap_model
from .errors import CharrnnError, CheckpointError, RunDirError
from .hardware import configure_threads, resolve_device, resolve_precision
from .loss import head_cross_entropy
from .model import CharRNN, State, count_parameters, detach_state
from .rundir import RunDir
from .sampling import generate_text

PREVIEW_CHARS = 200
# With a time budget, evaluations are spaced so they take at most this share of it.
MAX_EVAL_SHARE = 0.1
MAX_BAD_STEPS_IN_A_ROW = 5


class TrainingDiverged(CharrnnError):
    """Loss or gradients stayed non-finite for several steps in a row."""


@dataclass
class IntervalStats:
    """Sums over the steps since the last evaluation; saved with the state so a resume reports the same."""

    loss_sum: float = 0.0
    good_steps: int = 0
    grad_norm_sum: float = 0.0     # pre-clip global gradient norms
    grad_norm_max: float = 0.0

    def add(self, loss: float, grad_norm: float) -> None:
        """Count one step whose loss and gradient were finite."""
        self.loss_sum += loss
        self.good_steps += 1
        self.grad_norm_sum += grad_norm
        self.grad_norm_max = max(self.grad_norm_max, grad_norm)

    def mean_loss(self) -> float:
        """Mean training loss of the interval (NaN when no step was finite)."""
        return self.loss_sum / self.good_steps if self.good_steps else math.nan

    def mean_grad_norm(self) -> float:
        """Mean pre-clip gradient norm of the interval (NaN when no step was finite)."""
        return self.grad_norm_sum / self.good_steps if self.good_steps else math.nan


def _state_to_list(state: Optional[State]) -> list[torch.Tensor]:
    if state is None:
        return []
    return [t.detach().cpu().clone() for t in (state if isinstance(state, tuple) else (state,))]


def _state_from_list(parts: list[torch.Tensor], device: torch.device) -> Optional[State]:
    if not parts:
        return None
    moved = [p.to(device) for p in parts]
    return tuple(moved) if len(moved) == 2 else moved[0]  # type: ignore[return-value]


def learning_rate(config: TrainConfig, step: int, progress: float) -> float:
    """Linear warm-up over `warmup_steps`, then cosine decay to `lr * min_lr_fraction` as progress reaches 1."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    cosine = 0.5 * (1.0 + math.cos(math.pi * min(1.0, max(0.0, progress))))
    floor = config.lr * config.min_lr_fraction
    return floor + (config.lr - floor) * cosine


class Trainer:
    """Trains one model on one prepared corpus into one run directory."""

    def __init__(self, corpus: PreparedCorpus, model_config: ModelConfig, train_config: TrainConfig,
                 run_dir: RunDir, on_event: Callable[[object], None] = lambda event: None,
                 should_stop: Callable[[], bool] = lambda: False,
                 resume_state: Optional[dict[str, Any]] = None, world: World = World()) -> None:
        self.corpus = corpus
        self.train_config = train_config.validate()
        self.model_config = model_config
        self.model_config.vocab_size = corpus.tokenizer.vocab_size
        self.model_config.validate()
        self.run_dir = run_dir
        self.on_event = on_event
        self.should_stop = should_stop
        self.resume_state = resume_state
        # Distributed runs: this process's rank; only the writer (rank 0) writes files.
        self.world = world
        self._agreed_elapsed: Optional[float] = None

    # -- set-up -------------------------------------------------------------------------

    def _setup(self) -> None:
        config = self.train_config
        self.device = self.world.device_for(resolve_device(config.device))
        self.threads = configure_threads(config.threads, self.world.local_world_size)
        self.precision = resolve_precision(config.precision, self.device)
        torch.manual_seed(config.seed)
        self.model = CharRNN(self.model_config).to(self.device)
        # Same counts on every rank (the same prefix of the same file): the replicas start equal.
        self.model.set_output_prior(torch.from_numpy(
            token_counts(self.corpus.train_tokens, self.model_config.vocab_size)))
        if self.world.is_distributed:
            torch.manual_seed(config.seed + self.world.rank)   # each rank its own dropout masks
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=config.lr,
                                           weight_decay=config.weight_decay)
        self.batch_size = fit_batch_size(len(self.corpus.train_tokens), config.batch_size, config.seq_len,
                                         self.world.world_size)
        if self.batch_size < config.batch_size:
            self.on_event(events.Notice(
                f"the corpus is small: --batch-size lowered from {config.batch_size} to "
                f"{self.batch_size} so every stream holds a whole window"))
        self.stream = BatchStream(self.corpus.train_tokens, self.batch_size, config.seq_len,
                                  self.world.rank, self.world.world_size)
        self.chars_per_token = self.corpus.train_chars / max(1, len(self.corpus.train_tokens))
        self.eval_tokens, self.eval_chars = evaluation_split(self.corpus, config.eval_tokens)
        self.step = 0
        self.elapsed_before = 0.0
        self.best_val_loss = math.inf
        self.best_val_bpc = math.inf
        self.hidden: Optional[State] = None
        self.interval = IntervalStats()
        self.last_eval_step = -1
        self.skipped_steps = 0               # non-finite steps, over the whole run
        self.bad_steps_in_a_row = 0
        self.evals_without_improvement = 0   # for --early-stop
        if self.resume_state is not None:
            self._restore(self.resume_state)
            # Records after the saved step belong to work that was lost: it will be redone.
            self.run_dir.forget_metrics_after(self.step)
        self._current_lr = learning_rate(config, self.step, 0.0)
        # What the training step runs: the model itself, or its DDP wrapper (which averages gradients).
        self.train_model = wrap_model(self.model, self.world, self.device)

    def _autocast(self):
        if self.precision == "bf16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _restore(self, state: dict[str, Any]) -> None:
        try:
            saved_batch_size = int(state.get("batch_size", self.batch_size))
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.hidden = _state_from_list(self._own_streams(state["hidden"]), self.device)
            rng_by_rank = state.get("torch_rng_by_rank")
            # clone(): a row of the saved matrix is a view with an offset, which set_rng_state misreads.
            torch.set_rng_state(rng_by_rank[self.world.rank].clone() if rng_by_rank is not None
                                else state["torch_rng"])
            if self.device.type == "cuda" and state.get("cuda_rng") is not None:
                torch.cuda.set_rng_state(state["cuda_rng"])
            if self.device.type == "mps" and state.get("mps_rng") is not None:
                torch.mps.set_rng_state(state["mps_rng"])
            self.interval = IntervalStats(**state.get("interval", {}))
            self.step = int(state["step"])
            self.elapsed_before = float(state["elapsed"])
            self.best_val_loss = float(state["best_val_loss"])
            self.best_val_bpc = float(state["best_val_bpc"])
            self.last_eval_step = int(state.get("last_eval_step", self.step))
            self.skipped_steps = int(state.get("skipped_steps", 0))
            self.bad_steps_in_a_row = int(state.get("bad_steps_in_a_row", 0))
            self.evals_without_improvement = int(state.get("evals_without_improvement", 0))
            self._eval_clock_seconds = float(state.get("eval_clock_seconds", 0.0))
            self._last_step_seconds = float(state.get("step_seconds", 0.0))
        except (KeyError, ValueError, TypeError, RuntimeError, IndexError) as error:
            raise CheckpointError(
                f"{self.run_dir.state} is corrupted ({str(error).splitlines()[0][:200]})") from None
        if saved_batch_size != self.batch_size:
            raise RunDirError(
                f"cannot resume: the run trained {saved_batch_size} streams side by side, "
                f"this one would train {self.batch_size} (keep --batch-size and --seq-len)")

    def _own_streams(self, parts: list[torch.Tensor]) -> list[torch.Tensor]:
        # Saved states hold every rank's streams side by side (batch dim 1); keep this rank's.
        first = self.world.rank * self.batch_size
        return [part[:, first:first + self.batch_size] for part in parts]

    def training_state(self) -> dict[str, Any]:
        """Everything needed to continue exactly from the current step (plain types and tensors only).

        In a distributed run every rank must call this (it gathers the ranks' hidden
        states and random generators); rank 0 saves the result.
        """
        world = self.world
        return {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "step": self.step,
            "elapsed": self.elapsed(),
            "model_config": json.dumps(self.model_config.to_dict()),
            "train_config": json.dumps(self.train_config.to_dict()),
            "tokenizer": json.dumps(self.corpus.tokenizer.to_dict()),
            "corpus_fingerprint": self.corpus.fingerprint,
            # Absolute, so `charrnn train --resume RUN_DIR` finds the corpus from any folder.
            "corpus_source": (self.corpus.source if self.corpus.source == "-"
                              else os.path.abspath(self.corpus.source)),
            "batch_size": self.batch_size,
            "best_val_loss": self.best_val_loss,
            "best_val_bpc": self.best_val_bpc,
            "last_eval_step": self.last_eval_step,
            "skipped_steps": self.skipped_steps,
            "bad_steps_in_a_row": self.bad_steps_in_a_row,
            "evals_without_improvement": self.evals_without_improvement,
            # What an evaluation and a step cost: a resumed run keeps its budget's reserve for them.
            "eval_clock_seconds": self._eval_clock_seconds,
            "step_seconds": self._last_step_seconds,
            "interval": asdict(self.interval),
            "model": {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "hidden": [world.gather_along(part, 1) for part in _state_to_list(self.hidden)],
            "torch_rng": torch.get_rng_state(),
            "torch_rng_by_rank": world.gather_along(torch.get_rng_state()[None], 0)
            if world.is_distributed else None,
            "world_size": world.world_size,
            "cuda_rng": torch.cuda.get_rng_state() if self.device.type == "cuda" else None,
            "mps_rng": torch.mps.get_rng_state() if self.device.type == "mps" else None,
        }

    # -- the loop -----------------------------------------------------------------------

    def elapsed(self) -> float:
        """Training wall-clock seconds, including those of earlier sessions of a resumed run."""
        if self._agreed_elapsed is not None:
            return self._agreed_elapsed   # distributed: one clock for all ranks (same lr, same stop)
        return self._local_elapsed()

    def _local_elapsed(self) -> float:
        return self.elapsed_before + (time.monotonic() - self._started)

    def progress(self) -> float:
        """How far through the budget: by steps when --max-steps is set, else by time."""
        config = self.train_config
        if config.max_steps is not None:
            return self.step / config.max_steps
        budget = config.budget_seconds()
        return self.elapsed() / budget if budget else 0.0

    def run(self) -> events.TrainingFinished:
        """Train until the budget is spent or `should_stop()`; return how it ended."""
        self._setup()
        config = self.train_config
        budget = config.budget_seconds()
        self._started = time.monotonic()
        if budget is not None:
            self._next_timed_eval = self.elapsed() + budget / EVALS_PER_RUN
        self.on_event(events.TrainingStarted(
            run_dir=self.run_dir.path, num_parameters=count_parameters(self.model),
            vocab_size=self.corpus.tokenizer.vocab_size, tokenizer=self.corpus.tokenizer.kind,
            chars_per_token=self.chars_per_token, train_tokens=len(self.corpus.train_tokens),
            val_tokens=len(self.corpus.val_tokens), eval_tokens=len(self.eval_tokens), batch_size=self.batch_size, seq_len=config.seq_len,
            device=str(self.device), precision=self.precision, threads=self.threads,
            start_step=self.step, max_steps=config.max_steps, budget_seconds=budget,
            processes=self.world.world_size))
        parameters = [p for p in self.model.parameters() if p.requires_grad]
        reason = "done"
        self.model.train()
        while True:
            if config.max_steps is not None and self.step >= config.max_steps:
                reason = "done"
                break
            time_up = False
            if budget is not None:
                # Stop early enough that the final evaluation and save also fit in the budget.
                # (An evaluation's cost includes its preview and checkpoint saves; add one step.
                # It is restored with the state, so resuming a run whose budget is spent stays done.)
                reserve = (1.2 * (self._eval_clock_seconds or self._guess_eval_seconds())
                           + self._last_step_seconds)
                time_up = self.elapsed() + reserve >= budget
            stop_requested = self.should_stop()
            if self.world.is_distributed:
                # All ranks must stop at the same step, or some would wait in a collective forever.
                time_up, stop_requested = self._agree(time_up, stop_requested)
            if time_up:
                reason = "time"
                break
            if stop_requested:
                reason = "interrupted"
                break
            if (config.early_stop is not None
                    and self.evals_without_improvement >= config.early_stop):
                reason = "early-stop"
                break
            step_started = time.perf_counter()
            loss_value, grad_norm = self._train_step(parameters)
            self._count_step(loss_value, grad_norm)
            self.step += 1
            step_seconds = time.perf_counter() - step_started
            self._last_step_seconds = step_seconds
            self._record_speed(step_seconds)
            self.on_event(events.StepDone(
                step=self.step, loss=loss_value, learning_rate=self._current_lr, grad_norm=grad_norm,
                elapsed=self.elapsed(), chars_per_second=self.chars_per_second,
                progress=min(1.0, self.progress())))
            if self._evaluation_due():
                self._evaluate_and_save()
        if reason in ("done", "time") and self.last_eval_step != self.step:
            self._evaluate_and_save()
        elif reason == "interrupted" and self.last_eval_step != self.step:
            self._save(is_best=False, info_extra={})
        return events.TrainingFinished(
            step=self.step, reason=reason, best_val_loss=self.best_val_loss,
            best_val_bpc=self.best_val_bpc, elapsed=self.elapsed(), run_dir=self.run_dir.path)

    def _count_step(self, loss_value: float, grad_norm: float) -> None:
        """Add a finished step to the statistics, or count it as skipped; give up after too many."""
        if math.isfinite(loss_value) and math.isfinite(grad_norm):
            self.bad_steps_in_a_row = 0
            self.interval.add(loss_value, grad_norm)
            return
        self.skipped_steps += 1
        self.bad_steps_in_a_row += 1
        self.on_event(events.Notice(
            f"step {self.step + 1}: non-finite {'loss' if not math.isfinite(loss_value) else 'gradient'}"
            f", step skipped ({self.skipped_steps} skipped so far)"))
        if self.bad_steps_in_a_row >= MAX_BAD_STEPS_IN_A_ROW:
            raise TrainingDiverged(
                f"training diverged: {self.bad_steps_in_a_row} non-finite steps in a row, the last "
                f"at step {self.step + 1}; the last good checkpoint in {self.run_dir.path} is kept "
                "(try a lower --lr or --grad-clip)")

    def _train_step(self, parameters: list[torch.nn.Parameter]) -> tuple[float, float]:
        config = self.train_config
        if self.stream.starts_epoch(self.step) or self.hidden is None:
            self.hidden = self.model.initial_state(self.batch_size, self.device)
        inputs, targets = self.stream.window(self.step)
        inputs_t = torch.from_numpy(inputs).to(self.device, non_blocking=True)
        targets_t = torch.from_numpy(targets).to(self.device, non_blocking=True)
        self._current_lr = learning_rate(config, self.step, self.progress())
        for group in self.optimizer.param_groups:
            group["lr"] = self._current_lr
        self.optimizer.zero_grad(set_to_none=True)   # before the loss, which builds the head's gradients
        with self._autocast():
            features, hidden = self.train_model(inputs_t, self.hidden, features_only=True)
            loss = head_cross_entropy(features, self.model.head, targets_t)
        loss.backward()
        max_norm = config.grad_clip if config.grad_clip > 0 else math.inf
        grad_norm = float(torch.nn.utils.clip_grad_norm_(parameters, max_norm))
        loss_value = loss.item()
        if math.isfinite(loss_value) and math.isfinite(grad_norm):
            self.optimizer.step()
            self.hidden = detach_state(hidden)   # truncated BPTT: carry the state, cut the graph
        else:
            self.hidden = None                    # a poisoned state would poison every later window
        return loss_value, grad_norm

    def _evaluation_due(self) -> bool:
        config = self.train_config
        if config.eval_every is not None:
            return self.step % config.eval_every == 0
        if config.max_steps is not None:
            return self.step % max(1, config.max_steps // EVALS_PER_RUN) == 0
        if self.elapsed() >= self._next_timed_eval:
            # About EVALS_PER_RUN evaluations, but spaced so that evaluating (measured on the
            # shared clock, so every rank decides alike) stays within MAX_EVAL_SHARE of the time.
            spacing = max(config.budget_seconds() / EVALS_PER_RUN, self._eval_clock_seconds / MAX_EVAL_SHARE)
            self._next_timed_eval = self.elapsed() + spacing
            return True
        return False

    def _agree(self, *flags: bool) -> list[bool]:
        """Share the clock and the stop flags: every rank gets the maximum over all ranks."""
        agreed = self.world.agree(self._local_elapsed(), *(float(flag) for flag in flags))
        self._agreed_elapsed = agreed[0]
        return [value > 0 for value in agreed[1:]]

    # -- speed bookkeeping ----------------------------------------------------------------

    chars_per_second = 0.0

    def _record_speed(self, step_seconds: float) -> None:
        chars = self.batch_size * self.world.world_size * self.train_config.seq_len * self.chars_per_token
        current = chars / max(step_seconds, 1e-9)
        # An exponential average: steady enough to read, quick to follow a change.
        self.chars_per_second = current if not self.chars_per_second else (
            0.9 * self.chars_per_second + 0.1 * current)

    def _guess_eval_seconds(self) -> float:
        # Before the first evaluation: forward-only costs about a third of a training step per token.
        if not self.chars_per_second:
            return 0.0
        tokens_per_second = self.chars_per_second / self.chars_per_token
        return len(self.eval_tokens) / (3.0 * tokens_per_second) + 1.0

    # -- evaluation and checkpoints ---------------------------------------------------------

    _last_step_seconds = 0.0
    _eval_clock_seconds = 0.0     # what the last evaluation cost, on the (shared) training clock

    def _evaluate_and_save(self) -> None:
        """Evaluate, log, checkpoint and report; remember what all of that cost."""
        clock_started = self.elapsed()
        self._evaluate_save_and_report()
        self._eval_clock_seconds = self.elapsed() - clock_started

    def _evaluate_save_and_report(self) -> None:
        # Always in fp32, whatever the training precision: the reported figures stay comparable.
        result = evaluate(self.model, self.eval_tokens, self.eval_chars, self.device, world=self.world)
        train_loss = self.interval.mean_loss()
        if self.world.is_distributed:
            self._agree()                                     # the clock moved on during evaluation
            train_loss = self.world.sum(train_loss)[0] / self.world.world_size
        is_best = result.loss < self.best_val_loss
        if is_best:
            self.best_val_loss, self.best_val_bpc = result.loss, result.bits_per_char
            self.evals_without_improvement = 0
        else:
            self.evals_without_improvement += 1
        if not self.world.is_writer:
            self.interval = IntervalStats()
            self.last_eval_step = self.step
            self._save(is_best, {})                           # takes part in gathering the state
            return
        preview = self._preview()
        record = {
            "step": self.step, "elapsed": round(self.elapsed(), 3),
            "chars_seen": int(self.step * self.batch_size * self.world.world_size
                              * self.train_config.seq_len * self.chars_per_token),
            "train_loss": train_loss, "val_loss": result.loss, "val_bpc": result.bits_per_char,
            "chars_per_second": round(self.chars_per_second, 1), "eval_seconds": round(result.seconds, 3),
            "learning_rate": self._current_lr,
            # Pre-clip global gradient norms since the last evaluation: the early sign of trouble.
            "grad_norm_mean": self.interval.mean_grad_norm(), "grad_norm_max": self.interval.grad_norm_max,
            "skipped_steps": self.skipped_steps,
        }
        self.interval = IntervalStats()
        self.last_eval_step = self.step
        self.run_dir.append_metrics(record)
        self._save(is_best, {"val_loss": result.loss, "val_bpc": result.bits_per_char})
        self.on_event(events.EvaluationDone(
            step=self.step, train_loss=train_loss, val_loss=result.loss, val_bpc=result.bits_per_char,
            is_best=is_best, elapsed=self.elapsed(), eval_seconds=result.seconds, preview=preview))

    def _preview(self) -> str:
        model = self.model
        if self.device.type != "cpu":
            import copy
            model = copy.deepcopy(self.model).cpu()
        try:
            return "".join(generate_text(model, self.corpus.tokenizer, SampleConfig(
                temperature=0.8, length=PREVIEW_CHARS, seed=self.step)))
        except CharrnnError:
            return ""

    def _save(self, is_best: bool, info_extra: dict[str, Any]) -> None:
        if not all(torch.isfinite(p).all() for p in self.model.parameters()):
            raise TrainingDiverged(
                f"the weights became non-finite at step {self.step}; nothing was saved over "
                f"the last good checkpoint in {self.run_dir.path}")
        state = self.training_state()   # before the early return: gathering it involves every rank
        if not self.world.is_writer:
            return
        info = {"step": self.step, "corpus": self.corpus.name,
                "best_val_loss": self.best_val_loss, "best_val_bpc": self.best_val_bpc,
                "elapsed": round(self.elapsed(), 1),
                "train_config": self.train_config.to_dict(), **info_extra}
        tokenizer = self.corpus.tokenizer
        save_weights(self.run_dir.latest, self.model, tokenizer, info)
        if is_best:
            save_weights(self.run_dir.best, self.model, tokenizer, info)
        if self.train_config.keep > 0:
            save_weights(self.run_dir.step_weights(self.step), self.model, tokenizer, info)
            self.run_dir.prune_step_weights(self.train_config.keep)
        # The state goes last: a resume never starts from weights newer than its state.
        save_training_state(self.run_dir.state, state)


def check_resume_compatible(state: dict[str, Any], corpus_fingerprint: str,
                            model_config: ModelConfig) -> None:
    """Refuse, with one line naming the difference, to resume on another corpus or model shape."""
    if state.get("corpus_fingerprint") != corpus_fingerprint:
        raise RunDirError(
            f"cannot resume: the corpus differs from the one this run was trained on "
            f"({state.get('corpus_source')})")
    saved = ModelConfig.from_dict(json.loads(state["model_config"]))
    for name, value in model_config.to_dict().items():
        if name != "vocab_size" and getattr(saved, name) != value:
            raise RunDirError(
                f"cannot resume: --{name.replace('_', '-')} is {value!r} but the run was "
                f"trained with {getattr(saved, name)!r}")
