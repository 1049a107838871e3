"""The Python API: `charrnn.load()` gives a `Model` to generate, score and evaluate with; `charrnn.train()`.

The commands `sample`, `eval`, `score` and `info` are clients of this module.
"""

from __future__ import annotations

import dataclasses
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from charrnn.config import SampleConfig
from charrnn.data.reader import TextSource, iter_lines, iter_text_chunks
from charrnn.errors import UsageProblem
from charrnn.inspect.eval_text import TextEvaluation, default_temp_folder, evaluate_chunks, text_chunks
from charrnn.inspect.scoring import LineScore, LineScorer
from charrnn.store.checkpoint import LoadedModel
from charrnn.store.run_dir import resolve_weights

if TYPE_CHECKING:
    from charrnn.inspect.novelty import NoveltyChecker, NoveltyReport
    from charrnn.model import CharRNN
    from charrnn.training.session import TrainingOutcome

PathLike = str | os.PathLike[str]
_NOVELTY_LOCK = threading.Lock()  # one index opened per model and corpus, whichever thread asks first


class Model:
    """A trained model, ready to write, score and evaluate text on its device."""

    def __init__(self, loaded: LoadedModel, device: torch.device) -> None:
        self._loaded = loaded
        self.device = device
        self._cpu_copy: CharRNN | None = None
        self._novelty_checkers: dict[tuple[str | None, str | None], NoveltyChecker] = {}
        # How the training that made it ended, for a model `charrnn.train()` returns (else None):
        # a `TrainingOutcome` (`reason`, `step`, `stopped`, `run_dir`).
        self.outcome: TrainingOutcome | None = None

    @property
    def path(self) -> Path:
        """The weights file the model was loaded from."""
        return self._loaded.path

    @property
    def module(self) -> CharRNN:
        """The underlying `torch.nn.Module` (a `CharRNN`)."""
        return self._loaded.model

    @property
    def tokenizer(self):
        """The tokeniser the model reads and writes with."""
        return self._loaded.tokenizer

    @property
    def info(self) -> dict[str, Any]:
        """What the checkpoint holds: model, tokeniser, training run (as `charrnn info --json`)."""
        from charrnn.store.describe import describe

        return describe(self.path)

    def __repr__(self) -> str:
        config = self._loaded.model_config
        return (
            f"<charrnn.Model {config.model} {config.num_layers}x{config.hidden_size} "
            f"{self.tokenizer.kind} vocabulary {self.tokenizer.vocab_size} from {self.path} on {self.device}>"
        )

    # -- writing ----------------------------------------------------------------------------

    def generate(self, **options: Any) -> Iterator[str]:
        """Yield text as it is written; `options` are the fields of `SampleConfig` (as `charrnn sample`).

        E.g. `generate(temperature=0.8, length=200, prime="ROMEO:", seed=1)`; `length=-1` writes
        without end (stop iterating when you have enough). An unknown option or a value out of
        range is a `UsageProblem` (a `ConfigError`), raised here, before any text.
        """
        from charrnn.generate.sampler import generate_text

        return generate_text(self._sampling_model(), self.tokenizer, _sample_config(options))

    def generate_text(self, **options: Any) -> str:
        """The whole text `generate(**options)` writes, as one string (so `length` must end it)."""
        config = _sample_config(options)
        if config.length == -1:
            raise UsageProblem(
                "generate_text(length=-1) would never return: iterate generate(length=-1) and "
                "stop when you have enough, or give a length"
            )
        return "".join(self.generate(**options))

    def _sampling_model(self) -> CharRNN:
        # The per-step sampler works on CPU tensors; a model on another device samples from a copy.
        if self.device.type == "cpu":
            return self.module
        if self._cpu_copy is None:
            import copy

            self._cpu_copy = copy.deepcopy(self.module).cpu().eval()
        return self._cpu_copy

    # -- measuring --------------------------------------------------------------------------

    def score_lines(
        self, lines: Iterable[str], skip_unknown: bool = False, carry_state: bool = False
    ) -> Iterator[LineScore]:
        """A `LineScore` per line, in order, streamed (lines are batched internally).

        Each line is scored alone, after a newline (with `carry_state`, after all the lines
        before it); a line with characters the model never saw scores infinite bits unless
        `skip_unknown` leaves those characters out.
        """
        if isinstance(lines, (str, bytes, bytearray)) or not isinstance(lines, Iterable):
            raise UsageProblem(
                f"score_lines takes an iterable of lines (str), not {type(lines).__name__}: "
                "score() splits a text into lines"
            )
        scorer = LineScorer(self.module, self.tokenizer, self.device, skip_unknown)
        return scorer.score(_checked_lines(lines), carry_state)

    def score(
        self, text: str | Iterable[str], skip_unknown: bool = False, carry_state: bool = False
    ) -> list[LineScore]:
        """Scores of every line of `text` (a string, split at newlines, or an iterable of lines).

        A string's last newline ends its last line, so `"a\\nb\\n"` and `"a\\nb"` are two lines,
        `"\\n"` is one empty line and `""` holds none: its scores are `[]` (`charrnn score` calls
        an input without lines an error, as a filter given nothing most likely read the wrong file).
        Bytes are refused with a `UsageProblem`: decode them first.
        """
        lines: Iterable[str]
        if isinstance(text, str):
            split = text.split("\n")
            lines = split[:-1] if text.endswith("\n") or not text else split
        elif isinstance(text, (bytes, bytearray)):
            raise UsageProblem(
                "score takes text (a str), not bytes: decode it first, e.g. data.decode('utf-8')"
            )
        elif not isinstance(text, Iterable):
            raise UsageProblem(f"score takes text (a str) or an iterable of lines, not {type(text).__name__}")
        else:
            lines = text
        return list(self.score_lines(lines, skip_unknown, carry_state))

    def evaluate(self, text_or_path: str | os.PathLike[str], skip_unknown: bool = False) -> TextEvaluation:
        """Bits per character and loss per token on a text: a `str` is the text itself, a
        `pathlib.Path` a file (read in bounded memory, any size). Anything else (bytes) is a
        `UsageProblem`; a text too short to predict (under two tokens) is a `CorpusError`."""
        if isinstance(text_or_path, os.PathLike):
            return self.evaluate_file(text_or_path, skip_unknown)
        if not isinstance(text_or_path, str):
            raise UsageProblem(
                f"evaluate takes text (a str) or a file (a pathlib.Path), not {type(text_or_path).__name__}"
                + (": decode it first, e.g. data.decode('utf-8')" if isinstance(text_or_path, bytes) else "")
            )
        return evaluate_chunks(
            self.module,
            self.tokenizer,
            text_chunks(text_or_path),
            self.device,
            name="text",
            skip_unknown=skip_unknown,
            temp_folder=default_temp_folder(),
        )

    def evaluate_file(self, path: PathLike, skip_unknown: bool = False) -> TextEvaluation:
        """As `evaluate`, for a file path (or `-` for standard input)."""
        source = TextSource.of(_file_path(path))
        return evaluate_chunks(
            self.module,
            self.tokenizer,
            iter_text_chunks(source),
            self.device,
            name=source.name,
            skip_unknown=skip_unknown,
            temp_folder=default_temp_folder(),
        )

    def score_file(
        self, path: PathLike, skip_unknown: bool = False, carry_state: bool = False
    ) -> Iterator[LineScore]:
        """`score_lines` over the lines of a file (or `-` for standard input), read as they come."""
        return self.score_lines(iter_lines(TextSource.of(_file_path(path))), skip_unknown, carry_state)

    # -- novelty ----------------------------------------------------------------------------

    def novelty(
        self,
        text: str,
        min_span: int | None = None,
        corpus: PathLike | None = None,
        cache_dir: PathLike | None = None,
    ) -> NoveltyReport:
        """How much of `text` is copied from the training text (as `charrnn novelty`): the longest
        span found verbatim, where it is, and the share of characters in copied spans of at least
        `min_span` characters (default `DEFAULT_MIN_SPAN`). The training text is indexed once
        into the cache; `corpus` names it when it has moved (or any text to check against)."""
        from charrnn.inspect.novelty import DEFAULT_MIN_SPAN, open_training_index, training_text_of

        if not isinstance(text, str):
            raise UsageProblem(f"novelty takes text (a str), not {type(text).__name__}")
        key = (
            None if corpus is None else os.fspath(corpus),
            None if cache_dir is None else os.fspath(cache_dir),
        )
        with _NOVELTY_LOCK:
            checker = self._novelty_checkers.get(key)
            if checker is None:
                folder = None if cache_dir is None else Path(cache_dir)
                checker, _ = open_training_index(training_text_of(self.path), key[0], folder)
                self._novelty_checkers[key] = checker
        return checker.check(text, DEFAULT_MIN_SPAN if min_span is None else min_span)


