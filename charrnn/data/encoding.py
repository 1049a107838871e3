"""From a scanned corpus to token ids and the train/validation split (pass 2 and after).

One implementation for every corpus, whatever stores the ids: the token cache
writes the chunks of `encode_corpus` to a memory-mapped file
(`token_cache.prepare_streamed_corpus`), the small in-memory API joins them into
an array (`data.prepare_corpus`); both then go through `prepare_tokens`, so the
tokeniser fitting, the split rule and the validation checks are the same.

The encoding pass reads the corpus a second time and hashes what it reads: a
file that changed since the scan (a growing log, an editor saving) stops with
one `CorpusError` instead of ids that no longer match the scanned vocabulary.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from charrnn.data.corpus import CorpusScan, describe_source, iter_corpus_chunks
from charrnn.data.tokenizers import CharTokenizer, Tokenizer, fit_tokenizer, token_dtype
from charrnn.errors import CorpusError

SUBWORD_SAMPLE_CHARS = 16_000_000  # training text handed to a subword tokeniser's trainer
COUNT_CHUNK_TOKENS = 4 << 20


# -- the tokeniser -----------------------------------------------------------------------------


def split_char_index(num_chars: int, val_fraction: float) -> int:
    """Characters in the training part: the validation part is the last `val_fraction` of the text."""
    return int(num_chars * (1.0 - val_fraction))


def _training_sample(scan: CorpusScan, train_chars: int, limit: int) -> str:
    """Up to `limit` characters from the start of the training part (bounded memory)."""
    parts, kept = [], 0
    wanted = min(train_chars, limit)
    for text, _ in iter_corpus_chunks(scan.corpus):
        parts.append(text[: wanted - kept])
        kept += len(parts[-1])
        if kept >= wanted:
            break
    return "".join(parts)


def fit_corpus_tokenizer(
    scan: CorpusScan, kind: str, val_fraction: float, vocab_size: int | None = None
) -> Tokenizer:
    """The tokeniser for a scanned corpus, without holding the corpus in memory.

    char: the scanned vocabulary (the whole corpus, so validation meets no unknown
    character). Other kinds go through `fit_tokenizer` with a bounded sample of the
    training part (the byte tokeniser ignores it; subword trainers need some text,
    not all of it, and never the validation part).
    """
    if kind == "char":
        return CharTokenizer(scan.chars)
    if kind == "byte":
        return fit_tokenizer(kind, "", "", vocab_size)  # fixed 256 ids: nothing to learn
    train_chars = split_char_index(scan.num_chars, val_fraction)
    sample = _training_sample(scan, train_chars, SUBWORD_SAMPLE_CHARS)
    return fit_tokenizer(kind, sample, sample, vocab_size)


# -- pass 2: the ids ---------------------------------------------------------------------------


def _changed(scan: CorpusScan) -> CorpusError:
    return CorpusError(
        f"the corpus {describe_source(scan.corpus.source)} changed while it was being read "
        "(is it still being written?): nothing was cached; train again once it no longer changes"
    )


def _verified_chunks(scan: CorpusScan, on_bytes: Callable[[int], None]) -> Iterator[tuple[str, bytes]]:
    """The corpus's chunks again, checked against the scan: same length, same sha256."""
    digest = hashlib.sha256()
    num_bytes = 0
    for text, raw in iter_corpus_chunks(scan.corpus, on_bytes=on_bytes):
        num_bytes += len(raw)
        if num_bytes > scan.num_bytes:
            raise _changed(scan)  # grown: stop now rather than read a growing log forever
        digest.update(raw)
        yield text, raw
    if num_bytes != scan.num_bytes or digest.hexdigest() != scan.fingerprint:
        raise _changed(scan)


def cut_at_lines(chunks: Iterable[str]) -> Iterator[str]:
    """The same text, re-cut so every piece but the last ends at a line end (a chunk holding no
    line end is passed on whole): subword encoders then see a line whole where possible, as
    they would in memory (training's token file and `charrnn eval` alike)."""
    carry = ""
    for text in chunks:
        text = carry + text
        cut = text.rfind("\n") + 1
        carry, text = (text[cut:], text[:cut]) if cut else ("", text)
        if text:
            yield text
    if carry:
        yield carry


def _char_ids(
    tokenizer: CharTokenizer, chunks: Iterator[tuple[str, bytes]], dtype: np.dtype
) -> Iterator[np.ndarray]:
    """`tokenizer.encode` of each chunk through a code point -> id table (several times faster).

    Every character is in the vocabulary when the corpus is the scanned one. A character
    the scan did not see (the corpus changed) must not index past the table: `mode="clip"`
    gives it some id, and `_verified_chunks` rejects the pass before anything is kept.
    """
    code_points = np.array([ord(c) for c in tokenizer.chars], dtype=np.int64)
    table = np.zeros(int(code_points.max()) + 1, dtype=dtype)
    table[code_points] = np.arange(len(code_points), dtype=dtype)
    ascii_table = np.zeros(128, dtype=dtype)
    ascii_table[: min(128, len(table))] = table[:128]
    for text, raw in chunks:
        if text.isascii():
            yield ascii_table[np.frombuffer(raw, dtype=np.uint8)]
        else:
            code = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
            yield np.take(table, code, mode="clip")


