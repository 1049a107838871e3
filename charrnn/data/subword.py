"""Subword tokenisers (sentencepiece BPE and unigram), trained in memory, lossless on any text.

sentencepiece is set up so that `decode(encode(text)) == text` for every text:
normalisation is the identity (no NFKC, no whitespace clean-up, no dummy
prefix), byte fallback turns every character outside the vocabulary into its
UTF-8 bytes (so nothing is ever unknown), and "\\n" is a piece of its own
(sentencepiece learns from one line at a time and would otherwise drop it).
The one character sentencepiece cannot keep apart is its own whitespace mark
"▁" (U+2581), which it decodes as a space; a literal "▁" in the text is
therefore encoded as its three byte pieces.

Decoding does not go through sentencepiece: each id maps to the UTF-8 bytes
it stands for ("▁" -> space, "<0xE2>" -> one byte), which gives streaming
decoding and exact character counts from one table. `import sentencepiece`
happens only when a tokeniser of this kind is built, so `charrnn --help`
stays fast.
"""

from __future__ import annotations

import base64
import binascii
import io
import os
import re
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from charrnn.config import DEFAULT_SUBWORD_VOCAB_SIZE, SENTENCEPIECE_KINDS
from charrnn.data.tokenizer_interface import StreamDecoder, Tokenizer, Utf8StreamDecoder, token_dtype
from charrnn.errors import TokenizerError

WHITESPACE_MARK = "\u2581"  # sentencepiece's "▁": a space inside a piece
NEWLINE = "\n"
BYTE_PIECE = re.compile(r"<0x([0-9A-F]{2})>")
# Lines are fed to the trainer in chunks of at most this many characters: sentencepiece
# skips "sentences" longer than max_sentence_length bytes, and minified files have huge lines.
TRAIN_CHUNK_CHARS = 2000
MAX_TRAIN_SENTENCES = 2_000_000  # beyond this, the trainer samples lines (memory stays bounded)
ENCODE_CHUNK_CHARS = 1 << 20  # encode big texts a megabyte at a time, cut after a newline
FIXED_PIECES = 256 + 2  # byte pieces, <unk> and "\n"
# At most this share of the learnable pieces are single characters, and at most this share of
# a corpus's character occurrences when not all characters fit (see `rare_characters`).
CHARACTER_SHARE = 0.5
MAX_PARTIAL_COVERAGE = 0.9995


def _import_sentencepiece():
    try:
        import sentencepiece
    except ImportError:  # pragma: no cover - it is a declared dependency
        raise TokenizerError(
            "the bpe and unigram tokenisers need the sentencepiece package: pip install sentencepiece"
        ) from None
    return sentencepiece


def _training_sentences(text: str) -> Iterator[str]:
    for line in text.split(NEWLINE):
        for start in range(0, len(line), TRAIN_CHUNK_CHARS):
            yield line[start : start + TRAIN_CHUNK_CHARS]


def _friendly_training_error(message: str, kind: str, vocab_size: int) -> str:
    """sentencepiece's C++ check failure, said in terms of charrnn's options."""
    too_high = re.search(r"Vocabulary size too high \(\d+\)\. Please set it to a value <= (\d+)", message)
    if too_high:
        return (
            f"--vocab-size {vocab_size} is too large for the training part of this corpus: "
            f"{kind} can learn at most {too_high.group(1)} pieces from it; use a smaller "
            "--vocab-size or a longer corpus"
        )
    too_low = re.search(r"smaller than required_chars\. \d+ vs (\d+)", message)
    if too_low:
        return (
            f"--vocab-size {vocab_size} is too small for {kind} on this corpus: it needs at "
            f"least {too_low.group(1)} (256 byte pieces, <unk>, newline and the corpus's characters)"
        )
    detail = re.sub(
        r"^\w+: \S+\(\d+\) \[.*?\] ", "", message.strip().splitlines()[0] if message.strip() else ""
    )
    return f"sentencepiece could not train a {kind} vocabulary of {vocab_size}: {detail or 'unknown error'}"


