"""The body of `charrnn train`: pick the run directory, resume or start, handle signals, show progress.

This is the command-line side (it owns the console and the signal handlers);
the training itself is `training.Trainer`.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import sys
from pathlib import Path
from typing import Any, Optional

from .config import ModelConfig, TrainConfig
from .console import CorpusProgressDisplay, TrainingDisplay, finished_message, stderr_console
from .distributed import TerminationWatchdog, World, check_resume_world_size
from .errors import RunDirError, UsageProblem
from .rundir import DEFAULT_RUNS_ROOT, RunDir
from .token_cache import (CorpusFiles, CorpusScan, corpus_files, default_cache_dir, scan_corpus,
                          spool_stream)

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


def _scan(corpus: str, cache_dir: Path, spooled: list[Path], progress: CorpusProgressDisplay) -> CorpusScan:
    """Stream the corpus once (UTF-8 check, fingerprint, vocabulary); stdin is spooled to a file first."""
    if corpus == "-":
        spooled.append(spool_stream(sys.stdin.buffer, cache_dir))
        files = CorpusFiles(files=[spooled[-1]], name="stdin", source="-")
    else:
        files = corpus_files(corpus)
    return scan_corpus(files, on_progress=progress)


def run_training(corpus: Optional[str], out: Optional[str], resume: bool, model_options: dict[str, Any],
                 train_options: dict[str, Any], given: set[str], cache_dir: Optional[str] = None) -> int:
    """Train from the command line's options; return the process exit code."""
    spooled: list[Path] = []
    try:
        return _run_training(corpus, out, resume, model_options, train_options, given,
                             Path(cache_dir) if cache_dir else default_cache_dir(), spooled)
    finally:
        for path in spooled:
            path.unlink(missing_ok=True)


def _run_training(corpus: Optional[str], out: Optional[str], resume: bool, model_options: dict[str, Any],
                  train_options: dict[str, Any], given: set[str], cache_dir: Path,
                  spooled: list[Path]) -> int:
    world = World.from_env()
    # Under torchrun only rank 0 talks; the others keep quiet unless they fail.
    console = stderr_console(quiet=not world.is_writer)
    fresh_model = ModelConfig(**model_options).validate()
    fresh_train = TrainConfig(**train_options).validate()

    from .checkpoint import load_training_state
    from .token_cache import prepare_streamed_corpus
    from .tokenizers import tokenizer_from_dict
    from .training import Trainer, check_resume_compatible

    if world.is_distributed:
        if out is None:
            raise UsageProblem("under torchrun, pass --out RUN_DIR: every process and every restart "
                               "must find the same run directory")
        if not resume and _is_restart() and RunDir(Path(out)).state.exists():
            resume = True   # torchrun restarted the workers: continue from the last checkpoint

    corpus_progress = CorpusProgressDisplay(console)
    resume_state = None
    tokenizer = None
    if resume:
        if out is None and corpus is None:
            raise UsageProblem("--resume needs the CORPUS or --out RUN_DIR of the run to continue")
        if out is None:
            out = str(DEFAULT_RUNS_ROOT / corpus_files(corpus).name) if corpus != "-" else None
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
        check_resume_world_size(resume_state, world)
        source = _scan(corpus, cache_dir, spooled, corpus_progress)
        given_model = ModelConfig(**{**model_config.to_dict(),
                                     **{k: v for k, v in model_options.items() if k in given}})
        check_resume_compatible(resume_state, source.fingerprint, given_model)
        if train_config.val_fraction != json.loads(resume_state["train_config"])["val_fraction"]:
            raise RunDirError("cannot resume with a different --val-fraction: the split would change")
    else:
        if corpus is None:
            raise UsageProblem("missing argument CORPUS (a text file, a directory of .txt files, or -)")
        source = _scan(corpus, cache_dir, spooled, corpus_progress)
        model_config, train_config = fresh_model, fresh_train
        if out is not None:
            run_dir = RunDir(Path(out))
            if run_dir.state.exists():
                raise RunDirError(
                    f"{run_dir.path} already holds a run: add --resume to continue it, "
                    "or choose another --out")
        else:
            run_dir = RunDir(_default_run_dir(source.corpus.name))

    if world.is_writer:
        run_dir.prepare()
        run_dir.lock()
    prepared = prepare_streamed_corpus(source, train_config.tokenizer, train_config.val_fraction,
                                       train_config.vocab_size, tokenizer=tokenizer, cache_dir=cache_dir,
                                       on_progress=corpus_progress)
    corpus_progress.close()
    display = TrainingDisplay(console) if world.is_writer else None
    stop = StopRequest(console)
    stop.install()
    watchdog = TerminationWatchdog() if world.is_distributed else None
    if watchdog is not None:
        watchdog.install()
    try:
        trainer = Trainer(prepared, model_config, train_config, run_dir,
                          on_event=display if display is not None else _ignore_event,
                          should_stop=stop, resume_state=resume_state, world=world)
        with world.process_group(world.device_for(_device_of(train_config))):
            finished = trainer.run()
    finally:
        if display is not None:
            display.close()
        if watchdog is not None:
            watchdog.uninstall()
        stop.uninstall()
        run_dir.unlock()
    console.print(finished_message(finished), markup=False, highlight=False)
    if finished.reason == "interrupted":
        corpus_part = shlex.quote(corpus) if corpus and corpus != "-" else "-"
        launcher = "the same torchrun command with" if world.is_distributed else "charrnn train"
        console.print(f"resume with: {launcher} {corpus_part} --resume --out "
                      f"{shlex.quote(str(run_dir.path))}", markup=False, highlight=False)
        return EXIT_CODE_FOR_SIGNAL.get(stop.signal_number, 130)
    return 0


def _ignore_event(event: object) -> None:
    """The progress display of ranks other than 0: they train silently."""


def _is_restart() -> bool:
    """True when torchrun has restarted the workers after a failure (TORCHELASTIC_RESTART_COUNT > 0)."""
    try:
        return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0
    except ValueError:
        return False


def _device_of(train_config: TrainConfig):
    from .hardware import resolve_device

    return resolve_device(train_config.device)
