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
from collections.abc import Callable
from pathlib import Path
from typing import Any

from charrnn.cli.console import (
    CorpusProgressDisplay,
    StderrConsole,
    TrainingDisplay,
    finished_message,
    stderr_console,
)
from charrnn.config import ModelConfig, TrainConfig
from charrnn.data.token_cache import (
    CorpusFiles,
    CorpusScan,
    corpus_files,
    default_cache_dir,
    scan_corpus,
    spool_stream,
)
from charrnn.distributed import TerminationWatchdog, World, check_resume_world_size
from charrnn.errors import RunDirError, UsageProblem
from charrnn.store.run_dir import DEFAULT_RUNS_ROOT, TRAINING_STATE, RunDir, claim_default_run_dir
from charrnn.training.memory_check import check_training_fits, smallest_vocab_size

EXIT_CODE_FOR_SIGNAL = {signal.SIGINT: 130, signal.SIGTERM: 143}


class StopRequest:
    """Set by SIGINT/SIGTERM: the first asks the loop to save and stop, a second SIGINT stops at once.

    Also set when the reader of stderr goes away (`charrnn train ... 2>&1 | head`): like
    `sample | head`, the command then ends, but it saves first, so `--resume` loses nothing.
    """

    def __init__(self, console: StderrConsole) -> None:
        self.signal_number: int | None = None
        self._console = console
        self._previous: dict[int, Any] = {}

    @property
    def reader_gone(self) -> bool:
        """True once the console found nobody reading stderr any more."""
        return self._console.reader_gone

    def __call__(self) -> bool:
        return self.signal_number is not None or self.reader_gone

    def _handle(self, signal_number: int, frame) -> None:
        if self.signal_number is not None and signal_number == signal.SIGINT:
            raise KeyboardInterrupt  # second Ctrl-C: stop now; the last checkpoint is intact
        self.signal_number = signal_number
        self._console.print(
            "stopping after this step and saving (Ctrl-C again to stop at once)", markup=False
        )

    def install(self) -> None:
        for number in (signal.SIGINT, signal.SIGTERM):
            self._previous[number] = signal.signal(number, self._handle)

    def uninstall(self) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)


# Train options that cannot change on resume: they fix the split, the tokens, the data
# windows or the random streams, so a different value would not continue the same run.
# Changing these would change the data windows, the tokens or what "best" is measured on.
FIXED_ON_RESUME = ("val_fraction", "eval_tokens", "tokenizer", "vocab_size", "seq_len", "batch_size", "seed")


def _is_run_dir(path: str) -> bool:
    """True when CORPUS names a run directory rather than a corpus (for `train --resume RUN_DIR`)."""
    folder = Path(path)
    if not folder.is_dir():
        return False
    return (folder / TRAINING_STATE).exists() or not any(folder.glob("*.txt"))


def _scan(corpus: str, cache_dir: Path, spooled: list[Path], progress: CorpusProgressDisplay) -> CorpusScan:
    """Stream the corpus once (UTF-8 check, fingerprint, vocabulary); stdin is spooled to a file first."""
    if corpus == "-":
        spooled.append(spool_stream(sys.stdin.buffer, cache_dir))
        files = CorpusFiles(files=[spooled[-1]], name="stdin", source="-")
    else:
        files = corpus_files(corpus)
    return scan_corpus(files, on_progress=progress)


def resume_hint(run_dir: RunDir, corpus_source: str | None, world: World = World()) -> str:
    """The command that continues this run."""
    if world.is_distributed:
        return f"the same torchrun command with --resume --out {shlex.quote(str(run_dir.path))}"
    if corpus_source == "-":
        return (
            f"charrnn train - --resume --out {shlex.quote(str(run_dir.path))} "
            "(with the same corpus on standard input)"
        )
    return f"charrnn train --resume {shlex.quote(str(run_dir.path))}"


