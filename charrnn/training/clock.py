"""What training measures about itself: the (shared) training clock and the speed.

The clock counts training seconds across sessions; in a distributed run the ranks
agree on one reading (the maximum), so they take the same decisions (learning rate,
evaluation, stop) at the same step.
"""

from __future__ import annotations

import copy
import datetime
import time
from collections.abc import Callable
from typing import Any

from charrnn import __version__
from charrnn.config import SampleConfig, TrainConfig
from charrnn.data.tokenizers import Tokenizer
from charrnn.distributed import World
from charrnn.errors import CharrnnError
from charrnn.generate.sampler import generate_text
from charrnn.inspect.evaluation import EvaluationResult
from charrnn.model import CharRNN
from charrnn.store.run_state import Counters

PREVIEW_CHARS = 200


class TrainingClock:
    """Seconds of training, those of earlier sessions of a resumed run included.

    `time_source` returns seconds on a clock that never goes back (`time.perf_counter` by
    default); tests pass a fake one so that budget decisions do not depend on the machine's load.
    """

    def __init__(
        self, world: World, elapsed_before: float = 0.0, time_source: Callable[[], float] | None = None
    ) -> None:
        self.world = world
        self.elapsed_before = elapsed_before
        self.time_source = time_source or time.perf_counter
        self._started = self.time_source()
        self._agreed: float | None = None

    def start(self) -> None:
        """Start counting this session's seconds now."""
        self._started = self.time_source()

    def local_elapsed(self) -> float:
        """This process's own reading."""
        return self.elapsed_before + (self.time_source() - self._started)

    def elapsed(self) -> float:
        """The reading every rank uses: the last agreed one in a distributed run, else the local one."""
        return self._agreed if self._agreed is not None else self.local_elapsed()

    def agree(self, *flags: bool) -> list[bool]:
        """Share the clock and the flags (one all-reduce): every rank gets the maximum over all ranks."""
        if not self.world.is_distributed:
            return list(flags)
        agreed = self.world.agree(self.local_elapsed(), *(float(flag) for flag in flags))
        self._agreed = agreed[0]
        return [value > 0 for value in agreed[1:]]


class SpeedMeter:
    """Characters per second of training, as an exponential average of the step times."""

    def __init__(self, chars_per_step: float, chars_per_token: float) -> None:
        self.chars_per_step = chars_per_step  # over all processes
        self.chars_per_token = chars_per_token
        self.chars_per_second = 0.0

    def record(self, step_seconds: float) -> None:
        """Count one step that took `step_seconds`."""
        current = self.chars_per_step / max(step_seconds, 1e-9)
        # An exponential average: steady enough to read, quick to follow a change.
        self.chars_per_second = (
            current if not self.chars_per_second else (0.9 * self.chars_per_second + 0.1 * current)
        )

    def guess_eval_seconds(self, eval_tokens: int) -> float:
        """Before the first evaluation: forward-only costs about a third of a training step per token."""
        if not self.chars_per_second:
            return 0.0
        tokens_per_second = self.chars_per_second / self.chars_per_token
        return eval_tokens / (3.0 * tokens_per_second) + 1.0


def metrics_record(
    counters: Counters,
    result: EvaluationResult,
    train_loss: float,
    learning_rate: float,
    elapsed: float,
    speed: SpeedMeter,
) -> dict[str, Any]:
    """The line an evaluation adds to metrics.jsonl (call before the interval is reset)."""
    return {
        "step": counters.step,
        "elapsed": round(elapsed, 3),
        "chars_seen": int(counters.step * speed.chars_per_step),
        "train_loss": train_loss,
        "val_loss": result.loss,
        "val_bpc": result.bits_per_char,
        "chars_per_second": round(speed.chars_per_second, 1),
        "eval_seconds": round(result.seconds, 3),
        "learning_rate": learning_rate,
        # Pre-clip global gradient norms since the last evaluation: the early sign of trouble.
        "grad_norm_mean": counters.interval.mean_grad_norm(),
        "grad_norm_max": counters.interval.grad_norm_max,
        "skipped_steps": counters.skipped_steps,
    }


def sample_preview(model: CharRNN, tokenizer: Tokenizer, seed: int) -> str:
    """A short sample shown after each evaluation (on a CPU copy when training on a GPU)."""
    if next(model.parameters()).device.type != "cpu":
        model = copy.deepcopy(model).cpu()
    try:
        return "".join(
            generate_text(model, tokenizer, SampleConfig(temperature=0.8, length=PREVIEW_CHARS, seed=seed))
        )
    except CharrnnError:
        return ""


def weights_info(
    counters: Counters,
    corpus_name: str,
    corpus_fingerprint: str,
    elapsed: float,
    precision: str,
    train_config: TrainConfig,
    parent: dict[str, Any] | None,
    extra: dict[str, Any],
    sizing: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The training summary stored in a weights file's metadata (what `charrnn info` shows)."""
    info = {
        "step": counters.step,
        "corpus": corpus_name,
        "corpus_fingerprint": corpus_fingerprint,
        "best_val_loss": counters.best_val_loss,
        "best_val_bpc": counters.best_val_bpc,
        "elapsed": round(elapsed, 1),
        "precision": precision,
        "charrnn_version": __version__,
        "saved_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "train_config": train_config.to_dict(),
        **extra,
    }
    if parent is not None:
        info["parent"] = parent  # a fine-tuning run: the model it started from
    if sizing is not None:
        info["sizing"] = sizing  # what the sizing rule chose, and why
    return info
