"""The command line: parse options into configs, call the library, report errors as one line.

torch is imported inside the commands, so `charrnn --help` stays instant.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any, Optional

import click

from . import __version__
from .config import (DEFAULT_SUBWORD_VOCAB_SIZE, MODEL_KINDS, TOKENIZER_KINDS, ModelConfig, SampleConfig,
                     TrainConfig, parse_duration)
from .errors import CharrnnError, UsageProblem

EXIT_SIGINT = 130
EXIT_SIGTERM = 143


def _error_line(message: str) -> str:
    return "Error: " + " ".join(str(message).split())


class CharrnnGroup(click.Group):
    """A group whose every failure is one `Error: ...` line on stderr: exit 2 for usage, 1 otherwise."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        try:
            result = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.exceptions.NoArgsIsHelpError as error:
            click.echo(error.ctx.get_help())
            sys.exit(0)
        except click.ClickException as error:
            click.echo(_error_line(error.format_message()), err=True)
            sys.exit(error.exit_code)
        except UsageProblem as error:
            click.echo(_error_line(str(error)), err=True)
            sys.exit(2)
        except CharrnnError as error:
            click.echo(_error_line(str(error)), err=True)
            sys.exit(1)
        except (click.Abort, KeyboardInterrupt):
            click.echo("Error: interrupted", err=True)
            sys.exit(EXIT_SIGINT)
        sys.exit(result if isinstance(result, int) else 0)


@click.group(cls=CharrnnGroup, context_settings={"help_option_names": ["-h", "--help"],
                                                  "max_content_width": 100})
@click.version_option(__version__, prog_name="charrnn")
def cli() -> None:
    """Learn to write like any text corpus, one character at a time.

    \b
      charrnn train corpus.txt
      charrnn sample --temperature 0.8 | head -40
    """


def main() -> None:
    """Console-script entry point."""
    try:
        cli(prog_name="charrnn")
    except SystemExit as exit_request:
        if "RANK" in os.environ:          # started by torchrun: see distributed.end_worker_process
            from .distributed import end_worker_process
            end_worker_process(exit_request.code)
        raise


# -- train ------------------------------------------------------------------------------

_MODEL_DEFAULTS = ModelConfig()
_TRAIN_DEFAULTS = TrainConfig()


def _duration(ctx: click.Context, param: click.Parameter, value: Optional[str]) -> Optional[float]:
    return None if value is None else parse_duration(value)


@cli.command()
@click.argument("corpus", required=False)
@click.option("--model", type=click.Choice(MODEL_KINDS), default=_MODEL_DEFAULTS.model, show_default=True,
              help="Recurrent cell: lstm, gru, or rnn (tanh).")
@click.option("--num-layers", type=int, default=_MODEL_DEFAULTS.num_layers, show_default=True,
              help="Stacked recurrent layers.")
@click.option("--hidden-size", type=int, default=_MODEL_DEFAULTS.hidden_size, show_default=True,
              help="Units per recurrent layer.")
@click.option("--embedding-size", type=int, default=_MODEL_DEFAULTS.embedding_size, show_default=True,
              help="Size of the token embedding fed to the first layer.")
@click.option("--dropout", type=float, default=_MODEL_DEFAULTS.dropout, show_default=True,
              help="Dropout between layers and before the output layer.")
@click.option("--tokenizer", type=click.Choice(TOKENIZER_KINDS), default=_TRAIN_DEFAULTS.tokenizer,
              show_default=True,
              help="Unit of text: char (Unicode characters of the corpus), byte (256 UTF-8 bytes: any "
                   "text and any prime work), bpe or unigram (sentencepiece subword pieces learned "
                   "from the training part: more context per window, faster sampling).")
@click.option("--vocab-size", type=int, default=None,
              show_default=f"{DEFAULT_SUBWORD_VOCAB_SIZE} for bpe/unigram",
              help="Pieces in a bpe or unigram vocabulary (at least 259: 256 byte pieces, <unk> "
                   "and newline are always in it). Not for char or byte.")
@click.option("--seq-len", type=int, default=_TRAIN_DEFAULTS.seq_len, show_default=True,
              help="Truncated-BPTT window: tokens per stream per step.")
@click.option("--batch-size", type=int, default=_TRAIN_DEFAULTS.batch_size, show_default=True,
              help="Contiguous streams trained side by side.")
@click.option("--lr", type=float, default=_TRAIN_DEFAULTS.lr, show_default=True,
              help="Peak learning rate (AdamW; linear warm-up, then cosine decay over the budget).")