def run_training(
    corpus: str | None,
    out: str | None,
    resume: bool,
    model_options: dict[str, Any],
    train_options: dict[str, Any],
    given: set[str],
    cache_dir: str | None = None,
    on_run_dir: Callable[[Path], None] = lambda path: None,
    init_from: str | None = None,
) -> int:
    """Train from the command line's options; return the process exit code.

    With `resume`, CORPUS may be the run directory itself (`charrnn train --resume RUN_DIR`);
    otherwise the run is `--out`, or runs/<corpus name>. Under torchrun, every process runs
    this; only rank 0 prepares and locks the run directory and talks. `on_run_dir` hears
    which run directory was taken (the Python API returns the model trained there).
    `init_from` names a trained model a new run starts from (fine-tuning).
    """
    spooled: list[Path] = []
    try:
        return _run_training(
            corpus,
            out,
            resume,
            model_options,
            train_options,
            given,
            Path(cache_dir) if cache_dir else default_cache_dir(),
            spooled,
            on_run_dir,
            init_from,
        )
    finally:
        for path in spooled:
            path.unlink(missing_ok=True)


def _run_training(
    corpus: str | None,
    out: str | None,
    resume: bool,
    model_options: dict[str, Any],
    train_options: dict[str, Any],
    given: set[str],
    cache_dir: Path,
    spooled: list[Path],
    on_run_dir: Callable[[Path], None],
    init_from: str | None = None,
) -> int:
    world = World.from_env()
    # Under torchrun only rank 0 talks; the others keep quiet unless they fail.
    console = stderr_console(quiet=not world.is_writer)
    fresh_model = ModelConfig(**model_options).validate()
    fresh_train = TrainConfig(**train_options).validate()

    from charrnn.data.token_cache import prepare_streamed_corpus

    parent = None
    if init_from is not None:
        if resume:
            raise UsageProblem(
                "--init-from starts a new run from a trained model and --resume continues "
                "a run: give one of them"
            )
        from charrnn.training.finetune import check_options_agree, fine_tune_configs, load_parent

        parent = load_parent(init_from)
        check_options_agree(parent.model_config, parent.tokenizer, model_options, train_options, given)
        fresh_model, fresh_train = fine_tune_configs(parent, fresh_model, fresh_train, given)

    if world.is_distributed:
        if out is None:
            raise UsageProblem(
                "under torchrun, pass --out RUN_DIR: every process and every restart "
                "must find the same run directory"
            )
        if not resume and _is_restart() and RunDir(Path(out)).state.exists():
            resume = True  # torchrun restarted the workers: continue from the last checkpoint

    progress = CorpusProgressDisplay(console)
    if resume and corpus is not None and corpus != "-" and not Path(corpus).exists():
        raise RunDirError(f"nothing to resume: {corpus} does not exist")
    if resume and corpus is not None and corpus != "-" and _is_run_dir(corpus):
        if out is not None and Path(out).resolve() != Path(corpus).resolve():
            raise UsageProblem(f"--resume {corpus} and --out {out} name two different runs: give one")
        out, corpus = corpus, None
    elif corpus is not None:
        if corpus != "-" and Path(corpus, TRAINING_STATE).exists():
            raise UsageProblem(f"{corpus} is a run directory: add --resume to continue it")
    elif not resume:
        raise UsageProblem("missing argument CORPUS (a text file, a directory of .txt files, or -)")
    # The run directory is named after the corpus, which its path tells without reading it:
    # the run is chosen and locked first, so a second training stops (or moves on) at once.
    corpus_name = _corpus_name(corpus) if corpus is not None else None

    run_dir: RunDir | None = None  # None: the first free runs/<name>, -2, -3, ... (below)
    if out is not None:
        run_dir = RunDir(Path(out))
    elif resume:
        if corpus is None:
            raise UsageProblem("--resume needs the run: charrnn train --resume RUN_DIR")
        if corpus == "-":
            raise UsageProblem("--resume with a corpus on standard input needs --out RUN_DIR")
        run_dir = RunDir(DEFAULT_RUNS_ROOT / corpus_name)
    if resume and not run_dir.state.exists():
        raise RunDirError(
            f"nothing to resume in {run_dir.path} (no {TRAINING_STATE}): start it without --resume"
        )
    if parent is not None and run_dir is not None and run_dir.path.resolve() == parent.path.resolve().parent:
        raise UsageProblem(
            f"--out {run_dir.path} is the run directory of the model it starts from: "
            "a fine-tuning run needs a folder of its own"
        )
    if not resume and run_dir is not None and not run_dir.state.exists():
        run_dir.refuse_to_start_over()  # weights without a state: refuse before touching anything
    if not resume:
        # Sizes that cannot fit stop here, before minutes of corpus work (the exact check,
        # with the vocabulary, comes once the tokeniser is fitted).
        _check_memory(fresh_model, smallest_vocab_size(fresh_train), fresh_train, world)

    # Prove the folder is writable and take the lock before reading any state or corpus:
    # a second training into the same folder stops here, before it can touch anything.
    if world.is_writer:
        if run_dir is None:
            run_dir = claim_default_run_dir(DEFAULT_RUNS_ROOT, corpus_name)
        else:
            run_dir.prepare()
            run_dir.lock()
    on_run_dir(run_dir.path)
    try:
        source = _scan(corpus, cache_dir, spooled, progress) if corpus is not None else None
        if resume:
            source, model_config, train_config, tokenizer, resume_state = _plan_resume(
                run_dir,
                source,
                model_options,
                train_options,
                given,
                world,
                lambda corpus_source: _scan(corpus_source, cache_dir, spooled, progress),
            )
        else:
            run_dir.refuse_to_start_over()  # again under the lock: a run may have saved meanwhile
            model_config, train_config, tokenizer, resume_state = fresh_model, fresh_train, None, None
            if parent is not None:
                tokenizer = _grown_tokenizer(parent, source, console)
        prepared = prepare_streamed_corpus(
            source,
            train_config.tokenizer,
            train_config.val_fraction,
            train_config.vocab_size,
            tokenizer=tokenizer,
            cache_dir=cache_dir,
            on_progress=progress,
        )
        progress.close()
        _check_memory(model_config, prepared.tokenizer.vocab_size, train_config, world)
        start = _fine_tune_start(parent, prepared) if parent is not None else {}
        return _train_until_stopped(
            console,
            prepared,
            model_config,
            train_config,
            run_dir,
            resume_state,
            source.corpus.source,
            world,
            **start,
        )
    finally:
        progress.close()
        if run_dir is not None:
            run_dir.unlock()


