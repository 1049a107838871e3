"""Settings as dataclasses: the one source of truth for every option.

The CLI options are the kebab-case names of these fields; the checkpoint
stores `ModelConfig` and `TrainConfig` as JSON; `sample` reads them back.
Each `validate()` raises one `ConfigError` naming the first bad value.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from charrnn.errors import ConfigError

MODEL_KINDS = ("lstm", "gru", "rnn")
TOKENIZER_KINDS = ("char", "byte", "bpe", "unigram")
SENTENCEPIECE_KINDS = ("bpe", "unigram")  # learned subword vocabularies (--vocab-size applies)
# The size that gave the best validation bits/char on English (tinyshakespeare) and on a
# generated CJK-style corpus among those tried
# (docs/experiments/2026-11-29-subword-vocabulary-size.md). It is a ceiling, not a target: a
# corpus too short to fill it gets the pieces it holds.
DEFAULT_SUBWORD_VOCAB_SIZE = 4096
# No vocabulary may have more ids than this (--vocab-size, and a char vocabulary that
# fine-tuning grows): beyond it the embedding and output layers alone outgrow most machines.
MAX_VOCAB_SIZE = 1_000_000
DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "fp32", "bf16")

# A fine-tuning run (--init-from) starts from weights that already predict text: the full
# learning rate would throw much of that away in the first steps. These apply unless the
# user sets --lr / --warmup-steps (docs/experiments/2026-11-29-fine-tuning.md has the measurement).
FINE_TUNE_LR = 2e-3
FINE_TUNE_WARMUP_STEPS = 20

# When neither --max-steps nor --max-time is given, train for this long.
DEFAULT_TIME_BUDGET_SECONDS = 300.0
# Without --eval-every, evaluate (and checkpoint) about this many times per run, spread
# over the steps or the time budget: often enough to follow, cheap enough not to matter.
EVALS_PER_RUN = 8
# Each evaluation covers at most this many validation tokens by default: all of a small
# corpus's split, and on a big corpus few enough that evaluation stays a small part of the
# budget (docs/training.md, "Validation", has the time it takes).
DEFAULT_EVAL_TOKENS = 250_000


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def _finite(name: str, value: float) -> None:
    _require(
        isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value),
        f"{name} must be a finite number, got {value!r}",
    )


# The API builds these dataclasses from keyword arguments and the checkpoint from JSON, so a
# field may hold any type: each is checked before its range, so that a wrong type is one
# ConfigError too (a length of 2.5 or a seed of 1.5 failed deep inside with a TypeError).
def _integer(name: str, value: object, optional: bool = False) -> None:
    if optional and value is None:
        return
    _require(
        isinstance(value, int) and not isinstance(value, bool),
        f"{name} must be a whole number, got {value!r}",
    )


def _flag(name: str, value: object) -> None:
    _require(isinstance(value, bool), f"{name} must be True or False, got {value!r}")


def _text(name: str, value: object, optional: bool = False) -> None:
    if optional and value is None:
        return
    _require(isinstance(value, str), f"{name} must be text (a str), got {value!r}")


def parse_duration(text: str) -> float:
    """Parse a wall-clock budget such as `90s`, `5m`, `1h30m` or `120` into seconds."""
    cleaned = str(text).strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", cleaned):
        seconds = float(cleaned)
    else:
        parts = re.findall(r"(\d+(?:\.\d+)?)\s*([hms])", cleaned)
        if not parts or re.sub(r"(\d+(?:\.\d+)?)\s*([hms])", "", cleaned).strip():
            raise ConfigError(f"cannot read {text!r} as a duration: use e.g. 90s, 5m, 1h or 1h30m")
        scale = {"h": 3600.0, "m": 60.0, "s": 1.0}
        seconds = sum(float(number) * scale[unit] for number, unit in parts)
    if not math.isfinite(seconds) or seconds <= 0:
        raise ConfigError(f"duration must be positive, got {text!r}")
    return seconds


class _JsonDataclass:
    """to_dict / from_dict for the config dataclasses (unknown keys are refused)."""

    if TYPE_CHECKING:
        # Every subclass is a dataclass; declaring the field table the decorator adds lets the
        # type checker see that (it is what `dataclasses.asdict` and `fields` look for).
        __dataclass_fields__: ClassVar[dict[str, dataclasses.Field[Any]]]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]):
        if not isinstance(values, dict):  # a damaged file's
            raise ConfigError(f"{cls.__name__} is stored as an object, not {type(values).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown {cls.__name__} fields: {', '.join(unknown)}")
        return cls(**values)


@dataclass
class ModelConfig(_JsonDataclass):
    """Shape of the network: embedding -> stacked recurrent layers -> linear."""

    model: str = "lstm"  # the recurrent cell: lstm, gru or rnn (tanh)
    num_layers: int = 2
    # The defaults (2 x 384 LSTM, no dropout, lr 5e-3) gave the best validation loss within
    # the default time budget on data/tinyshakespeare.txt among the sizes tried with
    # benchmarks/sweep.py (docs/experiments/2026-11-22-defaults-sweep.md): a bigger model sees too little
    # text in that time, a smaller one learns less from it, and dropout only slows it down there.
    hidden_size: int = 384
    embedding_size: int = 64
    dropout: float = 0.0  # between recurrent layers and before the output layer
    vocab_size: int = 0  # filled in from the tokeniser

    def validate(self) -> ModelConfig:
        """Check every field; return self so calls can chain."""
        _require(
            self.model in MODEL_KINDS, f"--model must be one of {', '.join(MODEL_KINDS)}, got {self.model!r}"
        )
        for name in ("num_layers", "hidden_size", "embedding_size", "vocab_size"):
            _integer(f"--{name.replace('_', '-')}", getattr(self, name))
        _require(1 <= self.num_layers <= 16, f"--num-layers must be 1..16, got {self.num_layers}")
        _require(1 <= self.hidden_size <= 16384, f"--hidden-size must be 1..16384, got {self.hidden_size}")
        _require(
            1 <= self.embedding_size <= 16384, f"--embedding-size must be 1..16384, got {self.embedding_size}"
        )
        _finite("--dropout", self.dropout)
        _require(0.0 <= self.dropout < 1.0, f"--dropout must be in [0, 1), got {self.dropout}")
        _require(self.vocab_size >= 0, f"vocab_size must be >= 0, got {self.vocab_size}")
        return self


@dataclass
class TrainConfig(_JsonDataclass):
    """How to train: data windows, optimiser, budget, evaluation, hardware."""

    seq_len: int = 128  # the truncated-BPTT window, in tokens
    # Contiguous streams trained side by side. 8 beat 16, and 16 beat 32, within the default
    # time budget (docs/experiments/2026-11-29-batch-8.md): on a CPU a step of half the streams
    # costs a little more than half as much, so a run makes almost twice the updates over a
    # little less text, and in the few passes over a small corpus that a short run makes,
    # updates matter more than batch size. Fewer than 8 streams did worse.
    batch_size: int = 8
    # The text is cut into batch_size x stream_groups streams and a step trains one group of them,
    # the groups in turns, each with its own carried state (data/windows.py). With one group, the
    # last 1/batch_size of the training text was read only at the end of every pass, and on
    # tinyshakespeare (where that part opens the play the validation split continues) the
    # validation loss fell and rose again with every pass; 8 groups spread every group over the
    # whole text, gave a smooth curve and a better loss through the first pass
    # (docs/experiments/2026-12-04-validation-over-a-pass.md). 1 is the layout before groups.
    stream_groups: int = 8
    lr: float = 5e-3  # peak learning rate of AdamW
    # AdamW's decoupled decay. 0.1 beat 0 with every seed tried (docs/experiments/2026-11-29-weight-decay.md):
    # in the few passes over a small corpus that a short run makes, the model starts
    # to memorise it, and the decay holds that back.
    weight_decay: float = 0.1
    grad_clip: float = 1.0  # clip the global gradient norm to this (0 = off)
    warmup_steps: int = 50  # linear warm-up, then cosine decay over the budget
    # The cosine ends at lr * this. Decaying to 0 beat a tenth of lr with every seed tried
    # (docs/experiments/2026-11-29-cosine-floor.md).
    min_lr_fraction: float = 0.0
    max_steps: int | None = None
    max_time: float | None = None  # seconds of wall clock, evaluation included
    val_fraction: float = 0.1
    # Steps between evaluations; None = about EVALS_PER_RUN per run, and at least every 30 minutes.
    eval_every: int | None = None
    # Validation tokens evaluated each time (0 = all of the split): a bigger split is sampled in
    # pieces spread evenly over it (EvaluationWindows in data/windows.py).
    # The whole split of a small corpus (tinyshakespeare's is 111,540 characters); on a corpus
    # of gigabytes, evaluating all of its 10% split eight times would eat the whole budget.
    eval_tokens: int = DEFAULT_EVAL_TOKENS
    seed: int = 1337
    # Start every pass over the training text after the first at a random offset (seeded by
    # the seed and the pass number), so the windows are cut in other places each pass.
    shift_passes: bool = True
    device: str = "auto"
    threads: int | None = None  # None = the machine's physical cores
    precision: str = "auto"
    tokenizer: str = "char"
    vocab_size: int | None = None  # for the sentencepiece tokenisers
    keep: int = 0  # step checkpoints kept beside best and latest
    early_stop: int | None = None  # stop after this many evaluations without a better val loss

    def validate(self) -> TrainConfig:
        """Check every field; return self so calls can chain."""
        for name in ("seq_len", "batch_size", "stream_groups", "warmup_steps", "eval_tokens", "seed", "keep"):
            _integer(f"--{name.replace('_', '-')}", getattr(self, name))
        for name in ("max_steps", "eval_every", "threads", "vocab_size", "early_stop"):
            _integer(f"--{name.replace('_', '-')}", getattr(self, name), optional=True)
        _flag("--shift-passes", self.shift_passes)
        _require(1 <= self.seq_len <= 1_000_000, f"--seq-len must be 1..1000000, got {self.seq_len}")
        _require(1 <= self.batch_size <= 1_000_000, f"--batch-size must be 1..1000000, got {self.batch_size}")
        _require(
            1 <= self.stream_groups <= 1_000_000,
            f"--stream-groups must be 1..1000000, got {self.stream_groups}",
        )
        _finite("--lr", self.lr)
        _require(self.lr > 0, f"--lr must be > 0, got {self.lr}")
        _finite("--weight-decay", self.weight_decay)
        _require(self.weight_decay >= 0, f"--weight-decay must be >= 0, got {self.weight_decay}")
        _finite("--grad-clip", self.grad_clip)
        _require(self.grad_clip >= 0, f"--grad-clip must be >= 0 (0 = off), got {self.grad_clip}")
        _require(self.warmup_steps >= 0, f"--warmup-steps must be >= 0, got {self.warmup_steps}")
        _finite("--min-lr-fraction", self.min_lr_fraction)
        _require(
            0 <= self.min_lr_fraction <= 1, f"--min-lr-fraction must be in [0, 1], got {self.min_lr_fraction}"
        )
        if self.max_steps is not None:
            _require(self.max_steps >= 1, f"--max-steps must be >= 1, got {self.max_steps}")
        if self.max_time is not None:
            _finite("--max-time", self.max_time)
            _require(self.max_time > 0, f"--max-time must be > 0, got {self.max_time}")
        _finite("--val-fraction", self.val_fraction)
        _require(
            0 < self.val_fraction < 1,
            f"--val-fraction must be between 0 and 1 (exclusive), got {self.val_fraction}",
        )
        if self.eval_every is not None:
            _require(self.eval_every >= 1, f"--eval-every must be >= 1, got {self.eval_every}")
        _require(
            self.eval_tokens == 0 or self.eval_tokens >= 2,
            f"--eval-tokens must be 0 (all) or >= 2, got {self.eval_tokens}",
        )
        _require(0 <= self.seed < 2**63, f"--seed must be in 0..2^63-1, got {self.seed}")
        _require(self.device in DEVICES, f"--device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        if self.threads is not None:
            _require(1 <= self.threads <= 1024, f"--threads must be 1..1024, got {self.threads}")
        _require(
            self.precision in PRECISIONS,
            f"--precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}",
        )
        _require(
            self.tokenizer in TOKENIZER_KINDS,
            f"--tokenizer must be one of {', '.join(TOKENIZER_KINDS)}, got {self.tokenizer!r}",
        )
        if self.vocab_size is not None:
            _require(
                self.tokenizer in SENTENCEPIECE_KINDS,
                f"--vocab-size applies to --tokenizer {' or '.join(SENTENCEPIECE_KINDS)} only "
                f"(the {self.tokenizer!r} vocabulary is fixed by the corpus or by UTF-8)",
            )
            _require(
                2 <= self.vocab_size <= MAX_VOCAB_SIZE,
                f"--vocab-size must be 2..{MAX_VOCAB_SIZE}, got {self.vocab_size}",
            )
        _require(self.keep >= 0, f"--keep must be >= 0, got {self.keep}")
        if self.early_stop is not None:
            _require(self.early_stop >= 1, f"--early-stop must be >= 1, got {self.early_stop}")
        return self

    def budget_seconds(self) -> float | None:
        """The wall-clock budget in force: --max-time, or the default when no limit was given."""
        if self.max_time is not None:
            return self.max_time
        if self.max_steps is None:
            return DEFAULT_TIME_BUDGET_SECONDS
        return None


@dataclass
class SampleConfig(_JsonDataclass):
    """How to write text from a trained model."""

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    greedy: bool = False
    length: int = 1000  # characters to write; -1 = until the reader closes the pipe
    prime: str | None = None  # text the model is warmed up with (echoed first)
    seed: int | None = None  # None = a fresh seed each run
    num_samples: int = 1
    separator: str = "\n\n"
    stop: tuple[str, ...] = ()  # a sample ends where its text first contains one of these
    keep_stop: bool = False  # write the stop string that ended a sample
    batch_size: int = 32  # primes completed side by side (one per input line)

    def validate(self) -> SampleConfig:
        """Check every field; return self so calls can chain."""
        for name in ("length", "num_samples", "batch_size"):
            _integer(f"--{name.replace('_', '-')}", getattr(self, name))
        for name in ("top_k", "seed"):
            _integer(f"--{name.replace('_', '-')}", getattr(self, name), optional=True)
        _flag("--greedy", self.greedy)
        _flag("--keep-stop", self.keep_stop)
        _text("--prime", self.prime, optional=True)
        _text("--separator", self.separator)
        _finite("--temperature", self.temperature)
        _require(self.temperature > 0, f"--temperature must be > 0, got {self.temperature}")
        if self.top_k is not None:
            _require(self.top_k >= 1, f"--top-k must be >= 1, got {self.top_k}")
        if self.top_p is not None:
            _finite("--top-p", self.top_p)
            _require(0 < self.top_p <= 1, f"--top-p must be in (0, 1], got {self.top_p}")
        _require(self.length >= -1, f"--length must be >= 0, or -1 for no end, got {self.length}")
        _require(1 <= self.num_samples <= 10_000, f"--num-samples must be 1..10000, got {self.num_samples}")
        _require(
            not (self.length == -1 and self.num_samples > 1),
            "--length -1 (no end) works with one sample only",
        )
        if self.seed is not None:
            _require(0 <= self.seed < 2**63, f"--seed must be in 0..2^63-1, got {self.seed}")
        _require(not isinstance(self.stop, str), "stop must be a list of stop strings, not one string")
        self.stop = tuple(self.stop)
        for stop in self.stop:
            _require(isinstance(stop, str) and stop != "", "--stop must not be empty")
        _require(1 <= self.batch_size <= 10_000, f"--batch-size must be 1..10000, got {self.batch_size}")
        return self
