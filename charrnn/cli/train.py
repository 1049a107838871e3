"""`charrnn train`: options map onto ModelConfig / TrainConfig; the work is `training.session`'s.

This module adds what only a command has: the console and its displays, the signal handlers
(`signals.StopRequest`), the line that says how to resume, and the exit code.
"""

from __future__ import annotations

import shlex
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from charrnn.cli.group import cli
from charrnn.cli.model_options import cache_dir_option
from charrnn.config import (
    DEFAULT_SUBWORD_VOCAB_SIZE,
    FINE_TUNE_LR,
    FINE_TUNE_WARMUP_STEPS,
    MODEL_KINDS,
    TOKENIZER_KINDS,
    ModelConfig,
    TrainConfig,
    parse_duration,
)
from charrnn.training.sizing import HIGHER_LEARNING_RATE, HIGHER_RATE_FROM_PASSES, HIGHER_RATE_SHAPES

if TYPE_CHECKING:
    from charrnn.distributed import World
    from charrnn.training.session import TrainingRequest

_MODEL_DEFAULTS = ModelConfig()
_TRAIN_DEFAULTS = TrainConfig()
# The options the sizing rule chooses when they are not given (training/sizing.py).
_SIZED = "sized to the corpus and budget"
# "0.01 for a sized 2 x 384, 2 x 512 or 3 x 512 reading the text 2.5+ times": the rate sizing gives.
_SHAPES_AT_THE_HIGHER_RATE = [f"{layers} x {hidden}" for layers, hidden in HIGHER_RATE_SHAPES]
_SIZED_LEARNING_RATE = (
    f"{HIGHER_LEARNING_RATE:g} for a sized {', '.join(_SHAPES_AT_THE_HIGHER_RATE[:-1])} or "
    f"{_SHAPES_AT_THE_HIGHER_RATE[-1]} reading the text {HIGHER_RATE_FROM_PASSES:g}+ times"
)


