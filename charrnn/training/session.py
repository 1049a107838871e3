"""The training session that `charrnn.train()` and `charrnn train` share.

Choose and lock the run directory, resume or start (or start from a parent model), read and
encode the corpus, check the model fits in memory, run the `Trainer`, record how it ended.
It talks only through callbacks (`SessionCallbacks`): it never prints, never installs signal
handlers and never exits, so it runs from any thread. The command line (`cli/train.py`) adds
the console, the signal handlers, the resume hints and the exit codes around it.

    with TrainingSession(request, callbacks) as session:   # the run directory is locked here
        outcome = session.train()
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from charrnn import events
from charrnn.config import ModelConfig, TrainConfig
from charrnn.data.token_cache import (
    CorpusFiles,
    CorpusScan,
    corpus_files,
    default_cache_dir,
    scan_corpus,
    spool_stream,
)
from charrnn.distributed import World
from charrnn.errors import RunDirError, UsageProblem
from charrnn.events import StopReason
from charrnn.store.run_dir import DEFAULT_RUNS_ROOT, TRAINING_STATE, RunDir, claim_default_run_dir
from charrnn.training.memory_check import check_training_fits, smallest_vocab_size

if TYPE_CHECKING:
    from charrnn.data.encoding import PreparedCorpus
    from charrnn.data.tokenizers import Tokenizer
    from charrnn.store.run_state import SavedState
    from charrnn.training.speed_probe import MachineSpeed


def _ignore(value: object) -> None:
    """A callback nobody listens to."""


def _never() -> bool:
    return False


@dataclass
class TrainingRequest:
    """What to train, as the command line's arguments say it.

    `model_options` and `train_options` hold every field (defaults included); `given` names the
    ones the user set, which is what a resume or a fine-tuning run checks against its model.
    With `resume`, `corpus` may be the run directory itself (`charrnn train --resume RUN_DIR`);
    otherwise the run is `out`, or runs/<corpus name> (-2, -3, ... when taken). `init_from`
    names a trained model a new run starts from (fine-tuning).
    """

    corpus: str | None
    out: str | None = None
    resume: bool = False
    model_options: dict[str, Any] = field(default_factory=dict)
    train_options: dict[str, Any] = field(default_factory=dict)
    given: set[str] = field(default_factory=set)
    cache_dir: str | None = None
    init_from: str | None = None
    # Size a new run to its corpus and budget (training/sizing.py): the options in `given` are kept,
    # the rest of the sized ones chosen. False trains the fixed defaults (`--no-auto-size`).
    auto_size: bool = True


@dataclass
class SessionCallbacks:
    """How a session reports, and how it is asked to stop (every one optional)."""

    on_event: Callable[[object], None] = _ignore  # training events (events.py), Notices included
    on_corpus_progress: Callable[[events.CorpusProgress], None] = _ignore  # the passes over the corpus
    on_note: Callable[[str], None] = _ignore  # one-off notes before training (e.g. characters added)
    on_run_dir: Callable[[Path], None] = _ignore  # the run directory, once it is locked
    # Asked before every step; True finishes the step, saves, and ends with StopReason.INTERRUPTED.
    should_stop: Callable[[], bool] = _never


@dataclass
class TrainingOutcome:
    """How a session ended: the run's last report, and where the corpus came from (for a resume hint)."""

    finished: events.TrainingFinished
    corpus_source: str  # the corpus path, or "-" for standard input
    world: World

    @property
    def run_dir(self) -> Path:
        """The run directory the session trained in."""
        return self.finished.run_dir

    @property
    def reason(self) -> StopReason:
        """Why it ended."""
        return self.finished.reason

    @property
    def step(self) -> int:
        """Steps done over the whole run."""
        return self.finished.step

    @property
    def stopped(self) -> bool:
        """True when it was asked to stop before its budget was spent (it is saved and resumable)."""
        return self.finished.reason is StopReason.INTERRUPTED


