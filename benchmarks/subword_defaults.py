"""Choose the default subword vocabulary: bits/char after a fixed number of training steps.

For each corpus, tokeniser kind, vocabulary size and character share (the share of the
learnable pieces that may be single characters; rarer characters fall back to bytes), train a
fresh `charrnn train` process for `--steps` steps (a step budget, so the result does not depend
on the machine's load) and report the validation bits per character of its last evaluation
(the whole validation split) as a Markdown table on stdout:

    python benchmarks/subword_defaults.py                                  # English + generated CJK
    python benchmarks/subword_defaults.py --vocab-sizes 1024,4096 --shares 0.5 --steps 100

The CJK-style corpus comes from benchmarks/make_corpus.py (generated, nothing is downloaded).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.make_corpus import synthetic_text  # noqa: E402

# Runs the CLI with the character share set (it is a module constant, not an option).
LAUNCHER = (
    "import sys, charrnn.data.subword as pieces; pieces.CHARACTER_SHARE = float(sys.argv.pop(1)); "
    "from charrnn.cli import main; main()"
)


def parse_args() -> argparse.Namespace:
    """Command-line options of the measurement."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--corpora", default="english,cjk", help="english (data/tinyshakespeare.txt), cjk, mixed"
    )
    # char and byte take one run each (their vocabulary is fixed), as a reference
    parser.add_argument("--kinds", default="bpe", help="comma-separated: char, byte, bpe, unigram")
    parser.add_argument("--vocab-sizes", default="512,1024,2048,4096,8192")
    parser.add_argument("--shares", default="0.5")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--hidden-size", type=int, default=256)
    parser.add_argument("--num-layers", type=int, default=1)
    parser.add_argument("--out", default=None, help="keep the runs here (default: a temporary folder)")
    return parser.parse_args()


def corpus_path(name: str, folder: Path) -> Path:
    """The file of a named corpus (generated ones are written into `folder`)."""
    if name == "english":
        return REPO / "data" / "tinyshakespeare.txt"
    path = folder / f"{name}.txt"
    path.write_text(synthetic_text(name, 1_000_000), encoding="utf-8")
    return path


def run(corpus: Path, kind: str, vocab_size: int, share: float, args: argparse.Namespace, out: Path) -> dict:
    """Train one configuration and return its row."""
    sizing = ["--vocab-size", str(vocab_size)] if kind in ("bpe", "unigram") else []
    command = [
        sys.executable,
        "-c",
        LAUNCHER,
        str(share),
        "train",
        str(corpus),
        "--tokenizer",
        kind,
        *sizing,
        "--max-steps",
        str(args.steps),
        "--eval-every",
        str(args.steps),
        "--eval-tokens",
        "0",
        "--hidden-size",
        str(args.hidden_size),
        "--num-layers",
        str(args.num_layers),
        "--threads",
        "1",
        "--out",
        str(out),
        "--cache-dir",
        str(out.parent / "cache"),
        # The README's figures were measured at batch 32, the default of the time.
        "--batch-size",
        "32",
    ]
    log = out.parent / f"{out.name}.log"
    with open(log, "w", encoding="utf-8") as handle:
        finished = subprocess.run(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=handle)
    if finished.returncode != 0:
        return {"error": log.read_text().strip().splitlines()[-1]}
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line]
    last = records[-1]
    return {"val_bpc": last["val_bpc"], "val_loss": last["val_loss"], "steps": last["step"]}


def main() -> None:
    """Run every configuration, print the table."""
    args = parse_args()
    with tempfile.TemporaryDirectory(prefix="charrnn-subword-") as temporary:
        root = Path(args.out) if args.out else Path(temporary)
        root.mkdir(parents=True, exist_ok=True)
        print("| corpus | kind | vocab | character share | val bits/char |")
        print("|---|---|---:|---:|---:|")
        for name in args.corpora.split(","):
            corpus = corpus_path(name, root)
            for kind in args.kinds.split(","):
                # char and byte have one vocabulary (the corpus's characters, the 256 bytes): one run.
                sizes = list(map(int, args.vocab_sizes.split(","))) if kind in ("bpe", "unigram") else [0]
                shares = list(map(float, args.shares.split(","))) if kind in ("bpe", "unigram") else [0.5]
                for vocab_size in sizes:
                    for share in shares:
                        label = f"{name}-{kind}-{vocab_size}-{share}"
                        print(f"training {label} ...", file=sys.stderr, flush=True)
                        row = run(corpus, kind, vocab_size, share, args, root / label)
                        figure = f"**{row['val_bpc']:.3f}**" if "val_bpc" in row else row["error"]
                        shown = (
                            (vocab_size, share)
                            if vocab_size
                            else ("(corpus)" if kind == "char" else 256, "-")
                        )
                        print(f"| {name} | {kind} | {shown[0]} | {shown[1]} | {figure} |", flush=True)
    print(
        f"\nProduced by: python benchmarks/subword_defaults.py --corpora {args.corpora} --kinds {args.kinds} "
        f"--vocab-sizes {args.vocab_sizes} --shares {args.shares} --steps {args.steps} "
        f"--hidden-size {args.hidden_size} --num-layers {args.num_layers}"
    )


if __name__ == "__main__":
    main()
