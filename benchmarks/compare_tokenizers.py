"""Compare the tokeniser kinds on one corpus at equal training time; print a Markdown table.

Each kind trains the same network (same layers and hidden size; only the
embedding and output layer follow the vocabulary) for the same wall-clock
budget, in its own `charrnn train` process, then the best checkpoint is
measured:

    kind | vocab | chars/token | val loss (nats/token) | val bits/char | train chars/s | sample chars/s

Validation loss per token is not comparable across kinds (a token is a
different amount of text); bits per character is (total nats over the
validation text / ln 2 / its characters).

    python benchmarks/compare_tokenizers.py                      # 2 minutes per kind
    python benchmarks/compare_tokenizers.py --budget 20s --hidden-size 128   # a quick check

The table goes to stdout, progress to stderr. Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from charrnn.config import SampleConfig, parse_duration  # noqa: E402
from charrnn.data.in_memory import read_corpus  # noqa: E402
from charrnn.generate.sampler import generate_text  # noqa: E402
from charrnn.hardware import physical_cores  # noqa: E402
from charrnn.store.checkpoint import load_weights  # noqa: E402

DEFAULT_KINDS = "char,byte,bpe"


def parse_args() -> argparse.Namespace:
    """Command-line options of the comparison."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", default=str(REPO / "data" / "tinyshakespeare.txt"))
    parser.add_argument("--budget", default="2m", help="wall-clock training time per kind (e.g. 20s, 2m)")
    parser.add_argument("--kinds", default=DEFAULT_KINDS, help="comma-separated tokeniser kinds")
    parser.add_argument("--vocab-size", type=int, default=512, help="for bpe and unigram")
    parser.add_argument("--hidden-size", type=int, default=None, help="default: charrnn's default")
    parser.add_argument("--num-layers", type=int, default=None, help="default: charrnn's default")
    parser.add_argument(
        "--threads", type=int, default=None, help="training threads (default: physical cores)"
    )
    parser.add_argument("--sample-length", type=int, default=3000, help="characters written to time sampling")
    parser.add_argument("--out", default=None, help="keep the runs here (default: a temporary folder)")
    return parser.parse_args()


def train(kind: str, args: argparse.Namespace, out: Path) -> None:
    """Train one kind for the budget in a fresh `charrnn train` process (its log goes to out/train.log)."""
    command = [
        sys.executable,
        "-m",
        "charrnn",
        "train",
        args.corpus,
        "--tokenizer",
        kind,
        "--max-time",
        args.budget,
        "--out",
        str(out),
    ]
    if kind in ("bpe", "unigram"):
        command += ["--vocab-size", str(args.vocab_size)]
    for option in ("hidden_size", "num_layers", "threads"):
        value = getattr(args, option)
        if value is not None:
            command += [f"--{option.replace('_', '-')}", str(value)]
    out.parent.mkdir(parents=True, exist_ok=True)
    log = out.parent / f"{out.name}.log"
    with open(log, "w", encoding="utf-8") as handle:
        finished = subprocess.run(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=handle)
    if finished.returncode != 0:
        sys.exit(f"training {kind} failed (exit {finished.returncode}); see {log}")


def measure(kind: str, args: argparse.Namespace, out: Path, text: str) -> dict:
    """The table row of one trained run."""
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line]
    best = min(records, key=lambda record: record["val_loss"])
    loaded = load_weights(out / "best.safetensors")
    tokenizer = loaded.tokenizer
    chars_per_token = len(text) / len(tokenizer.encode(text))

    torch.set_num_threads(1)  # as `charrnn sample` does by default
    config = SampleConfig(length=args.sample_length, seed=0, temperature=1.0)
    "".join(generate_text(loaded.model, tokenizer, SampleConfig(length=100, seed=1)))  # warm-up
    started = time.perf_counter()
    written = "".join(generate_text(loaded.model, tokenizer, config))
    sample_seconds = time.perf_counter() - started
    return {
        "kind": kind if kind in ("char", "byte") else f"{kind} {tokenizer.vocab_size}",
        "vocab": tokenizer.vocab_size,
        "chars_per_token": chars_per_token,
        "val_loss": best["val_loss"],
        "val_bpc": best["val_bpc"],
        "train_chars_per_second": records[-1]["chars_per_second"],
        "sample_chars_per_second": (len(written) - 1) / sample_seconds,
        "steps": records[-1]["step"],
        "parameters": sum(p.numel() for p in loaded.model.parameters()),
    }


def markdown(rows: list[dict]) -> str:
    """The comparison as a Markdown table."""
    lines = [
        "| tokeniser | vocab | chars/token | val loss (nats/token) | val bits/char | "
        "train chars/s | sample chars/s | steps | parameters |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['kind']} | {row['vocab']} | {row['chars_per_token']:.2f} | {row['val_loss']:.3f} | "
            f"**{row['val_bpc']:.3f}** | {row['train_chars_per_second']:,.0f} | "
            f"{row['sample_chars_per_second']:,.0f} | {row['steps']} | {row['parameters']:,} |"
        )
    return "\n".join(lines)


def main() -> None:
    """Train every kind, measure, print the table."""
    args = parse_args()
    parse_duration(args.budget)  # fail early on a bad budget
    kinds = [kind.strip() for kind in args.kinds.split(",") if kind.strip()]
    text = read_corpus(args.corpus).text
    with tempfile.TemporaryDirectory(prefix="charrnn-compare-") as temporary:
        root = Path(args.out) if args.out else Path(temporary)
        rows = []
        for kind in kinds:
            out = root / kind
            print(f"training {kind} for {args.budget} ...", file=sys.stderr, flush=True)
            train(kind, args, out)
            rows.append(measure(kind, args, out, text))
    threads = args.threads or physical_cores()
    print(
        f"Corpus {Path(args.corpus).name}, {args.budget} of training per tokeniser, "
        f"{threads} training thread(s), sampling on 1 thread; {platform.processor() or platform.machine()}, "
        f"torch {torch.__version__}.\n"
    )
    print(markdown(rows))
    print(
        f"\nProduced by: python benchmarks/compare_tokenizers.py --budget {args.budget}"
        + (f" --hidden-size {args.hidden_size}" if args.hidden_size else "")
        + (f" --num-layers {args.num_layers}" if args.num_layers else "")
        + (f" --threads {args.threads}" if args.threads else "")
    )


if __name__ == "__main__":
    main()