def rare_characters(train_text: str, vocab_size: int) -> str:
    """The characters left out of the learned pieces: they are written as their UTF-8 bytes.

    None when all the corpus's characters fit in a `CHARACTER_SHARE` of the learnable
    pieces (English, code: a few hundred at most). Otherwise (CJK: thousands) the most
    frequent characters that fit in that share keep pieces of their own, up to
    `MAX_PARTIAL_COVERAGE` of the text, and the rest fall back to bytes: the vocabulary
    is never too small for the corpus, and most of it is left for longer pieces.
    (sentencepiece's own `character_coverage` cannot go below 0.98, which on such a
    corpus can still need more characters than a default vocabulary holds.)
    """
    code_points, counts = np.unique(
        np.frombuffer(train_text.replace(NEWLINE, "").encode("utf-32-le", "surrogatepass"), dtype=np.uint32),
        return_counts=True,
    )
    room = max(1, int((vocab_size - FIXED_PIECES) * CHARACTER_SHARE))
    if len(counts) <= room:
        return ""
    order = np.argsort(-counts, kind="stable")
    covered = np.cumsum(counts[order], dtype=np.float64) / counts.sum()
    kept = min(room, int(np.searchsorted(covered, MAX_PARTIAL_COVERAGE)) + 1)
    return "".join(chr(c) for c in code_points[order[kept:]].tolist())


def _train_model(kind: str, train_text: str, vocab_size: int, exact: bool) -> bytes:
    """The serialized sentencepiece model learned from `train_text`.

    It has `vocab_size` pieces when `exact`, else at most that many: as many as the text holds.
    """
    sentencepiece = _import_sentencepiece()
    model = io.BytesIO()
    # Rare characters cut the training lines (no piece spans them) and are never learned.
    rare = rare_characters(train_text, vocab_size)
    if rare:
        train_text = train_text.translate(dict.fromkeys(map(ord, rare), NEWLINE))
    # Same corpus, same vocabulary: sentencepiece samples lines of very large corpora.
    sentencepiece.set_random_generator_seed(0)
    try:
        sentencepiece.SentencePieceTrainer.train(
            sentence_iterator=_training_sentences(train_text),
            model_writer=model,
            model_type=kind,
            vocab_size=vocab_size,
            hard_vocab_limit=exact,
            byte_fallback=True,
            character_coverage=1.0,
            normalization_rule_name="identity",
            remove_extra_whitespaces=False,
            add_dummy_prefix=False,
            split_digits=False,
            allow_whitespace_only_pieces=True,
            user_defined_symbols=[NEWLINE],
            max_sentence_length=4 * TRAIN_CHUNK_CHARS + 16,
            input_sentence_size=MAX_TRAIN_SENTENCES,
            shuffle_input_sentence=True,
            unk_id=0,
            bos_id=-1,
            eos_id=-1,
            pad_id=-1,
            num_threads=max(1, min(8, os.cpu_count() or 1)),
            minloglevel=2,  # no C++ log lines on the terminal
        )
    except RuntimeError as error:
        raise TokenizerError(_friendly_training_error(str(error), kind, vocab_size)) from None
    return model.getvalue()


