"""A corpus in memory: the small API over the streaming pipeline, for tests, benchmarks and scripts.

The corpus pipeline (reading, the split, encoding) is `corpus` and `encoding`; training
goes through `token_cache`, which streams any size. `read_corpus` and `prepare_corpus`
run that same pipeline on a text held in memory.
"""

from __future__ import annotations

import hashlib
import sys
from dataclasses import dataclass

import numpy as np

from charrnn.data.corpus import (
    CorpusBytes,
    CorpusFiles,
    CorpusScan,
    corpus_files,
    read_corpus_text,
    scan_corpus,
)
from charrnn.data.encoding import PreparedCorpus, encode_corpus, prepare_tokens
from charrnn.data.tokenizers import Tokenizer, token_dtype

__all__ = ["Corpus", "read_corpus", "prepare_corpus", "token_counts"]


@dataclass
class Corpus:
    """The raw text of a corpus and where it came from."""

    text: str
    name: str  # a short name for the default run directory
    source: str  # the path as given, or "-" for stdin

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the text: resuming checks the corpus did not change."""
        return hashlib.sha256(self.text.encode("utf-8", "surrogatepass")).hexdigest()


def read_corpus(source: str) -> Corpus:
    """Read a UTF-8 file, every `*.txt` in a directory (sorted, concatenated), or stdin (`-`).

    The same files, checks and byte-order-mark rule as `charrnn train` (`corpus.iter_corpus_chunks`).
    """
    files: CorpusFiles | CorpusBytes
    if source == "-":
        files = CorpusBytes(sys.stdin.buffer.read(), name="stdin", source="-")
    else:
        files = corpus_files(source)
    return Corpus(text=read_corpus_text(files), name=files.name, source=source)


def _ids_in_memory(scan: CorpusScan, tokenizer: Tokenizer) -> np.ndarray:
    chunks = list(encode_corpus(scan, tokenizer))
    if not chunks:
        return np.zeros(0, dtype=token_dtype(tokenizer.vocab_size))
    return np.concatenate(chunks)


def prepare_corpus(
    corpus: Corpus,
    tokenizer_kind: str,
    val_fraction: float,
    vocab_size: int | None = None,
    tokenizer: Tokenizer | None = None,
) -> PreparedCorpus:
    """Split the text (validation = last `val_fraction`), fit or reuse a tokeniser, encode: in memory.

    The text goes through the pipeline `charrnn train` uses (`corpus_encoding.prepare_tokens`),
    read as a file holding it would be (a leading byte-order mark is dropped); only the ids stay in
    an array instead of the token cache.
    """
    data = corpus.text.encode("utf-8", "surrogatepass")  # a lone surrogate: a clear UTF-8 error
    scan = scan_corpus(CorpusBytes(data, name=corpus.name, source=corpus.source))
    return prepare_tokens(scan, tokenizer_kind, val_fraction, _ids_in_memory, vocab_size, tokenizer)


PRIOR_SAMPLE_TOKENS = 1 << 24


def token_counts(tokens: np.ndarray, vocab_size: int, limit: int = PRIOR_SAMPLE_TOKENS) -> np.ndarray:
    """How often each id occurs in the first `limit` tokens (enough for a prior; bounded memory)."""
    return np.bincount(np.asarray(tokens[:limit], dtype=np.int64), minlength=vocab_size)[:vocab_size]