def _grown_tokenizer(parent, source: CorpusScan, console):
    """The parent's tokeniser with the corpus's new characters added (said on stderr)."""
    from charrnn.training.finetune import describe_added, extend_tokenizer

    tokenizer, added = extend_tokenizer(parent.tokenizer, source.chars)
    if added:
        console.print(
            f"note: the corpus adds {describe_added(added)} to the vocabulary of {parent.name}",
            markup=False,
            highlight=False,
        )
    return tokenizer


def _fine_tune_start(parent, prepared) -> dict[str, Any]:
    """The Trainer's starting weights (the parent's, grown to the new vocabulary) and its record."""
    from charrnn.data.in_memory import token_counts
    from charrnn.training.finetune import grown_model

    vocab_size = prepared.tokenizer.vocab_size
    grown = grown_model(parent.model, vocab_size, token_counts(prepared.train_tokens, vocab_size))
    return {"initial_weights": grown.state_dict(), "parent": parent.record()}


def _corpus_name(corpus: str) -> str:
    """The corpus's short name (the default run directory's), from its path alone: stdin is "stdin"."""
    return "stdin" if corpus == "-" else corpus_files(corpus).name


def _check_memory(
    model_config: ModelConfig, vocab_size: int, train_config: TrainConfig, world: World
) -> None:
    """Refuse a model that the device's memory cannot hold, before anything is allocated."""
    from charrnn.hardware import resolve_device

    device = world.device_for(resolve_device(train_config.device))
    # Processes of this run on one machine share its RAM; on GPUs each has its own device.
    replicas = 1 if device.type == "cuda" else world.local_world_size
    check_training_fits(model_config, vocab_size, device.type, device, replicas)


