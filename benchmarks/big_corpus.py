"""Big-corpus benchmark: encoding throughput and peak memory of a short training run, per corpus size.

    python benchmarks/big_corpus.py                   # 10 MB, 100 MB and 1 GB
    python benchmarks/big_corpus.py --sizes 10,100    # in MB

For each size it builds a corpus on the fly in a temporary folder (copies of
data/tinyshakespeare.txt with their paragraphs shuffled differently each time,
so it is not one text repeated), then, each in a fresh child process:

1. encodes it (`scan_corpus` + `prepare_streamed_corpus` into an empty cache)
   and reports read and encode throughput in MB/s;
2. runs `charrnn train` for a few steps with a fixed small model on the cached
   tokens (the last 1 MB held out for validation whatever the size) and reports
   the peak resident memory of that process: VmHWM, and its anonymous part
   (without the token file's pages, which are page cache).

It prints a Markdown table (stdout) and deletes the corpora afterwards.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SOURCE = REPO / "data" / "tinyshakespeare.txt"
VAL_MEGABYTES = 1  # the same validation split for every size, so evaluation costs the same
TRAIN_ARGS = [
    "--max-steps",
    "20",
    "--eval-every",
    "20",
    "--hidden-size",
    "128",
    "--embedding-size",
    "32",
    "--num-layers",
    "1",
    "--batch-size",
    "32",
    "--seq-len",
    "128",
    "--threads",
    "1",
    "--dropout",
    "0",
]


def build_corpus(path: Path, megabytes: int) -> None:
    """Write about `megabytes` MB of shuffled-paragraph copies of the bundled corpus."""
    paragraphs = SOURCE.read_text(encoding="utf-8").split("\n\n")
    target = megabytes * 1_000_000
    written, copy = 0, 0
    with open(path, "w", encoding="utf-8") as out:
        while written < target:
            order = paragraphs[:]
            random.Random(copy).shuffle(order)
            text = "\n\n".join(order) + "\n\n"
            out.write(text[: target - written])
            written += min(len(text), target - written)
            copy += 1


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


class MemorySampler:
    """Peak resident memory of this process: VmHWM (all of it), and anonymous memory sampled every 20 ms.

    VmHWM also counts pages of the memory-mapped token file, which are page cache
    (clean, shared, dropped under pressure); RssAnon is the process's own memory.
    """

    def __init__(self) -> None:
        import threading

        self.peak_anonymous = _status_mb("RssAnon")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak_anonymous = max(self.peak_anonymous, _status_mb("RssAnon"))

    def finish(self) -> dict:
        self._stop.set()
        self._thread.join()
        self.peak_anonymous = max(self.peak_anonymous, _status_mb("RssAnon"))
        return {"peak_rss_mb": _status_mb("VmHWM"), "peak_anonymous_mb": self.peak_anonymous}


# -- the child processes ------------------------------------------------------------------


def val_fraction(megabytes: int) -> str:
    return repr(min(0.5, VAL_MEGABYTES / megabytes))


def child_encode(corpus: str, cache: str, fraction: str) -> None:
    from charrnn.data.token_cache import corpus_files, prepare_streamed_corpus, scan_corpus

    sampler = MemorySampler()
    started = time.perf_counter()
    scan = scan_corpus(corpus_files(corpus))
    scanned = time.perf_counter()
    prepared = prepare_streamed_corpus(scan, "char", float(fraction), cache_dir=Path(cache))
    encoded = time.perf_counter()
    print(
        json.dumps(
            {
                "megabytes": scan.num_bytes / 1e6,
                "read_seconds": scanned - started,
                "encode_seconds": encoded - scanned,
                "tokens": len(prepared.train_tokens) + len(prepared.val_tokens),
                **sampler.finish(),
            }
        )
    )


def child_train(corpus: str, cache: str, fraction: str, out: str) -> None:
    from charrnn.cli import cli

    sampler = MemorySampler()
    started = time.perf_counter()
    arguments = ["train", corpus, "--out", out, "--cache-dir", cache, "--val-fraction", fraction, *TRAIN_ARGS]
    # charrnn train writes nothing to stdout, but be sure: the parent reads this child's last line.
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
        try:
            cli.main(arguments, standalone_mode=False)
        except SystemExit as exit_:
            if exit_.code not in (0, None):
                raise
    print(json.dumps({"train_seconds": time.perf_counter() - started, **sampler.finish()}))


def run_child(*args: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise SystemExit(f"child {args[0]} failed:\n{result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="10,100,1000", help="corpus sizes in MB, comma-separated")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        {"encode": child_encode, "train": child_train}[args.child[0]](*args.child[1:])
        return
    sizes = [int(size) for size in args.sizes.split(",")]
    rows = []
    folder = Path(tempfile.mkdtemp(prefix="charrnn-big-corpus-"))
    try:
        for megabytes in sizes:
            corpus = folder / f"corpus-{megabytes}mb.txt"
            cache = folder / f"cache-{megabytes}"
            build_corpus(corpus, megabytes)
            fraction = val_fraction(megabytes)
            encoding = run_child("--child", "encode", str(corpus), str(cache), fraction)
            training = run_child(
                "--child", "train", str(corpus), str(cache), fraction, str(folder / f"run-{megabytes}")
            )
            rows.append((megabytes, encoding, training))
            print(f"{megabytes} MB done", file=sys.stderr)
            corpus.unlink()
            shutil.rmtree(cache)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    import torch

    print(
        f"`python benchmarks/big_corpus.py --sizes {args.sizes}` "
        f"on {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, torch {torch.__version__}, 1 thread; "
        f"training: {' '.join(TRAIN_ARGS)}, the last {VAL_MEGABYTES} MB held out\n"
    )
    print(
        "| corpus | read + hash + vocabulary | encode to token file | encoding: peak RSS | "
        "20 training steps: peak RSS | of which anonymous (not page cache) |"
    )
    print("|---:|---:|---:|---:|---:|---:|")
    for megabytes, encoding, training in rows:
        size = encoding["megabytes"]
        print(
            f"| {megabytes:,} MB | {size / encoding['read_seconds']:,.0f} MB/s | "
            f"{size / encoding['encode_seconds']:,.0f} MB/s | {encoding['peak_rss_mb']:,.0f} MB | "
            f"{training['peak_rss_mb']:,.0f} MB | {training['peak_anonymous_mb']:,.0f} MB |"
        )


if __name__ == "__main__":
    main()
