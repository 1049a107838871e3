"""Fine-tuning against training from scratch, with the same wall-clock budget.

    .venv/bin/python benchmarks/finetune.py [--budget 2m] [--parent shakespeare]     # 3 runs of --budget

The second corpus is made here, from nothing but the bundled one: the last 10% of
data/tinyshakespeare.txt (the text the bundled model was validated on, never trained on)
set in a modern edition's type: curly apostrophes, em dashes, and accented Italian
names. So it holds characters Shakespeare's corpus lacks (’ — é í á ú ...), which the
parent's vocabulary must grow by. Both runs train the parent's shape on it for the same
budget; the script prints the validation bits/char of both over time (the latest and the
best so far: best.safetensors is what a run keeps) and when fine-tuning reaches the
from-scratch run's best figure. A corpus this small (100,000 training characters) is
overfitted within a minute by either run: the best figure, not the last, is the one to read.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from charrnn.config import parse_duration  # noqa: E402

ACCENTED_NAMES = {
    "Katharina": "Katharína",
    "Baptista": "Baptísta",
    "Gremio": "Grémio",
    "Tranio": "Tránio",
    "Petruchio": "Petrúchio",
    "Lucentio": "Lucéntio",
    "Hortensio": "Horténsio",
    "Biondello": "Biondéllo",
    "Grumio": "Grúmio",
    "Gonzalo": "Gonzálo",
    "Prospero": "Próspero",
    "Miranda": "Miránda",
    "Sebastian": "Sebastián",
    "Antonio": "António",
    "Bianca": "Biánca",
}


def modern_edition(text: str) -> str:
    """The text with typographic punctuation and accented names (new characters for the parent)."""
    text = text.replace("--", "—").replace("'", "’")
    for plain, accented in ACCENTED_NAMES.items():
        text = text.replace(plain, accented).replace(plain.upper(), accented.upper())
    return text


def second_corpus(folder: Path) -> Path:
    """Write the second corpus into `folder` and return its path."""
    source = (REPO / "data" / "tinyshakespeare.txt").read_text(encoding="utf-8")
    tail = source[int(len(source) * 0.9) :]
    path = folder / "modern-edition.txt"
    path.write_text(modern_edition(tail), encoding="utf-8")
    return path


def train(corpus: Path, out: Path, budget: str, extra: list[str], threads: int | None = None) -> list[dict]:
    """Run `charrnn train` and return its metrics records."""
    command = [
        sys.executable,
        "-m",
        "charrnn",
        "train",
        str(corpus),
        "--out",
        str(out),
        "--max-time",
        budget,
        "--eval-every",
        "10",
        *extra,
        *(["--threads", str(threads)] if threads else []),
    ]
    print("$", " ".join(command[2:]), file=sys.stderr, flush=True)
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO)
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]


def first_time_at_or_below(records: list[dict], target: float) -> float | None:
    """Seconds of training until the validation bits/char first reached `target`."""
    for record in records:
        if record["val_bpc"] is not None and record["val_bpc"] <= target:
            return record["elapsed"]
    return None


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--budget", default="2m", help="wall-clock budget of each run (default 2m)")
    parser.add_argument(
        "--parent", default="shakespeare", help="MODEL to fine-tune (default: the bundled model)"
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads of each run (default: charrnn's)"
    )
    args = parser.parse_args()
    parse_duration(args.budget)

    from charrnn.store.checkpoint import load_weights
    from charrnn.store.run_dir import resolve_weights

    parent = load_weights(resolve_weights(args.parent))
    shape = parent.model_config
    shape_options = [
        "--model",
        shape.model,
        "--num-layers",
        str(shape.num_layers),
        "--hidden-size",
        str(shape.hidden_size),
        "--embedding-size",
        str(shape.embedding_size),
    ]
    with tempfile.TemporaryDirectory() as folder_name:
        folder = Path(folder_name)
        corpus = second_corpus(folder)
        new_chars = sorted(set(corpus.read_text(encoding="utf-8")) - set(parent.tokenizer.chars))
        print(
            f"second corpus: {corpus.stat().st_size:,} bytes, {len(new_chars)} characters the parent "
            f"lacks: {''.join(new_chars)}",
            flush=True,
        )
        scratch = train(corpus, folder / "scratch", args.budget, shape_options, args.threads)
        tuned = train(corpus, folder / "tuned", args.budget, ["--init-from", args.parent], args.threads)
        # The fine-tuning defaults (--lr 0.002, 20 warm-up steps) against a fresh run's (0.005, 50).
        full_rate = train(
            corpus,
            folder / "tuned-full-rate",
            args.budget,
            ["--init-from", args.parent, "--lr", "0.005", "--warmup-steps", "50"],
            args.threads,
        )

    print(
        f"\nvalidation bits/char by training time ({os.cpu_count()} CPUs, "
        f"threads: {args.threads or 'default'}, budget {args.budget} each; latest / best so far)"
    )
    print(f"{'seconds':>8}  {'from scratch':>15}  {'fine-tuned':>15}  {'fine-tuned, lr 0.005':>20}")
    marks = sorted({round(r["elapsed"]) for r in scratch + tuned + full_rate})
    step = max(1, len(marks) // 10)

    def at(records: list[dict], mark: int) -> str:
        done = [r["val_bpc"] for r in records if r["elapsed"] <= mark + 0.5 and r["val_bpc"] is not None]
        return f"{done[-1]:.3f} / {min(done):.3f}" if done else "-"

    for mark in marks[::step] + [marks[-1]]:
        print(f"{mark:>8}  {at(scratch, mark):>15}  {at(tuned, mark):>15}  {at(full_rate, mark):>20}")
    best_scratch = min(scratch, key=lambda r: r["val_bpc"])
    best_tuned = min(tuned, key=lambda r: r["val_bpc"])
    reached = first_time_at_or_below(tuned, best_scratch["val_bpc"])
    print(
        f"\nfrom scratch: best {best_scratch['val_bpc']:.3f} bits/char, after {best_scratch['elapsed']:.0f} s"
    )
    print(
        f"fine-tuned: best {best_tuned['val_bpc']:.3f} bits/char, after {best_tuned['elapsed']:.0f} s; "
        f"at or below the from-scratch best after {'never' if reached is None else f'{reached:.0f} s'}"
    )
    best_full = min(full_rate, key=lambda r: r["val_bpc"])
    print(
        f"fine-tuned at --lr 0.005 --warmup-steps 50: best {best_full['val_bpc']:.3f} bits/char, "
        f"after {best_full['elapsed']:.0f} s"
    )


if __name__ == "__main__":
    main()