def _plan_resume(
    run_dir: RunDir,
    source: CorpusScan | None,
    model_options: dict[str, Any],
    train_options: dict[str, Any],
    given: set[str],
    world: World,
    scan,
):
    """Load the saved state, check the command line agrees with it, and return what training needs."""
    from charrnn.data.tokenizers import tokenizer_from_dict
    from charrnn.errors import CharrnnError, CheckpointError
    from charrnn.store.checkpoint import load_training_state
    from charrnn.training.checkpointing import check_resume_compatible

    state = load_training_state(run_dir.state)
    check_resume_world_size(state, world)
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
                f"was trained with {getattr(saved_train, name)!r}"
            )
    # The run's own record decides (states from before shifted passes continue unshifted), so a
    # contradicting flag is refused rather than silently ignored.
    saved_shift = bool(state.get("shift_passes", False))
    if "shift_passes" in given and bool(train_options["shift_passes"]) != saved_shift:
        flag = {True: "--shift-passes", False: "--no-shift-passes"}
        raise RunDirError(
            f"cannot resume: {flag[not saved_shift]} was given but the run was trained "
            f"with {flag[saved_shift]}"
        )
    given_model = ModelConfig(
        **{**saved_model.to_dict(), **{k: v for k, v in model_options.items() if k in given}}
    )
    if source is None:
        if state["corpus_source"] == "-":
            raise UsageProblem(
                "this run read its corpus from standard input: pipe it in again with "
                f"charrnn train - --resume --out {shlex.quote(str(run_dir.path))}"
            )
        source = scan(state["corpus_source"])
    check_resume_compatible(state, source.fingerprint, given_model)
    train_config = TrainConfig.from_dict(
        {**saved_train.to_dict(), **{k: v for k, v in train_options.items() if k in given}}
    ).validate()
    return source, saved_model, train_config, tokenizer, state


def _train_until_stopped(
    console,
    prepared,
    model_config: ModelConfig,
    train_config: TrainConfig,
    run_dir: RunDir,
    resume_state,
    corpus_source: str,
    world: World,
    initial_weights=None,
    parent=None,
) -> int:
    """Run the trainer with the signal handlers in place; report how it ended."""
    from charrnn.hardware import resolve_device
    from charrnn.training.loop import Trainer

    display = TrainingDisplay(console) if world.is_writer else None
    stop = StopRequest(console)
    stop.install()
    # torchrun sends SIGTERM to the survivors of a failed worker: never hang in a collective then.
    watchdog = TerminationWatchdog() if world.is_distributed else None
    if watchdog is not None:
        watchdog.install()
    try:
        with world.process_group(world.device_for(resolve_device(train_config.device))):
            trainer = Trainer(
                prepared,
                model_config,
                train_config,
                run_dir,
                on_event=display if display is not None else _ignore_event,
                should_stop=stop,
                resume_state=resume_state,
                world=world,
                initial_weights=initial_weights,
                parent=parent,
            )
            finished = trainer.run()
    except KeyboardInterrupt:
        # A second Ctrl-C: whatever was being written is abandoned, the previous files are whole.
        if display is not None:
            display.close()
        saved = (
            f"the last complete checkpoint in {run_dir.path} is intact; resume with: "
            f"{resume_hint(run_dir, corpus_source, world)}"
            if run_dir.state.exists()
            else "nothing had been saved yet"
        )
        console.print(f"Error: stopped at once: {saved}", markup=False, highlight=False)
        return EXIT_CODE_FOR_SIGNAL[signal.SIGINT]
    finally:
        if display is not None:
            display.close()
        if watchdog is not None:
            watchdog.uninstall()
        stop.uninstall()
    if world.is_writer:
        run_dir.record_end(finished.reason, finished.step)  # `charrnn runs`: finished or stopped
    if stop.reader_gone:
        return 0  # nobody is reading: the run is saved, and `--resume` continues it
    if finished.reason == "interrupted":
        console.print(
            f"interrupted at step {finished.step}, saved in {run_dir.path}; resume with: "
            f"{resume_hint(run_dir, corpus_source, world)}",
            markup=False,
            highlight=False,
        )
        return EXIT_CODE_FOR_SIGNAL.get(stop.signal_number, 130)
    console.print(finished_message(finished), markup=False, highlight=False)
    return 0


def _ignore_event(event: object) -> None:
    """The progress display of ranks other than 0: they train silently."""


def _is_restart() -> bool:
    """True when torchrun has restarted the workers after a failure (TORCHELASTIC_RESTART_COUNT > 0)."""
    try:
        return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0
    except ValueError:
        return False
