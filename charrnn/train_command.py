"""The body of `charrnn train`: pick the run directory, resume or start, handle signals, show progress.

This is the command-line side (it owns the console and the signal handlers);
the training itself is `training.Trainer`.
"""

from __future__ import annotations

import json
import shlex
import signal
from pathlib import Path
from typing import Any, Optional

from .config import ModelConfig, TrainConfig
from .console import TrainingDisplay, finished_message, stderr_console
from .errors import RunDirError, UsageProblem
from .rundir import DEFAULT_RUNS_ROOT, LATEST_WEIGHTS, TRAINING_STATE, RunDir

EXIT_CODE_FOR_SIGNAL = {signal.SIGINT: 130, signal.SIGTERM: 143}


class StopRequest:
    """Set by SIGINT/SIGTERM: the first asks the loop to save and stop, a second SIGINT stops at once."""

    def __init__(self, console) -> None:
        self.signal_number: Optional[int] = None
        self._console = console
        self._previous: dict[int, Any] = {}

    def __call__(self) -> bool:
        return self.signal_number is not None

    def _handle(self, signal_number: int, frame) -> None:
        if self.signal_number is not None and signal_number == signal.SIGINT:
            raise KeyboardInterrupt  # second Ctrl-C: stop now; the last checkpoint is intact
        self.signal_number = signal_number
        self._console.print("stopping after this step and saving (Ctrl-C again to stop at once)",
                            markup=False)

    def install(self) -> None:
        for number in (signal.SIGINT, signal.SIGTERM):
            self._previous[number] = signal.signal(number, self._handle)

    def uninstall(self) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)


def _default_run_dir(corpus_name: str) -> Path:
    """runs/<name>, or runs/<name>-2, -3, ... when that one already holds a run."""
    base = DEFAULT_RUNS_ROOT / corpus_name
    candidate, number = base, 2
    while (candidate / TRAINING_STATE).exists() or (candidate / LATEST_WEIGHTS).exists():
        candidate = base.with_name(f"{base.name}-{number}")
        number += 1
    return candidate


# Train options that cannot change on resume: they fix the split, the tokens, the data
# windows or the random streams, so a different value would not continue the same run.
FIXED_ON_RESUME = ("val_fraction", "tokenizer", "vocab_size", "seq_len", "batch_size", "seed")


def _is_run_dir(path: str) -> bool:
    """True when CORPUS names a run directory rather than a corpus (for `train --resume RUN_DIR`)."""
    folder = Path(path)
    if not folder.is_dir():
        return False
    return (folder / TRAINING_STATE).exists() or not any(folder.glob("*.txt"))


def resume_hint(run_dir: RunDir, corpus_source: Optional[str]) -> str:
    """The command that continues this run."""
    if corpus_source == "-":
        return (f"charrnn train - --resume --out {shlex.quote(str(run_dir.path))} "
                "(with the same corpus on standard input)")
    return f"charrnn train --resume {shlex.quote(str(run_dir.path))}"


def run_training(corpus: Optional[str], out: Optional[str], resume: bool, model_options: dict[str, Any],
                 train_options: dict[str, Any], given: set[str]) -> int:
    """Train from the command line's options; return the process exit code.

    With `resume`, CORPUS may be the run directory itself (`charrnn train --resume RUN_DIR`);
    otherwise the run is `--out`, or runs/<corpus name>.
    """
    console = stderr_console()
    fresh_model = ModelConfig(**model_options).validate()
    fresh_train = TrainConfig(**train_options).validate()

    from .data import prepare_corpus, read_corpus

    source = None
    if resume and corpus is not None and corpus != "-" and not Path(corpus).exists():
        raise RunDirError(f"nothing to resume: {corpus} does not exist")
    if resume and corpus is not None and corpus != "-" and _is_run_dir(corpus):
        if out is not None and Path(out).resolve() != Path(corpus).resolve():
            raise UsageProblem(f"--resume {corpus} and --out {out} name two different runs: give one")
        out, corpus = corpus, None
    elif corpus is not None:
        if corpus != "-" and Path(corpus, TRAINING_STATE).exists():
            raise UsageProblem(f"{corpus} is a run directory: add --resume to continue it")
        source = read_corpus(corpus)
    elif not resume:
        raise UsageProblem("missing argument CORPUS (a text file, a directory of .txt files, or -)")

    if out is not None:
        run_dir = RunDir(Path(out))
    elif resume:
        if source is None:
            raise UsageProblem("--resume needs the run: charrnn train --resume RUN_DIR")
        if source.source == "-":
            raise UsageProblem("--resume with a corpus on standard input needs --out RUN_DIR")
        run_dir = RunDir(DEFAULT_RUNS_ROOT / source.name)
    else:
        run_dir = RunDir(_default_run_dir(source.name))
    if resume and not run_dir.state.exists():
        raise RunDirError(f"nothing to resume in {run_dir.path} (no {TRAINING_STATE}): "
                          "start it without --resume")

    # Prove the folder is writable and take the lock before reading any state or corpus work:
    # a second training into the same folder stops here, before it can touch anything.
    run_dir.prepare()
    run_dir.lock()
    try:
        if resume:
            source, model_config, train_config, tokenizer, resume_state = _plan_resume(
                run_dir, source, model_options, train_options, given)
        else:
            if run_dir.state.exists():
                raise RunDirError(f"{run_dir.path} already holds a run: add --resume to continue it, "
                                  "or choose another --out")
            model_config, train_config, tokenizer, resume_state = fresh_model, fresh_train, None, None
        prepared = prepare_corpus(source, train_config.tokenizer, train_config.val_fraction,
                                  train_config.vocab_size, tokenizer=tokenizer)
        return _train_until_stopped(console, prepared, model_config, train_config, run_dir,
                                    resume_state, source.source)
    finally:
        run_dir.unlock()