class SentencePieceTokenizer(Tokenizer):
    """A sentencepiece BPE or unigram model whose proto travels inside the checkpoint."""

    def __init__(self, kind: str, model_proto: bytes) -> None:
        if kind not in SENTENCEPIECE_KINDS:
            raise TokenizerError(f"unknown sentencepiece tokeniser kind {kind!r}")
        sentencepiece = _import_sentencepiece()
        self.kind = kind
        self.model_proto = model_proto
        try:
            self._processor = sentencepiece.SentencePieceProcessor(model_proto=model_proto)
        except (RuntimeError, TypeError, OSError) as error:
            raise TokenizerError(f"the stored sentencepiece model is damaged ({error})") from None
        processor = self._processor
        size = processor.get_piece_size()
        self._bytes_for_id: list[bytes] = []
        counts = np.zeros(size, dtype=np.int64)
        self._byte_ids = np.zeros(256, dtype=np.int64)
        for token_id in range(size):
            piece = processor.id_to_piece(token_id)
            byte = BYTE_PIECE.fullmatch(piece) if processor.is_byte(token_id) else None
            if byte:
                value = int(byte.group(1), 16)
                self._byte_ids[value] = token_id
                raw = bytes([value])
                counts[token_id] = 1 if value & 0xC0 != 0x80 else 0  # count a character at its lead byte
            elif processor.is_unknown(token_id) or processor.is_control(token_id):
                raw = b""  # never produced by encode (byte fallback); a sampled one writes nothing
            else:
                text = piece.replace(WHITESPACE_MARK, " ")
                raw = text.encode("utf-8")
                counts[token_id] = len(text)
            self._bytes_for_id.append(raw)
        if len({int(i) for i in self._byte_ids}) != 256:
            raise TokenizerError("the stored sentencepiece model has no byte fallback pieces")
        self._char_counts = counts
        self._dtype = token_dtype(size)
        self._mark_ids = [int(self._byte_ids[b]) for b in WHITESPACE_MARK.encode("utf-8")]
        # A vocabulary without a "▁" piece (spaces rare or absent in training) would write a
        # space as the bytes of "▁", which decode as "▁": such a vocabulary gets the space byte.
        self._space_id = (
            None
            if processor.piece_to_id(WHITESPACE_MARK) != processor.unk_id()
            else int(self._byte_ids[ord(" ")])
        )

    # -- building -----------------------------------------------------------------------

    @classmethod
    def fit(cls, kind: str, train_text: str, vocab_size: int | None = None) -> SentencePieceTokenizer:
        """Train a `kind` ("bpe" or "unigram") model on `train_text`, in memory.

        An explicit `vocab_size` is exact: a corpus that cannot fill it is an error saying
        which sizes would do. None means charrnn's default, as a ceiling: a corpus too short
        to fill it gets the pieces it holds (sentencepiece's `hard_vocab_limit=False`), so
        the default never fails on a corpus with any text.
        """
        exact = vocab_size is not None
        vocab_size = vocab_size if vocab_size is not None else DEFAULT_SUBWORD_VOCAB_SIZE
        if vocab_size < FIXED_PIECES + 1:
            raise TokenizerError(
                f"--vocab-size {vocab_size} is too small for {kind}: 256 byte pieces, <unk> and "
                f"newline take {FIXED_PIECES}, so use at least {FIXED_PIECES + 1} (e.g. 1024)"
            )
        if not train_text.replace(NEWLINE, ""):
            raise TokenizerError(
                f"the training part of the corpus has no text to learn a {kind} vocabulary from"
            )
        return cls(kind, _train_model(kind, train_text, vocab_size, exact))

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> SentencePieceTokenizer:
        """Rebuild from `to_dict()` output (the model proto is base64 text)."""
        try:
            proto = base64.b64decode(values["model"], validate=True)
        except (KeyError, TypeError, binascii.Error):
            raise TokenizerError("the stored sentencepiece model is missing or not base64") from None
        return cls(str(values.get("kind")), proto)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "model": base64.b64encode(self.model_proto).decode("ascii")}

    # -- the interface ------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        return len(self._bytes_for_id)

    def encode(self, text: str) -> np.ndarray:
        ids: list[int] = []
        for start, end in _chunks(text, ENCODE_CHUNK_CHARS):
            # A literal "▁" would come back as a space: encode the text around it, and it as bytes.
            for index, part in enumerate(text[start:end].split(WHITESPACE_MARK)):
                if index:
                    ids.extend(self._mark_ids)
                if part:
                    ids.extend(self._encode_part(part))
        return np.asarray(ids, dtype=self._dtype)

    def encode_pieces(self, text: str) -> Iterator[np.ndarray]:
        # `encode` cuts a long text into these spans itself: encoding them one by one is the same.
        for start, end in _chunks(text, ENCODE_CHUNK_CHARS):
            yield self.encode(text[start:end])

    def _encode_part(self, part: str) -> list[int]:
        if self._space_id is None:
            return self._processor.encode(part)
        ids: list[int] = []
        for index, words in enumerate(part.split(" ")):
            if index:
                ids.append(self._space_id)
            if words:
                ids.extend(self._processor.encode(words))
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        table = self._bytes_for_id
        return b"".join(table[int(i)] for i in ids).decode("utf-8", errors="replace")

    def stream_decoder(self) -> StreamDecoder:
        return Utf8StreamDecoder(self._bytes_for_id)

    def char_counts(self, ids: np.ndarray) -> np.ndarray:
        return self._char_counts[np.asarray(ids, dtype=np.int64)]


def _chunks(text: str, size: int) -> Iterator[tuple[int, int]]:
    """(start, end) spans of about `size` characters, each cut just after a newline when there is one.

    No learned piece contains a newline, so encoding the spans one by one gives
    the same ids as encoding the whole text.
    """
    start = 0
    while start < len(text):
        end = min(len(text), start + size)
        if end < len(text):
            newline = text.rfind(NEWLINE, start, end)
            if newline >= start:
                end = newline + 1
        yield start, end
        start = end
