"""Peak memory and evaluation speed of a char model with 65 symbols and with 60,000.

Each case trains the default model (2 x 384 LSTM) at batch 32 x 128 for a few steps with
`charrnn train --tokenizer char` in a process of its own and reports that process's peak
resident memory (ru_maxrss, from os.wait4) and the time its last evaluation took per token:

    python benchmarks/big_vocab.py                       # 65 (tinyshakespeare) vs 60,000 symbols
    python benchmarks/big_vocab.py --symbols 65,20000,60000 --steps 3

The 60,000-symbol corpus is generated (a Zipf draw over 60,000 CJK code points, every one at
least once); nothing is downloaded. A Markdown table goes to stdout, progress to stderr.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CJK_BLOCKS = [(0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF)]  # 70,000+ ideographs


def symbols_text(distinct: int, num_chars: int = 1_000_000, seed: int = 0) -> str:
    """Text over exactly `distinct` ideographs (and newlines), Zipf-distributed, each at least once."""
    code_points = [c for first, last in CJK_BLOCKS for c in range(first, last + 1)][: distinct - 1]
    chars = [chr(c) for c in code_points]
    rng = random.Random(seed)
    weights = list(itertools.accumulate(1.0 / (rank + 1) for rank in range(len(chars))))
    drawn = rng.choices(chars, cum_weights=weights, k=num_chars - len(chars))
    body = "".join(chars) + "".join(drawn)
    return "\n".join(body[start : start + 60] for start in range(0, len(body), 60)) + "\n"


def run_case(symbols: int, args: argparse.Namespace, folder: Path) -> dict:
    """Train one case in a child process; its peak RSS and evaluation time per token."""
    if symbols == 65:
        corpus = REPO / "data" / "tinyshakespeare.txt"
    else:
        corpus = folder / f"symbols-{symbols}.txt"
        corpus.write_text(symbols_text(symbols), encoding="utf-8")
    out = folder / f"run-{symbols}"
    command = [
        sys.executable,
        "-m",
        "charrnn",
        "train",
        str(corpus),
        "--tokenizer",
        "char",
        "--max-steps",
        str(args.steps),
        "--eval-every",
        str(args.steps),
        "--eval-tokens",
        str(args.eval_tokens),
        "--threads",
        str(args.threads),
        "--precision",
        "fp32",
        "--out",
        str(out),
        "--cache-dir",
        str(folder / "cache"),
        # The README's figures were measured at batch 32, the default of the time.
        "--batch-size",
        "32",
    ]
    with open(folder / f"run-{symbols}.log", "w", encoding="utf-8") as log:
        child = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=log)
        _, status, usage = os.wait4(child.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"the {symbols}-symbol case failed; see {folder / f'run-{symbols}.log'}")
    record = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line][-1]
    return {
        "symbols": symbols,
        "peak_rss_mb": usage.ru_maxrss / 1024,
        "eval_us_per_token": record["eval_seconds"] / args.eval_tokens * 1e6,
    }


def main() -> None:
    """Run each case, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--symbols", default="65,60000", help="vocabulary sizes (65 = tinyshakespeare)")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--eval-tokens", type=int, default=20_000)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="charrnn-bigvocab-") as temporary:
        for symbols in map(int, args.symbols.split(",")):
            print(f"training with {symbols} symbols ...", file=sys.stderr, flush=True)
            rows.append(run_case(symbols, args, Path(temporary)))
    base = rows[0]["eval_us_per_token"]
    print("| char vocabulary | peak RSS (train + eval) | evaluation per token | vs first row |")
    print("|---:|---:|---:|---:|")
    for row in rows:
        print(
            f"| {row['symbols']:,} | {row['peak_rss_mb']:,.0f} MiB | {row['eval_us_per_token']:.1f} µs | "
            f"{row['eval_us_per_token'] / base:.1f}x |"
        )
    print(
        f"\nProduced by: python benchmarks/big_vocab.py --symbols {args.symbols} --steps {args.steps} "
        f"--eval-tokens {args.eval_tokens} --threads {args.threads}"
    )


if __name__ == "__main__":
    main()
