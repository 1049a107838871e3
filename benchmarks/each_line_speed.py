"""Lines per second of `charrnn sample --each-line` at batch 1 and batched, with the bundled model.

    python benchmarks/each_line_speed.py                 # 128 lines, batch sizes 1, 8, 32
    python benchmarks/each_line_speed.py --lines 256 --batch-sizes 1 64

Every line is a speaker's name from data/tinyshakespeare.txt ("KING RICHARD III:", ...),
completed up to the end of its speech (`--stop '\\n\\n'`, at most `--length` characters), on
one thread, the way
`grep ':$' data/tinyshakespeare.txt | charrnn sample --each-line --stop '\\n\\n' -n 200` would.
The same seed gives each line the same text at every batch size, so every batch size does the
same work. Compare figures from one run only: the machine may be busy.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from charrnn.config import SampleConfig  # noqa: E402
from charrnn.generate.sampler import generate_records  # noqa: E402
from charrnn.store.bundled import BUNDLED_MODELS  # noqa: E402
from charrnn.store.checkpoint import load_weights  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=128)
    parser.add_argument("--length", type=int, default=200)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32])
    args = parser.parse_args()
    torch.set_num_threads(1)
    text = (REPO / "data" / "tinyshakespeare.txt").read_text(encoding="utf-8")
    names = [line for line in text.splitlines() if line.endswith(":") and line.isupper()]
    primes = [names[index % len(names)] for index in range(args.lines)]
    loaded = load_weights(BUNDLED_MODELS["shakespeare"])
    print(f"{args.lines} lines, --stop '\\n\\n', --length {args.length}, 1 thread, bundled model")
    print("| batch | lines/s | chars/s |\n|---|---|---|")
    baseline = None
    for batch_size in args.batch_sizes:
        config = SampleConfig(stop=("\n\n",), length=args.length, seed=1, batch_size=batch_size)
        started = time.perf_counter()
        chars = sum(
            record.chars for record in generate_records(loaded.model, loaded.tokenizer, config, primes)
        )
        seconds = time.perf_counter() - started
        lines_per_second = args.lines / seconds
        baseline = baseline or lines_per_second
        print(
            f"| {batch_size} | {lines_per_second:,.1f} ({lines_per_second / baseline:.1f}x) | "
            f"{chars / seconds:,.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