def encode_corpus(
    scan: CorpusScan, tokenizer: Tokenizer, on_bytes: Callable[[int], None] = lambda count: None
) -> Iterator[np.ndarray]:
    """The token ids of the scanned corpus, a chunk at a time (dtype: `token_dtype` of the vocabulary).

    Raises `CorpusError` (possibly after the last chunk: keep nothing until the
    iterator is exhausted) when the corpus differs from what `scan` saw.
    """
    dtype = token_dtype(tokenizer.vocab_size)
    chunks = _verified_chunks(scan, on_bytes)
    if isinstance(tokenizer, CharTokenizer):
        yield from _char_ids(tokenizer, chunks, dtype)
        return
    texts: Iterator[str] = (text for text, _ in chunks)
    if tokenizer.kind != "byte":
        texts = cut_at_lines(texts)
    for text in texts:
        yield np.asarray(tokenizer.encode(text)).astype(dtype, copy=False)


# -- the split and the prepared corpus -------------------------------------------------------


def count_chars(tokenizer: Tokenizer, tokens: np.ndarray) -> int:
    """Characters behind `tokens`, counted a chunk at a time (bounded memory)."""
    if tokenizer.kind == "char":
        return len(tokens)
    return sum(
        int(tokenizer.char_counts(np.asarray(tokens[start : start + COUNT_CHUNK_TOKENS])).sum())
        for start in range(0, len(tokens), COUNT_CHUNK_TOKENS)
    )


def token_index_at_char(tokenizer: Tokenizer, tokens: np.ndarray, char_index: int) -> int:
    """Number of leading tokens that stand for the first `char_index` characters.

    For char ids this is `char_index`; for other kinds it walks `char_counts`
    (a token is counted where its first character starts).
    """
    if tokenizer.kind == "char":
        return char_index
    before = 0
    for start in range(0, len(tokens), COUNT_CHUNK_TOKENS):
        counts = tokenizer.char_counts(np.asarray(tokens[start : start + COUNT_CHUNK_TOKENS]))
        ends = np.cumsum(counts) + before
        if len(ends) and ends[-1] > char_index:
            return start + int(np.searchsorted(ends, char_index, side="right"))
        before = int(ends[-1]) if len(ends) else before
    return len(tokens)


@dataclass
class PreparedCorpus:
    """A corpus encoded and split, ready for training and evaluation."""

    tokenizer: Tokenizer
    train_tokens: np.ndarray
    val_tokens: np.ndarray
    val_chars: int  # characters of text behind the predicted val tokens
    train_chars: int
    fingerprint: str
    name: str
    source: str


def split_corpus(
    tokenizer: Tokenizer,
    train_tokens: np.ndarray,
    val_tokens: np.ndarray,
    train_chars: int,
    *,
    total_chars: int,
    val_fraction: float,
    fingerprint: str,
    name: str,
    source: str,
) -> PreparedCorpus:
    """The `PreparedCorpus` of an encoded split (in memory or memory-mapped), once the
    validation part is known to be evaluable; counts the characters behind its predictions."""
    if len(val_tokens) < 2:
        raise CorpusError(
            f"the validation part (last {val_fraction:.0%} of {total_chars} characters) is too "
            "short to evaluate: use a longer corpus or a larger --val-fraction"
        )
    return PreparedCorpus(
        tokenizer=tokenizer,
        train_tokens=train_tokens,
        val_tokens=val_tokens,
        val_chars=count_chars(tokenizer, val_tokens[1:]),
        train_chars=train_chars,
        fingerprint=fingerprint,
        name=name,
        source=source,
    )


TokenStore = Callable[[CorpusScan, Tokenizer], np.ndarray]


def prepare_tokens(
    scan: CorpusScan,
    tokenizer_kind: str,
    val_fraction: float,
    store: TokenStore,
    vocab_size: int | None = None,
    tokenizer: Tokenizer | None = None,
) -> PreparedCorpus:
    """Fit (or check) the tokeniser, encode with `store` (ids of the whole corpus), split.

    The whole corpus is encoded as one array and split afterwards, at the token where
    the first `1 - val_fraction` of the characters end (for subword pieces, the nearest
    token boundary).
    """
    if tokenizer is None:
        tokenizer = fit_corpus_tokenizer(scan, tokenizer_kind, val_fraction, vocab_size)
    else:
        tokenizer.check_encodable(scan.chars, "corpus")
    tokens = store(scan, tokenizer)
    train_chars = split_char_index(scan.num_chars, val_fraction)
    split = token_index_at_char(tokenizer, tokens, train_chars)
    return split_corpus(
        tokenizer,
        tokens[:split],
        tokens[split:],
        train_chars,
        total_chars=scan.num_chars,
        val_fraction=val_fraction,
        fingerprint=scan.fingerprint,
        name=scan.corpus.name,
        source=scan.corpus.source,
    )