class TrainingSession:
    """One training session. Entering it prepares everything (the run directory is chosen and
    locked, the corpus read and encoded); `train()` trains; leaving it releases the lock and
    removes a spooled standard input, however the session ended (a KeyboardInterrupt included:
    the last complete checkpoint is left intact)."""

    def __init__(self, request: TrainingRequest, callbacks: SessionCallbacks | None = None) -> None:
        self.request = request
        self.callbacks = callbacks or SessionCallbacks()
        self.world = World.from_env()
        self.cache_dir = Path(request.cache_dir) if request.cache_dir else default_cache_dir()
        self.run_dir: RunDir | None = None
        self._spooled: list[Path] = []
        self._plan: dict[str, Any] = {}

    def __enter__(self) -> TrainingSession:
        try:
            self._prepare()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the run directory's lock and remove the spooled standard input (idempotent)."""
        if self.run_dir is not None:
            self.run_dir.unlock()
        for path in self._spooled:
            path.unlink(missing_ok=True)
        self._spooled.clear()

    # -- before training -----------------------------------------------------------------------

    def _prepare(self) -> None:
        request, world, callbacks = self.request, self.world, self.callbacks
        corpus, out, resume, given = request.corpus, request.out, request.resume, request.given
        # Path("") is the current folder, which the user did not name: training would read every
        # .txt file there, or write its run or its token cache into it.
        for label, value in (("CORPUS", corpus), ("--out", out), ("--cache-dir", request.cache_dir)):
            if value == "":
                raise UsageProblem(f'{label} is an empty name (""): give a path')
        fresh_model = ModelConfig(**request.model_options).validate()
        fresh_train = TrainConfig(**request.train_options).validate()
        if fresh_train.threads is not None:
            from charrnn.hardware import check_threads

            check_threads(fresh_train.threads)  # this machine's bound, before a run directory is made

        from charrnn.data.token_cache import prepare_streamed_corpus

        parent = None
        if request.init_from is not None:
            if resume:
                raise UsageProblem(
                    "--init-from starts a new run from a trained model and --resume continues "
                    "a run: give one of them"
                )
            from charrnn.training.finetune import check_options_agree, fine_tune_configs, load_parent

            parent = load_parent(request.init_from)
            check_options_agree(
                parent.model_config, parent.tokenizer, request.model_options, request.train_options, given
            )
            fresh_model, fresh_train = fine_tune_configs(parent, fresh_model, fresh_train, given)

        if world.is_distributed:
            if out is None:
                raise UsageProblem(
                    "under torchrun, pass --out RUN_DIR: every process and every restart "
                    "must find the same run directory"
                )
            if not resume and _is_restart() and RunDir(Path(out)).state.exists():
                resume = True  # torchrun restarted the workers: continue from the last checkpoint

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
            assert corpus_name is not None  # named after the corpus, which is given here
            run_dir = RunDir(DEFAULT_RUNS_ROOT / corpus_name)
        if resume:
            assert run_dir is not None  # a resume always names its run (--out, or the run above)
            if not run_dir.state.exists():
                raise RunDirError(
                    f"nothing to resume in {run_dir.path} (no {TRAINING_STATE}): start it without --resume"
                )
        if (
            parent is not None
            and run_dir is not None
            and run_dir.path.resolve() == parent.path.resolve().parent
        ):
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
                assert corpus_name is not None  # a fresh run without --out was given its corpus
                run_dir = claim_default_run_dir(DEFAULT_RUNS_ROOT, corpus_name)
            else:
                run_dir.prepare()
                run_dir.lock()
        # Every rank has one: only the writer claims a default folder, and torchrun needs --out.
        assert run_dir is not None
        self.run_dir = run_dir
        callbacks.on_run_dir(run_dir.path)

        scan = self._scan(corpus) if corpus is not None else None
        source: CorpusScan
        if resume:
            source, model_config, train_config, tokenizer, resume_state = self._plan_resume(scan)
        else:
            assert scan is not None  # a fresh run without a corpus was refused above
            source = scan
            run_dir.refuse_to_start_over()  # again under the lock: a run may have saved meanwhile
            model_config, train_config, tokenizer, resume_state = fresh_model, fresh_train, None, None
            if parent is not None:
                tokenizer = self._grown_tokenizer(parent, source)
        prepared = prepare_streamed_corpus(
            source,
            train_config.tokenizer,
            train_config.val_fraction,
            train_config.vocab_size,
            tokenizer=tokenizer,
            cache_dir=self.cache_dir,
            on_progress=callbacks.on_corpus_progress,
        )
        sizing = None
        if not resume and parent is None and request.auto_size:
            model_config, train_config, sizing = self._sized(prepared, model_config, train_config)
        _check_memory(model_config, prepared.tokenizer.vocab_size, train_config, world)
        self._plan = dict(
            sizing=sizing,
            prepared=prepared,
            model_config=model_config,
            train_config=train_config,
            resume_state=resume_state,
            corpus_source=source.corpus.source,
            **(_fine_tune_start(parent, prepared) if parent is not None else {}),
        )

    def _sized(
        self, prepared: PreparedCorpus, model_config: ModelConfig, train_config: TrainConfig
    ) -> tuple[ModelConfig, TrainConfig, dict[str, Any] | None]:
        """The configs with the options the user left open chosen by the sizing rule, and its record."""
        from dataclasses import replace

        from charrnn.training.sizing import SIZED_OPTIONS, SizingInputs, choose_size

        given, world = self.request.given, self.world
        if all(name in given for name in SIZED_OPTIONS):
            return model_config, train_config, None
        vocab_size = prepared.tokenizer.vocab_size
        speed: MachineSpeed | None = None
        # A time budget needs this machine's speed. Under torchrun every process would measure its
        # own and could choose another model, so there only a step budget is sized.
        if train_config.max_steps is None and not world.is_distributed:
            speed = _measure_speed(train_config, model_config, vocab_size)
        from charrnn.data.windows import fit_stream_layout
        from charrnn.errors import CharrnnError

        try:
            # The streams the run will train (a small corpus has fewer than asked), for its passes.
            batch_size, _ = fit_stream_layout(
                len(prepared.train_tokens),
                train_config.batch_size,
                train_config.stream_groups,
                train_config.seq_len,
                world.world_size,
            )
        except CharrnnError:
            batch_size = train_config.batch_size  # too short for one window: the trainer says so
        choice = choose_size(
            SizingInputs(
                train_tokens=len(prepared.train_tokens),
                chars_per_token=prepared.train_chars / max(1, len(prepared.train_tokens)),
                vocab_size=vocab_size,
                budget_seconds=train_config.budget_seconds(),
                max_steps=train_config.max_steps,
                reference_steps_per_second=speed.reference_steps_per_second if speed else None,
                measured_costs=speed.relative_costs if speed else {},
                batch_size=batch_size * world.world_size,
                seq_len=train_config.seq_len,
                model_options=model_config.to_dict(),
                given=frozenset(given),
                given_max_time=train_config.max_time,
            )
        )
        if not choice.chosen and set(SIZED_OPTIONS) - given == {"lr"}:
            # Only the learning rate was open, and this shape keeps the default: nothing was sized.
            return model_config, train_config, None
        model_fields = set(model_config.to_dict())
        model_config = replace(
            model_config, **{k: v for k, v in choice.chosen.items() if k in model_fields}
        ).validate()
        train_config = replace(
            train_config, **{k: v for k, v in choice.chosen.items() if k not in model_fields}
        ).validate()
        record = choice.record()
        if speed is not None:
            # What the plan was made from, so a run's steps can be checked against it.
            record["measured"] = {
                "reference_steps_per_second": round(speed.reference_steps_per_second, 2),
                "step_costs": {
                    f"{layers}x{hidden}": round(cost, 3)
                    for (layers, hidden), cost in speed.relative_costs.items()
                },
            }
        return model_config, train_config, record

    def _scan(self, corpus: str) -> CorpusScan:
        return _scan(corpus, self.cache_dir, self._spooled, self.callbacks.on_corpus_progress)

    def _plan_resume(
        self, source: CorpusScan | None
    ) -> tuple[CorpusScan, ModelConfig, TrainConfig, Tokenizer, SavedState]:
        """Read the saved state, have `resumed_configs` accept the options; return what training needs."""
        from charrnn.store.checkpoint import read_saved_state
        from charrnn.training.resume import resumed_configs

        request, run_dir = self.request, self.run_dir
        assert run_dir is not None  # chosen by _prepare before it plans the resume
        saved = read_saved_state(run_dir.state)
        scanned = [source]

        def corpus_fingerprint() -> str:
            scan = scanned[0]
            if scan is None:
                if saved.corpus_source == "-":
                    raise UsageProblem(
                        "this run read its corpus from standard input: pipe it in again with "
                        f"charrnn train - --resume --out {_quoted(run_dir.path)}"
                    )
                scan = scanned[0] = self._scan(saved.corpus_source)
            return scan.fingerprint

        model_config, train_config = resumed_configs(
            saved, request.model_options, request.train_options, request.given, self.world, corpus_fingerprint
        )
        scan = scanned[0]
        assert scan is not None  # resumed_configs compares the corpus, so it was scanned
        return scan, model_config, train_config, saved.tokenizer, saved

    def _grown_tokenizer(self, parent, source: CorpusScan):
        """The parent's tokeniser with the corpus's new characters added (told as a note)."""
        from charrnn.training.finetune import describe_added, extend_tokenizer

        tokenizer, added = extend_tokenizer(parent.tokenizer, source.chars)
        if added:
            self.callbacks.on_note(
                f"the corpus adds {describe_added(added)} to the vocabulary of {parent.name}"
            )
        return tokenizer

    @property
    def corpus_source(self) -> str:
        """Where the corpus came from (a path, or "-" for standard input), once entered."""
        return self._plan["corpus_source"]

    # -- training ------------------------------------------------------------------------------

    def train(self) -> TrainingOutcome:
        """Run the trainer until its budget is spent or `should_stop()`; record and return how it ended.

        A KeyboardInterrupt (or any error) raised meanwhile propagates as it is; the files of the
        last complete checkpoint are left whole, and leaving the session releases the lock.
        """
        from charrnn.hardware import resolve_device
        from charrnn.training.loop import Trainer

        plan, world, callbacks, run_dir = self._plan, self.world, self.callbacks, self.run_dir
        train_config = plan["train_config"]
        assert run_dir is not None  # chosen and locked when the session was entered
        with world.process_group(world.device_for(resolve_device(train_config.device))):
            trainer = Trainer(
                plan["prepared"],
                plan["model_config"],
                train_config,
                run_dir,
                on_event=callbacks.on_event,
                should_stop=callbacks.should_stop,
                resume_state=plan["resume_state"],
                world=world,
                initial_weights=plan.get("initial_weights"),
                parent=plan.get("parent"),
                sizing=plan.get("sizing"),
            )
            finished = trainer.run()
        if world.is_writer:
            run_dir.record_end(finished.reason, finished.step)  # `charrnn runs`: finished or stopped
        return TrainingOutcome(finished, self.corpus_source, world)


