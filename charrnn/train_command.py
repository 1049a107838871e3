"""The body of `charrnn train`: pick the run directory, resume or start, handle signals, show progress.

This is the command-line side (it owns the console and the signal handlers);
the training itself is `training.Trainer`.
"""

from __future__ import annotations

import json
import shlex
import signal
import sys
from pathlib import Path
from typing import Any, Optional

from .config import ModelConfig, TrainConfig
from .console import TrainingDisplay, finished_message, stderr_console
from .errors import RunDirError, UsageProblem
from .rundir import DEFAULT_RUNS_ROOT, RunDir

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
    while (candidate / "state.pt").exists() or (candidate / "latest.safetensors").exists():
        candidate = base.with_name(f"{base.name}-{number}")
        number += 1
    return candidate


def run_training(corpus: Optional[str], out: Optional[str], resume: bool, model_options: dict[str, Any],
                 train_options: dict[str, Any], given: set[str]) -> int:
    """Train from the command line's options; return the process exit code."""
    console = stderr_console()
    fresh_model = ModelConfig(**model_options).validate()
    fresh_train = TrainConfig(**train_options).validate()

    from .checkpoint import load_training_state
    from .data import prepare_corpus, read_corpus
    from .tokenizers import tokenizer_from_dict
    from .training import Trainer, check_resume_compatible

    resume_state = None
    tokenizer = None
    if resume:
        if out is None and corpus is None:
            raise UsageProblem("--resume needs the CORPUS or --out RUN_DIR of the run to continue")
        if out is None:
            out = str(DEFAULT_RUNS_ROOT / read_corpus(corpus).name) if corpus != "-" else None
            if out is None:
                raise UsageProblem("--resume with a corpus on stdin needs --out RUN_DIR")
        run_dir = RunDir(Path(out))
        if not run_dir.state.exists():
            raise RunDirError(f"nothing to resume in {run_dir.path} (no {run_dir.state.name})")
        resume_state = load_training_state(run_dir.state)
        if corpus is None:
            corpus = resume_state["corpus_source"]
            if corpus == "-":
                raise UsageProblem("this run read its corpus from stdin: pass it again as - with --resume")
        train_values = json.loads(resume_state["train_config"])
        train_values.update({k: v for k, v in train_options.items() if k in given})
        train_config = TrainConfig.from_dict(train_values).validate()
        model_config = ModelConfig.from_dict(json.loads(resume_state["model_config"]))
        tokenizer = tokenizer_from_dict(json.loads(resume_state["tokenizer"]))
        source = read_corpus(corpus)
        given_model = ModelConfig(**{**model_config.to_dict(),
                                     **{k: v for k, v in model_options.items() if k in given}})
        check_resume_compatible(resume_state, source.fingerprint, given_model)
        saved_train = json.loads(resume_state["train_config"])
        if train_config.val_fraction != saved_train["val_fraction"]:
            raise RunDirError("cannot resume with a different --val-fraction: the split would change")
        for name in ("tokenizer", "vocab_size"):
            if getattr(train_config, name) != saved_train.get(name, getattr(TrainConfig(), name)):
                raise RunDirError(
                    f"cannot resume with a different --{name.replace('_', '-')}: the run was trained "
                    f"with {saved_train.get(name)!r}")
    else:
        source = read_corpus(corpus) if corpus is not None else None
        if source is None:
            raise UsageProblem("missing argument CORPUS (a text file, a directory of .txt files, or -)")
        model_config, train_config = fresh_model, fresh_train
        if out is not None:
            run_dir = RunDir(Path(out))
            if run_dir.state.exists():
                raise RunDirError(
                    f"{run_dir.path} already holds a run: add --resume to continue it, "
                    "or choose another --out")
        else:
            run_dir = RunDir(_default_run_dir(source.name))

    run_dir.prepare()
    run_dir.lock()
    prepared = prepare_corpus(source, train_config.tokenizer, train_config.val_fraction,
                              train_config.vocab_size, tokenizer=tokenizer)
    display = TrainingDisplay(console)
    stop = StopRequest(console)
    stop.install()
    try:
        trainer = Trainer(prepared, model_config, train_config, run_dir, on_event=display,
                          should_stop=stop, resume_state=resume_state)
        finished = trainer.run()
    finally:
        display.close()
        stop.uninstall()
        run_dir.unlock()
    console.print(finished_message(finished), markup=False, highlight=False)
    if finished.reason == "interrupted":
        corpus_part = shlex.quote(corpus) if corpus and corpus != "-" else "-"
        console.print(f"resume with: charrnn train {corpus_part} --resume --out "
                      f"{shlex.quote(str(run_dir.path))}", markup=False, highlight=False)
        return EXIT_CODE_FOR_SIGNAL.get(stop.signal_number, 130)
    return 0