@click.option("--warmup-steps", type=int, default=_TRAIN_DEFAULTS.warmup_steps, show_default=True,
              help="Steps of linear learning-rate warm-up.")
@click.option("--min-lr-fraction", type=float, default=_TRAIN_DEFAULTS.min_lr_fraction, show_default=True,
              help="The cosine decay ends at --lr times this.")
@click.option("--weight-decay", type=float, default=_TRAIN_DEFAULTS.weight_decay, show_default=True,
              help="AdamW weight decay.")
@click.option("--grad-clip", type=float, default=_TRAIN_DEFAULTS.grad_clip, show_default=True,
              help="Clip the global gradient norm to this (0 = off).")
@click.option("--max-steps", type=int, default=None, show_default="no limit",
              help="Stop after this many steps (the learning-rate schedule then runs over steps).")
@click.option("--max-time", callback=_duration, default=None, show_default="5m if --max-steps is not given",
              help="Wall-clock budget, evaluation included, e.g. 90s, 5m, 1h.")
@click.option("--val-fraction", type=float, default=_TRAIN_DEFAULTS.val_fraction, show_default=True,
              help="The last fraction of the corpus, held out for validation.")
@click.option("--eval-every", type=int, default=None, show_default="8 times per run, at most 10% of the time",
              help="Steps between evaluations and checkpoints.")
@click.option("--eval-tokens", type=int, default=_TRAIN_DEFAULTS.eval_tokens, show_default=True,
              help="Validation tokens each evaluation covers: the first N of the split (0 = all). "
                   "Keeps evaluation cheap on big corpora.")
@click.option("--out", type=click.Path(file_okay=False), default=None, show_default="runs/<corpus name>",
              help="Run directory for checkpoints and metrics.")
@click.option("--resume", is_flag=True, default=False,
              help="Continue a run exactly where it stopped: `train --resume RUN_DIR` "
                   "(or CORPUS / --out RUN_DIR naming the run).")
@click.option("--cache-dir", type=click.Path(file_okay=False), envvar="CHARRNN_CACHE_DIR", default=None,
              show_default="~/.cache/charrnn",
              help="Folder for encoded token files (reused while the corpus is unchanged).")
@click.option("--keep", type=int, default=_TRAIN_DEFAULTS.keep, show_default=True,
              help="Keep the last N step checkpoints too (best and latest are always kept).")
@click.option("--early-stop", type=int, default=None, show_default="off",
              help="Stop when validation has not improved for N evaluations in a row.")
@click.option("--seed", type=int, default=_TRAIN_DEFAULTS.seed, show_default=True,
              help="Random seed (same seed and --max-steps: same run).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda", "mps"]), default=_TRAIN_DEFAULTS.device,
              show_default=True, help="Where to train; auto picks a GPU when there is one.")
@click.option("--threads", type=int, default=None,
              show_default="physical cores, shared among torchrun's processes; OMP_NUM_THREADS if set",
              help="CPU threads for torch.")
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16"]), default=_TRAIN_DEFAULTS.precision,
              show_default=True, help="bf16 autocast where the hardware supports it; auto decides.")
@click.pass_context
def train(ctx: click.Context, corpus: Optional[str], out: Optional[str], resume: bool,
          cache_dir: Optional[str], **options: Any) -> None:
    """Train a model on CORPUS: a UTF-8 text file, a directory of *.txt files, or - for stdin.

    Ctrl-C (or SIGTERM) finishes the current step, saves and tells how to resume.

    \b
    Examples:
      charrnn train data/tinyshakespeare.txt --max-time 5m
      charrnn train lyrics/ --model gru --hidden-size 256 --out runs/lyrics
      charrnn train data/tinyshakespeare.txt --tokenizer bpe --vocab-size 512
      cat *.py | charrnn train - --out runs/python
      charrnn train --resume runs/tinyshakespeare         # continue where it stopped
      charrnn train --resume runs/tinyshakespeare --max-steps 20000   # ... and train longer
      torchrun --nproc-per-node 4 -m charrnn train big.txt --out runs/big   # 4 processes (DDP)
    """
    from .train_command import run_training

    given = {name for name in options
             if ctx.get_parameter_source(name) != click.core.ParameterSource.DEFAULT}
    model_fields = {f for f in ModelConfig().to_dict() if f != "vocab_size"}
    model_options = {k: v for k, v in options.items() if k in model_fields}
    train_options = {k: v for k, v in options.items() if k not in model_fields}
    outcome = run_training(corpus=corpus, out=out, resume=resume, model_options=model_options,
                           train_options=train_options, given=given, cache_dir=cache_dir)
    sys.exit(outcome)


