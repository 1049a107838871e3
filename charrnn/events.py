"""Small event objects the training loop reports through; `console.py` turns them into output."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from pathlib import Path


class StopReason(str, Enum):
    """Why a training session ended; the values are what `end.json` files hold, so they never change."""

    DONE = "done"  # the step budget (--max-steps) is spent
    TIME = "time"  # the time budget (--max-time) is spent
    INTERRUPTED = "interrupted"  # asked to stop (Ctrl-C, SIGTERM, `should_stop`): saved, resumable
    EARLY_STOP = "early-stop"  # validation stopped improving (--early-stop)

    def __str__(self) -> str:
        return self.value

    @property
    def finished(self) -> bool:
        """True when the run ended on its own; False when it was stopped and `--resume` continues it."""
        return self is not StopReason.INTERRUPTED


@dataclass
class Notice:
    """Something the user should know once (e.g. a batch size reduced to fit the corpus)."""

    message: str


@dataclass
class TrainingStarted:
    run_dir: Path
    num_parameters: int
    vocab_size: int
    tokenizer: str
    chars_per_token: float
    train_tokens: int
    val_tokens: int
    eval_tokens: int  # tokens each evaluation predicts (all of the val split's, or a sample spread over it)
    batch_size: int
    seq_len: int
    device: str
    precision: str
    threads: int
    start_step: int
    max_steps: int | None
    budget_seconds: float | None
    processes: int = 1  # torchrun workers; batch_size is per process
    stream_groups: int = 1  # groups of batch_size streams trained in turns
    parent: dict | None = None  # the model a fine-tuning run started from: name, weights_sha256
    sizing: dict | None = None  # what the sizing rule chose and why (training/sizing.py)
    # A resumed run (start_step alone cannot say: a run stopped before its first step resumes at 0).
    resumed: bool = False


@dataclass
class StepDone:
    step: int
    loss: float
    learning_rate: float
    grad_norm: float
    elapsed: float
    chars_per_second: float
    progress: float  # 0..1 of the step or time budget


@dataclass
class EvaluationDone:
    step: int
    train_loss: float
    val_loss: float  # nats per token
    val_bpc: float  # bits per character of the original text
    is_best: bool
    elapsed: float
    eval_seconds: float
    preview: str


@dataclass
class TrainingFinished:
    step: int
    reason: StopReason
    best_val_loss: float
    best_val_bpc: float
    elapsed: float
    run_dir: Path


@dataclass
class CorpusProgress:
    """How far a streaming pass over the corpus has got (for a progress bar)."""

    phase: str  # "reading" (validate, hash, vocabulary) or "encoding" (token file)
    done_bytes: int
    total_bytes: int
