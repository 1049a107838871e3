"""Sampling speed, chars/s, of this checkout against another one (the old path), in the same run.

    python benchmarks/sampling_speed.py                          # this checkout only
    python benchmarks/sampling_speed.py --baseline ../main       # and the checkout at ../main, interleaved

Three figures, each on one thread: one stream (`charrnn sample`, batch 1) and 64
samples side by side (`--num-samples 64`) of the default model (2 x 384 LSTM,
embedding 64, 65 characters, random weights: speed does not depend on them), and
`--each-line` with the bundled model (64 speaker names completed up to `--stop
'\\n\\n'`, batch 32). Every measurement runs in a fresh process; checkouts take turns,
so a change in the machine's load hits both alike. Printed: the median of
`--repeats` runs per figure, the spread, the ratio of the medians, and the load
average before and after (the machine is shared: compare ratios, not absolute
figures across runs).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FIGURES = {"batch 1": ("stream", 1), "batch 64": ("stream", 64), "each line, batch 32": ("lines", 32)}


def measure(repo: Path, kind: str, batch: int, length: int) -> float:
    """chars/s of one sampling run of `repo`'s charrnn (called in the worker process)."""
    sys.path.insert(0, str(repo))
    import torch

    import charrnn
    from charrnn.config import ModelConfig, SampleConfig
    from charrnn.generate.sampler import generate_records, generate_text

    if not Path(charrnn.__file__).resolve().is_relative_to(repo.resolve()):
        raise SystemExit(f"charrnn came from {charrnn.__file__}, not from {repo}")
    torch.set_num_threads(1)
    if kind == "stream":
        from charrnn.data.in_memory import Corpus, prepare_corpus
        from charrnn.model import CharRNN

        tokenizer = prepare_corpus(
            Corpus("".join(chr(32 + i) for i in range(65)) * 3, "v", "v"), "char", 0.3
        ).tokenizer
        torch.manual_seed(0)
        model = CharRNN(ModelConfig(vocab_size=tokenizer.vocab_size)).eval()
        config = SampleConfig(length=length, num_samples=batch, seed=1, separator="")
        started = time.perf_counter()
        chars = sum(len(chunk) for chunk in generate_text(model, tokenizer, config))
    else:
        from charrnn.store.bundled import BUNDLED_MODELS
        from charrnn.store.checkpoint import load_weights

        text = (REPO / "data" / "tinyshakespeare.txt").read_text(encoding="utf-8")
        names = [line for line in text.splitlines() if line.endswith(":") and line.isupper()]
        loaded = load_weights(BUNDLED_MODELS["shakespeare"])
        config = SampleConfig(stop=("\n\n",), length=length, seed=1, batch_size=batch)
        started = time.perf_counter()
        chars = sum(
            record.chars for record in generate_records(loaded.model, loaded.tokenizer, config, names[:64])
        )
    return chars / (time.perf_counter() - started)


def run_worker(repo: Path, kind: str, batch: int, length: int) -> float:
    # A fresh process per run: nothing cached from the other checkout, and one thread for OpenBLAS
    # too, whichever checkout (an old one does not set it itself).
    command = [sys.executable, __file__, "--worker", str(repo), kind, str(batch), str(length)]
    environment = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    finished = subprocess.run(command, check=True, capture_output=True, text=True, env=environment)
    return float(json.loads(finished.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--baseline", type=Path, help="another checkout of charrnn to compare with")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--length",
        type=int,
        default=20000,
        help="characters of the batch-1 sample (long enough that the set-up, about 20 ms, is under 1%%)",
    )
    parser.add_argument(
        "--worker", nargs=4, metavar=("REPO", "KIND", "BATCH", "LENGTH"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.worker:
        repo, kind, batch, length = args.worker
        print(json.dumps(measure(Path(repo), kind, int(batch), int(length))))
        return

    checkouts = {"this checkout": REPO}
    if args.baseline is not None:
        checkouts = {"baseline": args.baseline.resolve(), **checkouts}
    print(
        f"1 thread, median of {args.repeats} runs (fresh process each, checkouts interleaved); "
        f"load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs"
    )
    names = list(checkouts)
    header = " | ".join(f"{name} chars/s (min-max)" for name in names)
    print(f"\n| figure | {header} |" + (" ratio |" if len(names) == 2 else ""))
    print("|---|" + "---|" * len(names) + ("---|" if len(names) == 2 else ""))
    for figure, (kind, batch) in FIGURES.items():
        length = args.length if batch == 1 else 300 if kind == "stream" else 200
        results: dict[str, list[float]] = {name: [] for name in names}
        for _ in range(args.repeats):
            for name in names:
                results[name].append(run_worker(checkouts[name], kind, batch, length))
        medians = {name: statistics.median(values) for name, values in results.items()}
        cells = " | ".join(
            f"{medians[name]:,.0f} ({min(results[name]):,.0f}-{max(results[name]):,.0f})" for name in names
        )
        ratio = f" {medians[names[1]] / medians[names[0]]:.2f}x |" if len(names) == 2 else ""
        print(f"| {figure} | {cells} |{ratio}", flush=True)
    print(f"\nload average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
