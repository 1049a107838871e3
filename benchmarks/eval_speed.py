"""Speed of `charrnn eval` and `charrnn score` for the default model size (random weights).

Prints characters per second of evaluation (the model part, as training's validation, and
end to end with reading and encoding) and lines per second of scoring for short and long
lines, batched (as `charrnn score` runs) and one line at a time.

    python benchmarks/eval_speed.py [--threads N] [--chars 200000] [--lines 4000]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from charrnn.config import ModelConfig
from charrnn.data.tokenizers import CharTokenizer
from charrnn.hardware import configure_threads, physical_cores
from charrnn.inspect import scoring
from charrnn.inspect.eval_text import evaluate_chunks, text_chunks
from charrnn.inspect.scoring import LineScorer
from charrnn.model import CharRNN

CORPUS = Path(__file__).resolve().parent.parent / "data" / "tinyshakespeare.txt"


def lines_per_second(scorer: LineScorer, lines: list[str]) -> float:
    started = time.perf_counter()
    for _ in scorer.score(lines):
        pass
    return len(lines) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=physical_cores())
    parser.add_argument("--chars", type=int, default=200_000, help="characters evaluated")
    parser.add_argument("--lines", type=int, default=4000, help="short lines scored (a tenth as many long)")
    args = parser.parse_args()
    threads = configure_threads(args.threads)
    text = CORPUS.read_text(encoding="utf-8")
    tokenizer = CharTokenizer.fit(text)
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(vocab_size=tokenizer.vocab_size)).eval()  # the default 2 x 384 LSTM
    device = torch.device("cpu")
    print(f"default model (2 x 384 LSTM, random weights), CPU, {threads} threads, torch {torch.__version__}")

    sample = text[: args.chars]
    evaluate_chunks(model, tokenizer, text_chunks(sample[:20_000]), device)  # warm-up
    started = time.perf_counter()
    result = evaluate_chunks(model, tokenizer, text_chunks(sample), device)
    end_to_end = time.perf_counter() - started
    print(
        f"eval: {result.chars_per_second:,.0f} chars/s (model), "
        f"{result.chars / end_to_end:,.0f} chars/s end to end, {result.chars:,} chars"
    )

    lines = [line for line in text.splitlines()]
    short = [line for line in lines if 0 < len(line) <= 20][: args.lines]
    long = [(line + " ") * 5 for line in lines if len(line) >= 40][: max(10, args.lines // 10)]
    scorer = LineScorer(model, tokenizer, device)
    for name, chosen in (("short lines (<= 20 chars)", short), ("long lines (~240 chars)", long)):
        batched = lines_per_second(scorer, chosen)
        rows, block = scoring.MAX_BATCH_ROWS, scoring.BLOCK_LINES
        scoring.MAX_BATCH_ROWS = scoring.BLOCK_LINES = 1
        try:
            single = lines_per_second(scorer, chosen[: len(chosen) // 10])
        finally:
            scoring.MAX_BATCH_ROWS, scoring.BLOCK_LINES = rows, block
        mean = sum(len(line) + 1 for line in chosen) / len(chosen)
        print(
            f"score, {name}: batched {batched:,.0f} lines/s ({batched * mean:,.0f} chars/s), "
            f"one at a time {single:,.0f} lines/s ({single * mean:,.0f} chars/s)"
        )


if __name__ == "__main__":
    main()
