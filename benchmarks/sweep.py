"""Train several configurations for the same budget, several seeds each, and print medians.

This is how the defaults were chosen (see README, "Performance"). Each run is a
real `charrnn train` in a subprocess, so the figures include everything the
command does: data, evaluation, checkpoints.

    python benchmarks/sweep.py --budget 5m                       # the built-in candidates
    python benchmarks/sweep.py --budget 5m --seeds 1,2,3 "" "--lr 0.008"
    python benchmarks/sweep.py --steps 1200 --jobs 2 --seeds 1,2 "" "--min-lr-fraction 0"

Two kinds of budget:
- `--budget 5m` (wall clock) measures what a user gets: runs go one at a time on all cores,
  and the machine must be otherwise idle.
- `--steps N` measures the loss after N steps, which does not depend on the machine's load or
  thread count. It compares settings that do not change the speed of a step (learning rate,
  schedule), and `--jobs 2` runs two at a time on one thread each.

The figure per run is its best validation loss over the whole split (the checkpoint that
`best.safetensors` keeps); the table shows the median over the seeds, and every seed's value.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CANDIDATES = [
    "",  # the defaults
    "--hidden-size 256",
    "--hidden-size 512",
]


def run(corpus: Path, budget: list[str], extra: str, seed: int, out: Path, threads: int | None) -> dict:
    command = [
        sys.executable,
        "-m",
        "charrnn",
        "train",
        str(corpus),
        *budget,
        "--seed",
        str(seed),
        "--out",
        str(out),
        "--eval-tokens",
        "0",
        *shlex.split(extra),
    ]
    if threads:
        command += ["--threads", str(threads)]
    subprocess.run(command, check=True, stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    best = min(records, key=lambda r: r["val_loss"])
    return {
        "sized": sized_as(out / "best.safetensors"),
        "val_loss": best["val_loss"],
        "steps": records[-1]["step"],
        "chars_per_second": records[-1]["chars_per_second"],
        "elapsed": records[-1]["elapsed"],
    }


def sized_as(weights: Path) -> str:
    """What the sizing rule chose for this run ("2x384 lr 0.01"), or "-" when it chose nothing:
    with sizing, the same options can train different models on differently fast machines."""
    from charrnn.store.describe import describe

    sizing = describe(weights)["training"].get("sizing")
    if not sizing or not sizing.get("chosen"):
        return "-"
    chosen = sizing["chosen"]
    words = []
    if "num_layers" in chosen or "hidden_size" in chosen:
        words.append(f"{chosen.get('num_layers', '?')}x{chosen.get('hidden_size', '?')}")
    shape = ("num_layers", "hidden_size")
    words += [f"{name} {value:g}" for name, value in chosen.items() if name not in shape]
    return " ".join(words)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("options", nargs="*", help="extra `charrnn train` options per setting (quoted)")
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--budget", default=None, help="--max-time of every run (default 5m)")
    budget.add_argument("--steps", type=int, default=None, help="--max-steps of every run instead")
    parser.add_argument("--seeds", default="1", help="comma-separated seeds, one run each per setting")
    parser.add_argument(
        "--jobs", type=int, default=1, help="runs at a time, one thread each (only with --steps)"
    )
    parser.add_argument("--corpus", default=str(REPO / "data" / "tinyshakespeare.txt"))
    args = parser.parse_args()
    if args.jobs > 1 and args.steps is None:
        parser.error("--jobs needs --steps: timed runs must not share the machine")
    budget_options = (
        ["--max-steps", str(args.steps)] if args.steps is not None else ["--max-time", args.budget or "5m"]
    )
    seeds = [int(seed) for seed in args.seeds.split(",")]
    settings = args.options or CANDIDATES
    threads = 1 if args.jobs > 1 else None
    print(f"budget: {' '.join(budget_options)}; seeds {args.seeds}; corpus {args.corpus}", file=sys.stderr)
    print("| options | median best val loss (nats/char) | per seed | steps | chars/s | sized as, per seed |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as folder, ThreadPoolExecutor(args.jobs) as pool:
        # Seed by seed, every setting once each: the machine's speed drifts over half an hour,
        # and this spreads the drift over the settings instead of handing it to the last one.
        jobs = {
            (index, seed): pool.submit(
                run,
                Path(args.corpus),
                budget_options,
                extra,
                seed,
                Path(folder) / f"setting{index}-seed{seed}",
                threads,
            )
            for seed in seeds
            for index, extra in enumerate(settings)
        }
        for index, extra in enumerate(settings):
            rows = [jobs[index, seed].result() for seed in seeds]
            losses = [row["val_loss"] for row in rows]
            print(
                f"| `{extra or '(defaults)'}` | {statistics.median(losses):.4f} "
                f"| {', '.join(f'{loss:.4f}' for loss in losses)} "
                f"| {statistics.median(row['steps'] for row in rows):.0f} "
                f"| {statistics.median(row['chars_per_second'] for row in rows):,.0f} "
                f"| {'; '.join(row['sized'] for row in rows)} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