def _duration(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
    return None if value is None else parse_duration(value)


@cli.command()
@click.argument("corpus", required=False)
@click.option(
    "--model",
    type=click.Choice(MODEL_KINDS),
    default=_MODEL_DEFAULTS.model,
    show_default=True,
    help="Recurrent cell: lstm, gru, or rnn (tanh).",
)
@click.option(
    "--num-layers",
    type=int,
    default=_MODEL_DEFAULTS.num_layers,
    show_default=_SIZED,
    help="Stacked recurrent layers.",
)
@click.option(
    "--hidden-size",
    type=int,
    default=_MODEL_DEFAULTS.hidden_size,
    show_default=_SIZED,
    help="Units per recurrent layer.",
)
@click.option(
    "--embedding-size",
    type=int,
    default=_MODEL_DEFAULTS.embedding_size,
    show_default=True,
    help="Size of the token embedding fed to the first layer.",
)
@click.option(
    "--dropout",
    type=float,
    default=_MODEL_DEFAULTS.dropout,
    show_default=_SIZED,
    help="Dropout between layers and before the output layer.",
)
@click.option(
    "--tokenizer",
    type=click.Choice(TOKENIZER_KINDS),
    default=_TRAIN_DEFAULTS.tokenizer,
    show_default=True,
    help="Unit of text: char (Unicode characters of the corpus), byte (256 UTF-8 bytes: any "
    "text and any prime work), bpe or unigram (sentencepiece subword pieces learned "
    "from the training part: more context per window, faster sampling).",
)
@click.option(
    "--vocab-size",
    type=int,
    default=None,
    show_default=f"{DEFAULT_SUBWORD_VOCAB_SIZE} for bpe/unigram",
    help="Pieces in a bpe or unigram vocabulary (at least 259: 256 byte pieces, <unk> "
    "and newline are always in it). Not for char or byte.",
)
@click.option(
    "--seq-len",
    type=int,
    default=_TRAIN_DEFAULTS.seq_len,
    show_default=True,
    help="Truncated-BPTT window: tokens per stream per step.",
)
@click.option(
    "--batch-size",
    type=int,
    default=_TRAIN_DEFAULTS.batch_size,
    show_default=True,
    help="Contiguous streams trained side by side.",
)
@click.option(
    "--stream-groups",
    type=int,
    default=_TRAIN_DEFAULTS.stream_groups,
    show_default=True,
    help="Cut the text into --batch-size x this many streams; steps train the groups in turns, "
    "each carrying its own state, so every part of the text is read all through a pass (1: one group).",
)
@click.option(
    "--lr",
    type=float,
    default=_TRAIN_DEFAULTS.lr,
    show_default=f"{_TRAIN_DEFAULTS.lr:g}; {_SIZED_LEARNING_RATE}; {FINE_TUNE_LR:g} with --init-from",
    help="Peak learning rate (AdamW; linear warm-up, then cosine decay over the budget).",
)
@click.option(
    "--warmup-steps",
    type=int,
    default=_TRAIN_DEFAULTS.warmup_steps,
    show_default=f"{_TRAIN_DEFAULTS.warmup_steps}; {FINE_TUNE_WARMUP_STEPS} with --init-from",
    help="Steps of linear learning-rate warm-up.",
)
@click.option(
    "--min-lr-fraction",
    type=float,
    default=_TRAIN_DEFAULTS.min_lr_fraction,
    show_default=True,
    help="The cosine decay ends at --lr times this.",
)
@click.option(
    "--weight-decay",
    type=float,
    default=_TRAIN_DEFAULTS.weight_decay,
    show_default=True,
    help="AdamW weight decay.",
)
@click.option(
    "--grad-clip",
    type=float,
    default=_TRAIN_DEFAULTS.grad_clip,
    show_default=True,
    help="Clip the global gradient norm to this (0 = off).",
)
@click.option(
    "--max-steps",
    type=int,
    default=None,
    show_default="no limit; sized: 16 passes when the time would read the text more often",
    help="Stop after this many steps (the learning-rate schedule then runs over steps).",
)
@click.option(
    "--max-time",
    callback=_duration,
    default=None,
    show_default="5m if --max-steps is not given",
    help="Wall-clock budget, evaluation included, e.g. 90s, 5m, 1h.",
)
@click.option(
    "--val-fraction",
    type=float,
    default=_TRAIN_DEFAULTS.val_fraction,
    show_default=True,
    help="The last fraction of the corpus, held out for validation.",
)
@click.option(
    "--eval-every",
    type=int,
    default=None,
    show_default="8 times per run and at least every 30 minutes, at most 10% of the time",
    help="Steps between evaluations and checkpoints.",
)
@click.option(
    "--eval-tokens",
    type=int,
    default=_TRAIN_DEFAULTS.eval_tokens,
    show_default=True,
    help="Validation tokens each evaluation covers (0 = all): a bigger split is sampled in pieces "
    "spread evenly over it. Keeps evaluation cheap on big corpora.",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    default=None,
    show_default="runs/<corpus name>",
    help="Run directory for checkpoints and metrics.",
)
@click.option(
    "--init-from",
    "init_from",
    metavar="MODEL",
    default=None,
    help="Start from a trained model (a run directory, a .safetensors file, or shakespeare): "
    "its shape and tokeniser, with characters the corpus adds to a char vocabulary.",
)
@click.option(
    "--resume",
    is_flag=True,
    default=False,
    help="Continue a run exactly where it stopped: `train --resume RUN_DIR` "
    "(or CORPUS / --out RUN_DIR naming the run).",
)
@cache_dir_option("for encoded token files (reused while the corpus is unchanged)")
@click.option(
    "--keep",
    type=int,
    default=_TRAIN_DEFAULTS.keep,
    show_default=True,
    help="Keep the last N step checkpoints too (best and latest are always kept).",
)
@click.option(
    "--early-stop",
    type=int,
    default=None,
    show_default="off",
    help="Stop when validation has not improved for N evaluations in a row.",
)
@click.option(
    "--auto-size/--no-auto-size",
    "auto_size",
    default=True,
    show_default=True,
    help="Choose the model's depth and width, dropout, learning rate and, when the time budget would "
    "only memorise the text, an earlier end (--max-steps) from the corpus size, the budget and this "
    "machine's speed (options you give are kept). --no-auto-size: the fixed "
    f"defaults ({_MODEL_DEFAULTS.num_layers} x {_MODEL_DEFAULTS.hidden_size}, no dropout).",
)
@click.option(
    "--seed",
    type=int,
    default=_TRAIN_DEFAULTS.seed,
    show_default=True,
    help="Random seed (same seed and --max-steps: same run).",
)
@click.option(
    "--shift-passes/--no-shift-passes",
    default=_TRAIN_DEFAULTS.shift_passes,
    show_default=True,
    help="Start each pass over the text after the first at a random offset (seeded).",
)
@click.option(
    "--device",
    type=click.Choice(["auto", "cpu", "cuda", "mps"]),
    default=_TRAIN_DEFAULTS.device,
    show_default=True,
    help="Where to train; auto picks a GPU when there is one.",
)
@click.option(
    "--threads",
    type=int,
    default=None,
    show_default="physical cores, shared among torchrun's processes; OMP_NUM_THREADS if set",
    help="CPU threads for torch.",
)
@click.option(
    "--precision",
    type=click.Choice(["auto", "fp32", "bf16"]),
    default=_TRAIN_DEFAULTS.precision,
    show_default=True,
    help="bf16 autocast where the hardware supports it; auto decides.",
)
@click.pass_context
def train(
    ctx: click.Context,
    corpus: str | None,
    out: str | None,
    resume: bool,
    init_from: str | None,
    cache_dir: str | None,
    auto_size: bool,
    **options: Any,
) -> None:
    """Train a model on CORPUS: a UTF-8 text file, a directory of *.txt files, or - for stdin.

    The model sizes itself: depth, width, dropout, learning rate and an early end not given are
    chosen from the corpus size, the budget and this machine's speed (the first line says what
    and why).
    Ctrl-C (or SIGTERM) finishes the current step, saves and tells how to resume.

    \b
    Examples:
      charrnn train data/tinyshakespeare.txt --max-time 5m
      charrnn train lyrics/ --model gru --hidden-size 256 --out runs/lyrics
      charrnn train data/tinyshakespeare.txt --tokenizer bpe --vocab-size 512
      cat *.py | charrnn train - --out runs/python
      charrnn train --resume runs/tinyshakespeare         # continue where it stopped
      charrnn train --resume runs/tinyshakespeare --max-steps 20000   # ... and train longer
      charrnn train poems.txt --init-from shakespeare      # fine-tune the bundled model
      torchrun --nproc-per-node 4 -m charrnn train big.txt --out runs/big   # 4 processes (DDP)
    """
    from charrnn.training.session import TrainingRequest

    given = {name for name in options if ctx.get_parameter_source(name) != click.core.ParameterSource.DEFAULT}
    model_fields = {f for f in ModelConfig().to_dict() if f != "vocab_size"}
    request = TrainingRequest(
        corpus=corpus,
        out=out,
        resume=resume,
        model_options={k: v for k, v in options.items() if k in model_fields},
        train_options={k: v for k, v in options.items() if k not in model_fields},
        given=given,
        cache_dir=cache_dir,
        init_from=init_from,
        auto_size=auto_size,
    )
    sys.exit(run_training(request))


def run_training(request: TrainingRequest) -> int:
    """Train as the request says, with progress on stderr and Ctrl-C handled; return the exit code.

    Under torchrun, every process runs this; only rank 0 talks.
    """
    from charrnn.cli.console import (
        CorpusProgressDisplay,
        TrainingDisplay,
        finished_message,
        stderr_console,
        terminal_safe,
    )
    from charrnn.cli.signals import EXIT_CODE_FOR_SIGNAL, StopRequest
    from charrnn.distributed import World
    from charrnn.training.session import SessionCallbacks, TrainingSession

    world = World.from_env()
    # Under torchrun only rank 0 talks; the others keep quiet unless they fail.
    console = stderr_console(quiet=not world.is_writer)
    corpus_display = CorpusProgressDisplay(console)
    training_display = TrainingDisplay(console) if world.is_writer else None
    stop = StopRequest(console)

    def on_event(event: object) -> None:
        corpus_display.close()  # the passes over the corpus are over once training reports
        if training_display is not None:
            training_display(event)

    def on_note(message: str) -> None:
        console.print(f"note: {terminal_safe(message)}", markup=False, highlight=False)

    callbacks = SessionCallbacks(
        on_event=on_event, on_corpus_progress=corpus_display, on_note=on_note, should_stop=stop
    )
    try:
        with TrainingSession(request, callbacks) as session:
            corpus_display.close()
            run_dir = session.run_dir
            assert run_dir is not None  # entering the session chose and locked it
            try:
                # torchrun sends SIGTERM to the survivors of a failed worker: never hang in a collective then.
                with stop.installed(watch_termination=world.is_distributed):
                    outcome = session.train()
            except KeyboardInterrupt:
                # A second Ctrl-C: whatever was being written is abandoned, the previous files are whole.
                if training_display is not None:
                    training_display.close()
                saved = (
                    f"the last complete checkpoint in {run_dir.path} is intact; resume with: "
                    f"{resume_hint(run_dir.path, session.corpus_source, world)}"
                    if run_dir.state.exists()
                    else "nothing had been saved yet"
                )
                console.print(
                    f"Error: stopped at once: {terminal_safe(saved)}", markup=False, highlight=False
                )
                return EXIT_CODE_FOR_SIGNAL[signal.SIGINT]
            finally:
                if training_display is not None:
                    training_display.close()
    finally:
        corpus_display.close()
    if stop.reader_gone:
        return 0  # nobody is reading: the run is saved, and `--resume` continues it
    if outcome.stopped:
        console.print(
            terminal_safe(
                f"interrupted at step {outcome.step}, saved in {outcome.run_dir}; resume with: "
                f"{resume_hint(outcome.run_dir, outcome.corpus_source, world)}"
            ),
            markup=False,
            highlight=False,
        )
        return stop.exit_code
    console.print(terminal_safe(finished_message(outcome.finished)), markup=False, highlight=False)
    return 0


def resume_hint(run_dir: Path, corpus_source: str | None, world: World) -> str:
    """The command that continues this run."""
    if world.is_distributed:
        return f"the same torchrun command with --resume --out {shlex.quote(str(run_dir))}"
    if corpus_source == "-":
        return (
            f"charrnn train - --resume --out {shlex.quote(str(run_dir))} "
            "(with the same corpus on standard input)"
        )
    return f"charrnn train --resume {shlex.quote(str(run_dir))}"
