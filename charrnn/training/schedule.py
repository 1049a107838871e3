"""The schedule: learning rate, progress, the end of the budget and when to evaluate.

Pure arithmetic on the step number and clock readings passed in as arguments:
it never looks at a clock itself, so tests drive it with made-up times.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from charrnn.config import EVALS_PER_RUN, TrainConfig

# With a time budget, evaluations are spaced so they take at most this share of it.
MAX_EVAL_SHARE = 0.1
# However long the budget, a run evaluates and saves at least this often (wall clock), so a day's
# run does not go three hours between checkpoints: a crash or a kill loses at most this much.
MAX_SECONDS_BETWEEN_EVALUATIONS = 30 * 60.0
# A run whose budget is extended on resume goes on from the rate it had reached, but from at
# least this fraction of --lr: with the default floor of 0 a finished run has decayed to a rate
# of about 0, and would otherwise train on without learning.
EXTENSION_MIN_SCALE = 0.1


@dataclass(frozen=True)
class LearningRateAnchor:
    """Where the cosine starts: at `step` (or `elapsed` seconds, for time budgets) at `scale` x --lr.

    A fresh run starts the cosine at step 0 at the peak. When a resumed run's budget
    changes, the cosine restarts from the rate the run had reached, at the point it
    had reached (but from at least EXTENSION_MIN_SCALE x --lr), and falls to the floor
    over what is left of the new budget: the rate never jumps up by more than that.
    `max_steps` and `budget_seconds` are the budget it was set for.
    """

    step: int = 0
    elapsed: float = 0.0
    scale: float = 1.0
    max_steps: int | None = None
    budget_seconds: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain values for the run state."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> LearningRateAnchor:
        """The anchor saved by `to_dict`."""
        return cls(**values)

    @classmethod
    def saved(cls, values: dict[str, Any] | None, saved_config: TrainConfig) -> LearningRateAnchor:
        """The anchor of a saved run; states written before anchors trained on the plain cosine
        over the budget they were saved with."""
        if values is not None:
            return cls.from_dict(values)
        return cls(max_steps=saved_config.max_steps, budget_seconds=saved_config.budget_seconds())


class Schedule:
    """The learning rate and budget of one training config; evaluation spacing for one session."""

    def __init__(
        self,
        config: TrainConfig,
        anchor: LearningRateAnchor | None = None,
        start_step: int = 0,
        start_elapsed: float = 0.0,
    ) -> None:
        self.config = config
        self.max_steps = config.max_steps
        self.budget_seconds = config.budget_seconds()
        self.anchor = anchor or LearningRateAnchor(
            max_steps=self.max_steps, budget_seconds=self.budget_seconds
        )
        self._next_evaluation = self._next_mark(self.progress(start_step, start_elapsed))
        self._not_before = 0.0
        self._last_evaluation = start_elapsed

    @classmethod
    def resumed(cls, config: TrainConfig, saved: LearningRateAnchor, step: int, elapsed: float) -> Schedule:
        """The schedule of a resumed run: the saved one, re-anchored where it is if the budget changed."""
        schedule = cls(config, saved, step, elapsed)
        if (saved.max_steps, saved.budget_seconds) == (schedule.max_steps, schedule.budget_seconds):
            return schedule
        if step < config.warmup_steps:  # still warming up: the cosine has not begun
            anchor = LearningRateAnchor(max_steps=schedule.max_steps, budget_seconds=schedule.budget_seconds)
        else:
            reached = schedule.learning_rate(step, elapsed, saved) / config.lr
            anchor = LearningRateAnchor(
                step=step,
                elapsed=elapsed,
                scale=max(reached, EXTENSION_MIN_SCALE),
                max_steps=schedule.max_steps,
                budget_seconds=schedule.budget_seconds,
            )
        return cls(config, anchor, step, elapsed)

    # -- learning rate ----------------------------------------------------------------------

    def learning_rate(self, step: int, elapsed: float, anchor: LearningRateAnchor | None = None) -> float:
        """Linear warm-up over `warmup_steps`, then a cosine from the anchor's rate to
        `lr * min_lr_fraction`."""
        config = self.config
        if step < config.warmup_steps:
            return config.lr * (step + 1) / config.warmup_steps
        anchor = anchor or self.anchor
        cosine = 0.5 * (1.0 + math.cos(math.pi * min(1.0, max(0.0, _cosine_progress(anchor, step, elapsed)))))
        floor = config.lr * config.min_lr_fraction
        return floor + (config.lr * anchor.scale - floor) * cosine

    # -- budget -----------------------------------------------------------------------------

    def progress(self, step: int, elapsed: float) -> float:
        """How far through the budget (0..1): of whichever of steps and time runs out first."""
        fractions = [0.0]
        if self.max_steps is not None:
            fractions.append(step / self.max_steps)
        if self.budget_seconds:
            fractions.append(elapsed / self.budget_seconds)
        return min(1.0, max(fractions))

    def steps_done(self, step: int) -> bool:
        """True once --max-steps steps are done."""
        return self.max_steps is not None and step >= self.max_steps

    def time_up(self, elapsed: float, reserve: float) -> bool:
        """True when `reserve` more seconds (the final evaluation and save, one step) would
        overrun the time budget."""
        return self.budget_seconds is not None and elapsed + reserve >= self.budget_seconds

    # -- evaluations ------------------------------------------------------------------------

    def evaluation_due(self, step: int, elapsed: float) -> bool:
        """True when step `step`, finished at `elapsed`, should be followed by an evaluation and a save.

        --eval-every N: every N steps. A step budget alone: about EVALS_PER_RUN evaluations, every
        max_steps // EVALS_PER_RUN steps. With a time budget (alone, or beside --max-steps): each time
        the progress of whichever budget runs out first passes the next 1/EVALS_PER_RUN, but never
        sooner after the last evaluation than keeps evaluating within MAX_EVAL_SHARE of the time.
        Without --eval-every, also once MAX_SECONDS_BETWEEN_EVALUATIONS have passed since the last.
        """
        if self.config.eval_every is not None:
            return step % self.config.eval_every == 0
        if elapsed - self._last_evaluation >= MAX_SECONDS_BETWEEN_EVALUATIONS and elapsed >= self._not_before:
            return True
        if self.budget_seconds is None:
            # TrainConfig.budget_seconds() is None only when --max-steps is the budget.
            assert self.max_steps is not None
            return step % max(1, self.max_steps // EVALS_PER_RUN) == 0
        return self.progress(step, elapsed) >= self._next_evaluation and elapsed >= self._not_before

    def evaluated(self, step: int, started: float, cost: float) -> None:
        """Note an evaluation that began at `started` (after step `step`) and took `cost` seconds."""
        self._next_evaluation = self._next_mark(self.progress(step, started))
        self._not_before = started + cost / MAX_EVAL_SHARE
        self._last_evaluation = started

    @staticmethod
    def _next_mark(progress: float) -> float:
        return (math.floor(progress * EVALS_PER_RUN + 1e-9) + 1) / EVALS_PER_RUN


def _cosine_progress(anchor: LearningRateAnchor, step: int, elapsed: float) -> float:
    """How far the cosine has gone: by steps when the anchor's budget has --max-steps, else by time."""
    if anchor.max_steps is not None:
        return (step - anchor.step) / max(1, anchor.max_steps - anchor.step)
    if anchor.budget_seconds:
        return (elapsed - anchor.elapsed) / max(1e-9, anchor.budget_seconds - anchor.elapsed)
    return 0.0