def _quoted(path: Path) -> str:
    import shlex

    return shlex.quote(str(path))


def _is_run_dir(path: str) -> bool:
    """True when CORPUS names a run directory rather than a corpus (for `train --resume RUN_DIR`)."""
    folder = Path(path)
    if not folder.is_dir():
        return False
    return (folder / TRAINING_STATE).exists() or not any(folder.glob("*.txt"))


def _scan(
    corpus: str,
    cache_dir: Path,
    spooled: list[Path],
    on_progress: Callable[[events.CorpusProgress], None],
) -> CorpusScan:
    """Stream the corpus once (UTF-8 check, fingerprint, vocabulary); stdin is spooled to a file first."""
    if corpus == "-":
        spooled.append(spool_stream(sys.stdin.buffer, cache_dir))
        files = CorpusFiles(files=[spooled[-1]], name="stdin", source="-")
    else:
        files = corpus_files(corpus)
    return scan_corpus(files, on_progress=on_progress)


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


def _measure_speed(train_config: TrainConfig, model_config: ModelConfig, vocab_size: int) -> MachineSpeed:
    """The sizing rule's reference speed, and the probed shape's cost, on the run's device,
    precision, threads and vocabulary."""
    from charrnn.hardware import configure_threads, resolve_device, resolve_precision
    from charrnn.training.speed_probe import measure_speed

    device = resolve_device(train_config.device)
    configure_threads(train_config.threads)
    return measure_speed(
        train_config,
        vocab_size,
        device,
        resolve_precision(train_config.precision, device),
        model_kind=model_config.model,
        embedding_size=model_config.embedding_size,
    )


def _is_restart() -> bool:
    """True when torchrun has restarted the workers after a failure (TORCHELASTIC_RESTART_COUNT > 0)."""
    try:
        return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0
    except ValueError:
        return False
