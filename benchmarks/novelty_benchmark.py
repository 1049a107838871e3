"""How fast `charrnn novelty` builds its index and checks text, and what chance matches look like.

    python benchmarks/novelty_benchmark.py CORPUS [--cache-dir DIR] [--text-chars N]
    python benchmarks/novelty_benchmark.py --held-out CORPUS...   # chance spans of held-out text
    python benchmarks/novelty_benchmark.py --input-memory CORPUS [--input-mb 60]

Prints (the targets of issue 27 in brackets):
- the index build of CORPUS, run in a child process: seconds [< 30 s for 100 MB] and peak
  resident memory per corpus byte [< about 6] (the child's ru_maxrss);
- queries: characters checked per second [>= 100,000] for text that is not in the corpus
  (this package's own source code, which is new, same-kind text for a corpus of Python
  code) and for text stitched from passages of the corpus with new text between them;
  each planted passage must come back whole;
- chance: the longest match and the share of characters in spans of >= 20, 30, 50 and 80
  characters for the new text, 2,000 characters at a time (what --min-span must be above).

--held-out indexes each corpus's training 90% (as a run does) and checks its validation 10%,
2,000 characters at a time: the longest span and the share in spans of >= 20, 30, 50 and 80
characters of text the index has never seen, but of the same kind.

--input-memory: the peak resident memory of `charrnn novelty` (a child process, its
ru_maxrss) for one input of --input-mb MB and for a tiny one, checked whole and with
--each-line (the big input is one line): memory must not grow with the input. CORPUS is
flattened to one line (line ends made spaces) and indexed; the input is passages of it (10 KB
to 2 MB, straddling the 1 MB reads) with new text between, so the check is quick.

The whole corpus is indexed (no validation part is left out). The index goes to a temporary
folder unless --cache-dir is given, and is deleted afterwards.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

BUILD_CHILD = """
import json, resource, sys, time
from pathlib import Path
from charrnn.data.corpus import corpus_files, scan_corpus
from charrnn.data.suffix_index import cached_suffix_index
started = time.perf_counter()
scan = scan_corpus(corpus_files(sys.argv[1]))
scanned = time.perf_counter()
index, reused = cached_suffix_index(scan, None, Path(sys.argv[2]))
done = time.perf_counter()
print(json.dumps({"scan_s": scanned - started, "build_s": done - scanned, "bytes": index.num_bytes,
                  "reused": reused, "maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


def new_text(limit: int) -> str:
    """This package's source code: Python that no corpus of this machine holds."""
    parts = [path.read_text(encoding="utf-8") for path in sorted((REPO / "charrnn").rglob("*.py"))]
    return "".join(parts)[:limit]


def _passage(checker, rng: random.Random, length: int) -> str:
    """About `length` characters of the indexed text from a random line start."""
    start = rng.randrange(max(1, checker.num_bytes - 4 * length))
    window = bytes(checker.text[start : start + 4 * length + 4096])
    window = window[window.find(b"\n") + 1 :]
    return window.decode("utf-8", "ignore")[:length]


def _status(field: str) -> str:
    """A line of /proc/self/status (Linux), e.g. RssAnon."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "?"


def window_figures(checker, text: str) -> tuple[list[int], dict[int, list[float]]]:
    """The longest span of each 2,000-character window, and its share in spans of >= N."""
    longest: list[int] = []
    shares: dict[int, list[float]] = {20: [], 30: [], 50: [], 80: []}
    for start in range(0, len(text) - 2000, 2000):
        window = text[start : start + 2000]
        for minimum in shares:
            report = checker.check(window, minimum)
            shares[minimum].append(report.copied_share)
        longest.append(report.longest.length if report.longest else 0)
    longest.sort()
    return longest, shares


def print_window_figures(label: str, longest: list[int], shares: dict[int, list[float]]) -> None:
    """One line of the longest spans, one of the shares."""
    print(
        f"{label} ({len(longest)} windows of 2,000 chars): longest span median "
        f"{statistics.median(longest)}, 90th percentile {longest[int(0.9 * (len(longest) - 1))]}, "
        f"max {longest[-1]}"
    )
    print(
        "  share in spans >= N (mean over windows): "
        + ", ".join(f"N={minimum}: {statistics.mean(values):.2%}" for minimum, values in shares.items())
    )


def held_out(corpus: str, cache_dir: str | None) -> None:
    """Index the training 90% of `corpus` and check its validation 10%."""
    from charrnn.data.corpus import corpus_files, read_corpus_text, scan_corpus
    from charrnn.data.suffix_index import cached_suffix_index
    from charrnn.inspect.novelty import NoveltyChecker

    with tempfile.TemporaryDirectory(prefix="novelty-held-out-") as temp:
        files = corpus_files(corpus)
        index, _ = cached_suffix_index(scan_corpus(files), 0.1, Path(cache_dir or temp))
        checker = NoveltyChecker(index)
        validation = read_corpus_text(files)[index.train_chars :]
        print_window_figures(
            f"{corpus}: held-out {len(validation):,} chars", *window_figures(checker, validation)
        )


MEASURE_CHILD = """
import resource, subprocess, sys
done = subprocess.run([sys.executable, "-m", "charrnn", *sys.argv[1:]])
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr)
sys.exit(done.returncode)
"""


def _child_run(args: list[str]) -> tuple[float, int, str]:
    """(seconds, peak RSS in KiB, stdout) of `charrnn ARGS`, the only child of a process of its own
    (so that RUSAGE_CHILDREN is that command's alone)."""
    started = time.perf_counter()
    child = subprocess.run(
        [sys.executable, "-c", MEASURE_CHILD, *args], capture_output=True, text=True, check=False
    )
    seconds = time.perf_counter() - started
    if child.returncode:
        raise SystemExit(f"charrnn {' '.join(args)} failed: {child.stderr}")
    return seconds, int(child.stderr.strip().splitlines()[-1]), child.stdout


def input_memory(corpus: str, input_mb: int) -> None:
    """Peak RSS of `charrnn novelty` for a big input and a tiny one, whole and --each-line."""
    with tempfile.TemporaryDirectory(prefix="novelty-input-") as temp:
        folder = Path(temp)
        flat = folder / "flat.txt"
        flat.write_text(Path(corpus).read_text(encoding="utf-8").replace("\n", " "), encoding="utf-8")
        text = flat.read_text(encoding="utf-8")
        fresh = new_text(100_000).replace("\n", " ")
        rng = random.Random(0)
        big, tiny = folder / "big.txt", folder / "tiny.txt"
        written = passages = 0
        with big.open("w", encoding="utf-8") as out:
            while written < input_mb * 1_000_000:
                length = rng.randint(10_000, 2_000_000)
                start = rng.randrange(max(1, len(text) - length))
                gap = fresh[rng.randrange(len(fresh) - 500) :][:200]
                out.write(gap + text[start : start + length])
                written += len(gap) + min(length, len(text) - start)
                passages += 1
        tiny.write_text(fresh[:2000], encoding="utf-8")
        cache = ["--cache-dir", str(folder / "cache"), "--corpus", str(flat)]
        _child_run(["novelty", *cache, str(tiny)])  # builds the index
        print(f"input: {big.stat().st_size:,} bytes on one line ({passages} passages with new text between)")
        for mode in ([], ["--each-line"]):
            for name in (tiny, big):
                seconds, peak_kib, stdout = _child_run(["novelty", *cache, *mode, "--json", str(name)])
                answer = json.loads(stdout.splitlines()[0] if mode else stdout)
                report = answer if mode else answer["inputs"][0]
                label = " ".join(mode) or "(whole input)"
                print(
                    f"novelty {label} {name.name}: peak RSS {peak_kib / 1024:.0f} MiB, {seconds:.1f} s, "
                    f"{report['chars']:,} chars, longest span {report['longest']['length']:,}, "
                    f"{report['copied_share']:.1%} copied"
                )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("corpus", nargs="+")
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--text-chars", type=int, default=300_000)
    parser.add_argument(
        "--held-out", action="store_true", help="Chance spans of each corpus's validation part."
    )
    parser.add_argument("--input-memory", action="store_true", help="Peak RSS for a big input.")
    parser.add_argument("--input-mb", type=int, default=60)
    args = parser.parse_args()
    if args.input_memory:
        input_memory(args.corpus[0], args.input_mb)
        return
    if args.held_out:
        for corpus in args.corpus:
            held_out(corpus, args.cache_dir)
        return
    args.corpus = args.corpus[0]
    with tempfile.TemporaryDirectory(prefix="novelty-bench-") as temp:
        cache = Path(args.cache_dir or temp)
        child = subprocess.run(
            [sys.executable, "-c", BUILD_CHILD, args.corpus, str(cache)],
            capture_output=True,
            text=True,
            check=True,
        )
        build = json.loads(child.stdout)
        print(
            f"index: {build['bytes']:,} bytes, scan {build['scan_s']:.1f} s, build {build['build_s']:.1f} s"
            f"{' (reused)' if build['reused'] else ''}, peak RSS {build['maxrss_kb'] / 1024:.0f} MiB "
            f"= {build['maxrss_kb'] * 1024 / build['bytes']:.2f} bytes per corpus byte"
        )

        from charrnn.data.corpus import corpus_files, scan_corpus
        from charrnn.data.suffix_index import cached_suffix_index
        from charrnn.inspect.novelty import NoveltyChecker

        index, _ = cached_suffix_index(scan_corpus(corpus_files(args.corpus)), None, cache)
        checker = NoveltyChecker(index)
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

        fresh = new_text(args.text_chars)
        runs = []
        for _ in range(3):  # the machine is shared: the median of three
            started = time.perf_counter()
            report = checker.check(fresh, 50)
            runs.append(time.perf_counter() - started)
        seconds = statistics.median(runs)
        print(
            f"new text: {len(fresh):,} chars in {seconds:.2f} s (median of 3; first, with the index's "
            f"pages not yet mapped, {runs[0]:.2f} s) = {len(fresh) / seconds:,.0f} chars/s; "
            f"longest {report.longest.length if report.longest else 0} chars, "
            f"{report.copied_share:.2%} in spans >= 50"
        )

        rng = random.Random(0)
        pieces, planted, total = [], [], 0
        while total < args.text_chars:
            length = rng.randint(200, 3000)
            passage = _passage(checker, rng, length)
            gap = fresh[rng.randrange(len(fresh) - 400) :][:300]
            pieces.append(gap)
            total += len(gap)
            planted.append((total, len(passage)))
            pieces.append(passage)
            total += len(passage)
        stitched = "".join(pieces)
        runs = []
        for _ in range(3):
            started = time.perf_counter()
            report = checker.check(stitched, 50)
            runs.append(time.perf_counter() - started)
        seconds = statistics.median(runs)
        covered = {(span.start, span.length) for span in report.spans}
        whole = sum(any(s <= at and s + n >= at + length for s, n in covered) for at, length in planted)
        print(
            f"copied text: {len(stitched):,} chars ({len(planted)} passages of 200-3,000 chars) in "
            f"{seconds:.2f} s (median of 3) = {len(stitched) / seconds:,.0f} chars/s; "
            f"{whole}/{len(planted)} passages found whole; {report.copied_share:.1%} in spans >= 50"
        )
        rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(
            f"query process: peak RSS {rss_after / 1024:.0f} MiB "
            f"(before the queries {rss_before / 1024:.0f} MiB); "
            f"now {_status('RssAnon')} of its own memory and {_status('RssFile')} of mapped index pages "
            "(page cache, shared)"
        )

        print_window_figures("chance (new text)", *window_figures(checker, fresh))


if __name__ == "__main__":
    main()
