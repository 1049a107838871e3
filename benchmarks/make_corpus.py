"""Write a deterministic synthetic corpus in a script other than English (nothing is downloaded).

    python benchmarks/make_corpus.py cjk /tmp/cjk.txt              # 1,000,000 characters
    python benchmarks/make_corpus.py cjk /tmp/cjk.txt --chars 200000 --distinct 4000

`cjk`: characters of the CJK Unified Ideographs block drawn from a Zipf distribution over
`--distinct` code points (the shape of character frequencies in Chinese text), grouped into
recurring multi-character "words" (so subword pieces have something to learn), with CJK
punctuation and line breaks. `mixed`: the same with Latin words, emoji and digits mixed in,
like chat. Same arguments, same file, on every machine (Python's `random` with a fixed seed).
"""

from __future__ import annotations

import argparse
import itertools
import random
from pathlib import Path

CJK_FIRST = 0x4E00
EMOJI = [chr(c) for c in range(0x1F600, 0x1F650)] + ["\u2764\ufe0f", "\U0001f44d\U0001f3fd"]
LATIN_WORDS = [
    "ok",
    "lol",
    "yes",
    "no",
    "the",
    "and",
    "rust",
    "python",
    "http",
    "www",
    "jpg",
    "2024",
    "gg",
    "brb",
    "thanks",
]
PUNCTUATION = ["\u3002", "\uff0c", "\u3001", "\uff01", "\uff1f"]  # 。，、！？


def synthetic_text(kind: str, num_chars: int, distinct: int = 4000, seed: int = 0) -> str:
    """About `num_chars` characters of a `kind` ("cjk" or "mixed") corpus, the same for the same arguments."""
    rng = random.Random(seed)
    chars = [chr(CJK_FIRST + i) for i in range(distinct)]
    rng.shuffle(chars)  # frequency rank is not code-point order
    char_weights = list(itertools.accumulate(1.0 / (rank + 1) for rank in range(distinct)))
    words = ["".join(rng.choices(chars, cum_weights=char_weights, k=rng.randint(2, 4))) for _ in range(1500)]
    word_weights = list(itertools.accumulate(1.0 / (rank + 1) ** 0.9 for rank in range(len(words))))
    parts: list[str] = []
    written = 0
    while written < num_chars:
        sentence = []
        for _ in range(rng.randint(3, 12)):
            roll = rng.random()
            if kind == "mixed" and roll < 0.15:
                sentence.append(rng.choice(EMOJI) if roll < 0.07 else f" {rng.choice(LATIN_WORDS)} ")
            elif roll < 0.6:
                sentence.append(rng.choices(words, cum_weights=word_weights)[0])
            else:
                sentence.append(rng.choices(chars, cum_weights=char_weights)[0])
        sentence.append(rng.choice(PUNCTUATION))
        if rng.random() < 0.3:
            sentence.append("\n")
        text = "".join(sentence)
        parts.append(text)
        written += len(text)
    return "".join(parts)[:num_chars].rstrip("\n") + "\n"


def main() -> None:
    """Write the corpus named on the command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("kind", choices=["cjk", "mixed"])
    parser.add_argument("path")
    parser.add_argument("--chars", type=int, default=1_000_000)
    parser.add_argument("--distinct", type=int, default=4000, help="distinct CJK code points to draw from")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    Path(args.path).write_text(
        synthetic_text(args.kind, args.chars, args.distinct, args.seed), encoding="utf-8"
    )


if __name__ == "__main__":
    main()