def _sample_config(options: dict[str, Any]) -> SampleConfig:
    """The validated `SampleConfig` of `generate`'s keyword arguments."""
    known = {field.name for field in dataclasses.fields(SampleConfig)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise UsageProblem(
            f"unknown sampling options: {', '.join(unknown)} (they are: {', '.join(sorted(known))})"
        )
    return SampleConfig(**options).validate()


def _checked_lines(lines: Iterable[str]) -> Iterator[str]:
    """`lines`, refusing (one `UsageProblem`) an item that is not a str, as it comes."""
    for number, line in enumerate(lines, start=1):
        if not isinstance(line, str):
            raise UsageProblem(f"line {number} to score is {type(line).__name__}, not text (a str)")
        yield line


def _file_path(path: object) -> str | os.PathLike[str]:
    """`path` when it names a file as `open` takes it (a str or a path), else one `UsageProblem`."""
    if isinstance(path, str) or (isinstance(path, os.PathLike) and isinstance(os.fspath(path), str)):
        return path
    raise UsageProblem(f"a file is named by a str or a pathlib.Path, not {type(path).__name__}")


def load(path: PathLike | None = None, device: str = "auto") -> Model:
    """Load a model: a `.safetensors` file, an exported `.onnx` file, a run directory, or (None) the
    most recent run under runs/.

    `device` is auto (a GPU when there is one), cpu, cuda or mps. An `.onnx` file runs on
    onnxruntime's CPU build (the `onnx` extra), whatever `device` says.
    """
    from charrnn.export.runtime import is_onnx_path, load_model_file
    from charrnn.hardware import resolve_device

    weights = resolve_weights(None if path is None else str(path))
    resolved_device = torch.device("cpu") if is_onnx_path(weights) else resolve_device(device)
    return Model(load_model_file(weights, resolved_device), resolved_device)


def train(
    corpus: PathLike,
    *,
    out: PathLike | None = None,
    resume: bool = False,
    cache_dir: PathLike | None = None,
    should_stop: Callable[[], bool] | threading.Event | None = None,
    on_event: Callable[[object], None] | None = None,
    auto_size: bool = True,
    **options: Any,
) -> Model:
    """Train as `charrnn train` does and return the trained model (on the CPU).

    `options` are the fields of `ModelConfig` and `TrainConfig` (as the command's options, in
    snake_case: `max_steps=200`, `hidden_size=128`, ...). The run directory is `out`, or
    runs/<corpus name> (-2, -3, ... when taken), as for the command; `resume=True` continues it.
    It works from any thread (a notebook, a web app, a task queue): it installs no signal handler.

    Like the rest of the library it prints nothing: `on_event` hears how training goes, every
    event of `charrnn.events` (CorpusProgress while the corpus is read and encoded, a Notice for
    a note such as characters a fine-tuning corpus adds, TrainingStarted, StepDone,
    EvaluationDone, TrainingFinished). `charrnn train` draws its progress from the same events.

    Stopping:
    - `should_stop` (a callable, or a `threading.Event` that another thread sets) is asked before
      every step; once it says so, the step finishes, the run is saved, and `train` returns the
      model trained so far, with `model.outcome.stopped` True (`outcome.reason` is
      `StopReason.INTERRUPTED`); `train(corpus, out=..., resume=True)` continues it.
    - Ctrl-C (a KeyboardInterrupt in the main thread) stops at once and propagates as the plain
      KeyboardInterrupt it is, once the run directory's lock is released; the files of the last
      complete checkpoint are left intact, so the run can be resumed from there.

    Sizing: as for the command, a new run's depth, width, dropout, learning rate and early end, where not
    given in `options`, are chosen from the corpus, the budget and this machine's speed
    (`TrainingStarted.sizing` says what and why); `auto_size=False` trains the fixed defaults.

    The returned model is the run's best weights (by validation loss), else its latest.
    """
    from charrnn.config import ModelConfig, TrainConfig
    from charrnn.events import Notice
    from charrnn.training.session import SessionCallbacks, TrainingRequest, TrainingSession

    model_fields = {name for name in ModelConfig().to_dict() if name != "vocab_size"}
    train_fields = set(TrainConfig().to_dict())
    unknown = sorted(set(options) - model_fields - train_fields)
    if unknown:
        raise UsageProblem(f"unknown training options: {', '.join(unknown)}")
    corpus = str(corpus)
    if out is None and not resume and corpus == "-":
        raise UsageProblem("training from standard input needs out=RUN_DIR")
    if isinstance(should_stop, threading.Event):
        should_stop = should_stop.is_set
    request = TrainingRequest(
        corpus=corpus,
        out=None if out is None else str(out),
        resume=resume,
        model_options={k: v for k, v in options.items() if k in model_fields},
        train_options={k: v for k, v in options.items() if k in train_fields},
        given=set(options),
        cache_dir=None if cache_dir is None else str(cache_dir),
        auto_size=auto_size,
    )
    callbacks = SessionCallbacks()
    if should_stop is not None:
        callbacks.should_stop = should_stop
    if on_event is not None:
        listener = on_event
        callbacks.on_event = listener
        callbacks.on_corpus_progress = listener
        callbacks.on_note = lambda message: listener(Notice(message))
    with TrainingSession(request, callbacks) as session:
        outcome = session.train()
    if on_event is not None:
        on_event(outcome.finished)
    model = load(outcome.run_dir, device="cpu")
    model.outcome = outcome
    return model