def _plan_resume(run_dir: RunDir, source, model_options: dict[str, Any], train_options: dict[str, Any],
                 given: set[str]):
    """Load the saved state, check the command line agrees with it, and return what training needs."""
    from .checkpoint import load_training_state
    from .data import read_corpus
    from .errors import CharrnnError, CheckpointError
    from .tokenizers import tokenizer_from_dict
    from .training import check_resume_compatible

    state = load_training_state(run_dir.state)
    try:
        saved_train = TrainConfig.from_dict(json.loads(state["train_config"])).validate()
        saved_model = ModelConfig.from_dict(json.loads(state["model_config"])).validate()
        tokenizer = tokenizer_from_dict(json.loads(state["tokenizer"]))
    except (ValueError, TypeError, CharrnnError) as error:
        raise CheckpointError(f"{run_dir.state} is corrupted (bad settings: {error})") from None
    for name in FIXED_ON_RESUME:
        if name in given and train_options[name] != getattr(saved_train, name):
            raise RunDirError(
                f"cannot resume: --{name.replace('_', '-')} is {train_options[name]!r} but the run "
                f"was trained with {getattr(saved_train, name)!r}")
    given_model = ModelConfig(**{**saved_model.to_dict(),
                                 **{k: v for k, v in model_options.items() if k in given}})
    if source is None:
        if state["corpus_source"] == "-":
            raise UsageProblem("this run read its corpus from standard input: pipe it in again with "
                               f"charrnn train - --resume --out {shlex.quote(str(run_dir.path))}")
        source = read_corpus(state["corpus_source"])
    check_resume_compatible(state, source.fingerprint, given_model)
    train_config = TrainConfig.from_dict(
        {**saved_train.to_dict(), **{k: v for k, v in train_options.items() if k in given}}).validate()
    return source, saved_model, train_config, tokenizer, state


def _train_until_stopped(console, prepared, model_config: ModelConfig, train_config: TrainConfig,
                         run_dir: RunDir, resume_state, corpus_source: str) -> int:
    """Run the trainer with the signal handlers in place; report how it ended."""
    from .training import Trainer

    display = TrainingDisplay(console)
    stop = StopRequest(console)
    stop.install()
    try:
        trainer = Trainer(prepared, model_config, train_config, run_dir, on_event=display,
                          should_stop=stop, resume_state=resume_state)
        finished = trainer.run()
    except KeyboardInterrupt:
        # A second Ctrl-C: whatever was being written is abandoned, the previous files are whole.
        display.close()
        saved = (f"the last complete checkpoint in {run_dir.path} is intact; resume with: "
                 f"{resume_hint(run_dir, corpus_source)}" if run_dir.state.exists()
                 else "nothing had been saved yet")
        console.print(f"Error: stopped at once: {saved}", markup=False, highlight=False)
        return EXIT_CODE_FOR_SIGNAL[signal.SIGINT]
    finally:
        display.close()
        stop.uninstall()
    if finished.reason == "interrupted":
        console.print(f"interrupted at step {finished.step}, saved in {run_dir.path}; resume with: "
                      f"{resume_hint(run_dir, corpus_source)}", markup=False, highlight=False)
        return EXIT_CODE_FOR_SIGNAL.get(stop.signal_number, 130)
    console.print(finished_message(finished), markup=False, highlight=False)
    return 0
