"""Train several configurations for the same wall-clock budget and print a table of their val loss.

This is how the defaults were chosen (see README, "Performance"). Each run is a
real `charrnn train` in a subprocess, so the figures include everything the
command does: data, evaluation, checkpoints.

    python benchmarks/sweep.py --budget 5m                       # the built-in candidates
    python benchmarks/sweep.py --budget 2m "--hidden-size 256" "--hidden-size 384 --lr 0.004"
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CANDIDATES = [
    "",  # the defaults
    "--hidden-size 256",
    "--hidden-size 384",
    "--hidden-size 512",
]


def run(corpus: Path, budget: str, extra: str, folder: Path) -> dict:
    out = folder / f"run{len(list(folder.iterdir()))}"
    command = [sys.executable, "-m", "charrnn", "train", str(corpus), "--max-time", budget,
               "--out", str(out), *shlex.split(extra)]
    subprocess.run(command, check=True, stderr=subprocess.DEVNULL)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    best = min(records, key=lambda r: r["val_loss"])
    return {"options": extra or "(defaults)", "val_loss": best["val_loss"], "val_bpc": best["val_bpc"],
            "steps": records[-1]["step"], "chars_per_second": records[-1]["chars_per_second"],
            "elapsed": records[-1]["elapsed"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("options", nargs="*", help="extra `charrnn train` options per run (quoted)")
    parser.add_argument("--budget", default="5m", help="--max-time of every run")
    parser.add_argument("--corpus", default=str(REPO / "data" / "tinyshakespeare.txt"))
    args = parser.parse_args()
    print("| options | best val loss (nats/char) | bits/char | steps | chars/s | seconds |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as folder:
        for extra in args.options or CANDIDATES:
            row = run(Path(args.corpus), args.budget, extra, Path(folder))
            print(f"| `{row['options']}` | {row['val_loss']:.4f} | {row['val_bpc']:.4f} | {row['steps']} "
                  f"| {row['chars_per_second']:,.0f} | {row['elapsed']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