# -- sample -----------------------------------------------------------------------------

_SAMPLE_DEFAULTS = SampleConfig()


def _unescape(text: str) -> str:
    return text.replace("\\n", "\n").replace("\\t", "\t")


@cli.command()
@click.argument("checkpoint", required=False)
@click.option("--temperature", "-t", type=float, default=_SAMPLE_DEFAULTS.temperature, show_default=True,
              help="Below 1: safer, more repetitive text; above 1: wilder text.")
@click.option("--top-k", type=int, default=None, help="Sample only from the k most likely tokens.")
@click.option("--top-p", type=float, default=None,
              help="Sample only from the most likely tokens whose probabilities sum to p.")
@click.option("--greedy", is_flag=True, help="Always take the most likely token.")
@click.option("--length", "-n", type=int, default=_SAMPLE_DEFAULTS.length, show_default=True,
              help="Characters to write after the prime; -1 writes until the reader closes the pipe.")
@click.option("--prime", type=str, default=None,
              help="Text to warm the model up with (written first); - reads it from stdin.")
@click.option("--seed", type=int, default=None, show_default="random", help="Same seed, same text.")
@click.option("--num-samples", type=int, default=_SAMPLE_DEFAULTS.num_samples, show_default=True,
              help="Samples to write (generated together as one batch).")
@click.option("--separator", type=str, default="\\n\\n", show_default=True,
              help="Written between samples (\\n and \\t are understood).")
@click.option("--threads", type=int, default=1, show_default=True, help="CPU threads for torch.")
def sample(checkpoint: Optional[str], temperature: float, top_k: Optional[int], top_p: Optional[float],
           greedy: bool, length: int, prime: Optional[str], seed: Optional[int], num_samples: int,
           separator: str, threads: int) -> None:
    """Write text from a trained model to stdout.

    CHECKPOINT is a .safetensors file or a run directory; by default, the most
    recently trained run under runs/. Only the text goes to stdout.

    \b
    Examples:
      charrnn sample --temperature 0.8 | head -40
      charrnn sample runs/tinyshakespeare --prime "ROMEO:" --length 500
      charrnn sample --length -1 | grep -m 5 "KING"
      echo "JULIET:" | charrnn sample --prime - --seed 7
    """
    if prime == "-":
        prime = _read_stdin_text("the prime text on standard input")
    config = SampleConfig(temperature=temperature, top_k=top_k, top_p=top_p, greedy=greedy,
                          length=length, prime=prime, seed=seed, num_samples=num_samples,
                          separator=_unescape(separator)).validate()
    if threads < 1:
        raise UsageProblem(f"--threads must be >= 1, got {threads}")

    import torch

    from .checkpoint import load_weights
    from .rundir import resolve_weights
    from .sampling import generate_text

    torch.set_num_threads(threads)
    loaded = load_weights(resolve_weights(checkpoint))
    _write_stream(generate_text(loaded.model, loaded.tokenizer, config))


def _read_stdin_text(what: str) -> str:
    """Standard input as UTF-8, whatever the locale says (a clear error for other bytes)."""
    raw = sys.stdin.buffer.read() if hasattr(sys.stdin, "buffer") else sys.stdin.read().encode("utf-8")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise UsageProblem(f"{what} is not valid UTF-8 (byte 0x{raw[error.start]:02x} at offset "
                           f"{error.start})") from None


def _write_stream(chunks) -> None:
    """Stream text to stdout, flushing at line ends and at least every 50 ms; a closed pipe ends quietly."""
    out = sys.stdout
    try:
        out.reconfigure(errors="replace")  # a terminal that cannot show a character gets '?', not a crash
    except (AttributeError, ValueError):
        pass
    last_flush = time.monotonic()
    wrote_anything = ended_with_newline = False
    try:
        for chunk in chunks:
            if not chunk:
                continue
            out.write(chunk)
            wrote_anything, ended_with_newline = True, chunk.endswith("\n")
            now = time.monotonic()
            if "\n" in chunk or now - last_flush > 0.05:
                out.flush()
                last_flush = now
        if out.isatty() and wrote_anything and not ended_with_newline:
            out.write("\n")  # leave the shell prompt on a line of its own
        out.flush()
    except BrokenPipeError:
        # The reader (head, less, ...) has gone: that is a normal end. Point stdout at
        # /dev/null so the interpreter's final flush does not complain either.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, out.fileno())
        sys.exit(0)


if __name__ == "__main__":
    main()
