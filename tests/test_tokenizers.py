"""Tokenisers: exact round trips, streaming, character counts, dtypes, and the sentencepiece set-up."""

from __future__ import annotations

import base64
import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from charrnn.config import DEFAULT_SUBWORD_VOCAB_SIZE
from charrnn.data.subword import FIXED_PIECES
from charrnn.data.tokenizers import (
    ByteTokenizer,
    CharTokenizer,
    fit_tokenizer,
    token_dtype,
    tokenizer_from_dict,
)
from charrnn.errors import TokenizerError

SHAKESPEARE = (REPO / "data" / "tinyshakespeare.txt").read_text(encoding="utf-8")

EXAMPLES = {
    "ascii": "First Citizen:\nBefore we proceed any further, hear me speak.\n",
    "accented": "Ça fait déjà l'été à Zürich; señor Øresund, naïve façade.\n",
    "cjk": "日本語のテキスト、中文文本和한국어 텍스트。\n",
    "emoji": "ok 😀👍🏽 family: 👨‍👩‍👧‍👦 flags 🇫🇷 done",
    "line endings": "windows\r\nmac\rold\nunix\n\r\n\n",
    "spaces": "  leading,  double  and trailing spaces  \t tabs\t\t\n   \n",
    "whitespace mark": "sentencepiece's own mark ▁ and ▁▁ next to spaces ▁ ",
    "controls": "nul\x00 bell\x07 escape\x1b[0m end",
}

# A varied training text: English, plus other scripts so some pieces are non-ASCII.
MIXED_TRAIN_TEXT = SHAKESPEARE[:40_000] + ("Ça fait déjà l'été. 日本語のテキスト。 ok 😀\r\n" * 40)


@pytest.fixture(scope="module")
def tokenizers() -> dict:
    """One tokeniser of each kind; the subword ones learned on MIXED_TRAIN_TEXT."""
    return {
        "byte": ByteTokenizer(),
        "bpe": fit_tokenizer("bpe", MIXED_TRAIN_TEXT, MIXED_TRAIN_TEXT, 400),
        "unigram": fit_tokenizer("unigram", MIXED_TRAIN_TEXT, MIXED_TRAIN_TEXT, 400),
    }


def _stream(tokenizer, ids) -> list[str]:
    decoder = tokenizer.stream_decoder()
    return [decoder.feed(int(i)) for i in ids] + [decoder.flush()]


def _check_lossless(tokenizer, text: str) -> None:
    ids = tokenizer.encode(text)
    assert ids.dtype == token_dtype(tokenizer.vocab_size)
    assert tokenizer.decode(ids) == text
    assert "".join(_stream(tokenizer, ids)) == text
    assert int(tokenizer.char_counts(ids).sum()) == len(text)


@pytest.mark.parametrize("name", sorted(EXAMPLES))
@pytest.mark.parametrize("kind", ["char", "byte", "bpe", "unigram"])
def test_round_trip_examples(tokenizers, kind, name):
    text = EXAMPLES[name]
    tokenizer = CharTokenizer.fit(text) if kind == "char" else tokenizers[kind]
    _check_lossless(tokenizer, text)


# Any text a UTF-8 file can hold: every code point but the surrogates.
any_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=200)
tricky_text = st.text(
    st.sampled_from(list(" \t\r\n▁aé日😀\x00")) | st.characters(blacklist_categories=("Cs",)), max_size=60
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=any_text | tricky_text)
@pytest.mark.parametrize("kind", ["byte", "bpe", "unigram"])
def test_round_trip_any_text(tokenizers, kind, text):
    _check_lossless(tokenizers[kind], text)


@settings(max_examples=150, deadline=None)
@given(text=any_text | tricky_text)
def test_char_round_trip_any_text(text):
    if text:
        _check_lossless(CharTokenizer.fit(text), text)


@settings(max_examples=150, deadline=None)
@given(text=any_text | tricky_text)
def test_byte_stream_is_whole_valid_text_when_cut_anywhere(text):
    tokenizer = ByteTokenizer()
    decoder = tokenizer.stream_decoder()
    written = ""
    for token in tokenizer.encode(text):
        written += decoder.feed(int(token))
        # Cut here: what was written is valid UTF-8 and a prefix of the text, never a broken character.
        written.encode("utf-8")
        assert text.startswith(written)
    assert written + decoder.flush() == text


def test_byte_stream_holds_back_a_split_character_then_writes_it_whole():
    decoder = ByteTokenizer().stream_decoder()
    euro = "€".encode()
    assert [decoder.feed(b) for b in euro] == ["", "", "€"]


def test_byte_stream_turns_invalid_bytes_into_replacement_characters():
    decoder = ByteTokenizer().stream_decoder()
    out = decoder.feed(0x80) + decoder.feed(ord("a")) + decoder.feed(0xE2) + decoder.flush()
    assert out == "\ufffda\ufffd"


def test_sentencepiece_stream_gives_spaces_at_word_starts(tokenizers):
    text = "  hear me speak,  my lord\n the end"
    for kind in ("bpe", "unigram"):
        tokenizer = tokenizers[kind]
        pieces = _stream(tokenizer, tokenizer.encode(text))
        assert "".join(pieces) == text
        assert "▁" not in "".join(pieces)


def test_subword_pieces_cover_several_characters(tokenizers):
    ids = tokenizers["bpe"].encode(SHAKESPEARE[100_000:110_000])
    assert 10_000 / len(ids) > 1.5


def test_sentencepiece_learns_from_the_training_part_only():
    train_text = SHAKESPEARE[:20_000].translate({ord(c): None for c in "xyzXYZ"})
    full_text = train_text + "xyzxyz xyz\n" * 200
    tokenizer = fit_tokenizer("bpe", train_text, full_text, 400)
    # "x", "y", "z" never appear in training: they are encoded as their bytes, one id each.
    assert len(tokenizer.encode("xyzxyz")) == 6
    assert len(tokenizer.encode("the the")) < 7
    assert tokenizer.decode(tokenizer.encode(full_text)) == full_text


def test_sentencepiece_training_is_quiet(capfd):
    fit_tokenizer("unigram", SHAKESPEARE[:20_000], SHAKESPEARE[:20_000], 400)
    captured = capfd.readouterr()
    assert captured.out == "" and captured.err == ""


@pytest.mark.parametrize("kind", ["bpe", "unigram"])
def test_sentencepiece_vocabulary_too_small_or_too_large_is_a_clear_error(kind):
    with pytest.raises(TokenizerError, match=r"--vocab-size 5000 is too large"):
        fit_tokenizer(kind, SHAKESPEARE[:3000], SHAKESPEARE[:3000], 5000)
    with pytest.raises(TokenizerError, match=r"--vocab-size 100 is too small.*at least 259"):
        fit_tokenizer(kind, SHAKESPEARE[:3000], SHAKESPEARE[:3000], 100)


@pytest.mark.parametrize("kind", ["bpe", "unigram"])
def test_a_small_vocabulary_on_a_corpus_of_many_characters_falls_back_to_bytes(kind):
    # 300 pieces leave 42 for the corpus's 100+ characters: the rarest are written as bytes.
    text = EXAMPLES["cjk"] * 3 + SHAKESPEARE[:3000]
    tokenizer = fit_tokenizer(kind, text, text, 300)
    assert tokenizer.vocab_size == 300
    assert tokenizer.decode(tokenizer.encode(text)) == text


@pytest.mark.parametrize("kind", ["bpe", "unigram"])
def test_the_default_vocabulary_fits_a_corpus_too_short_to_fill_it(kind):
    text = SHAKESPEARE[:300]
    tokenizer = fit_tokenizer(kind, text, text)
    assert 259 <= tokenizer.vocab_size < 1024
    assert tokenizer.decode(tokenizer.encode(text)) == text
    with pytest.raises(TokenizerError, match=r"--vocab-size 1024 is too large.*at most \d+"):
        fit_tokenizer(kind, text, text, 1024)


def _cjk_like_corpus(num_chars: int, distinct: int, seed: int = 0) -> str:
    """Ideographs drawn from a flat Zipf law (frequency ~ rank ** -0.5), in lines of 40.

    Shaped like the CJK text of the issue: thousands of distinct characters and little
    repetition, so 200 KB of it holds fewer unigram pieces than the default vocabulary.
    """
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.sqrt(np.arange(1, distinct + 1))
    code_points = 0x4E00 + rng.choice(distinct, size=num_chars, p=weights / weights.sum())
    text = "".join(map(chr, code_points.tolist()))
    return "\n".join(text[start : start + 40] for start in range(0, num_chars, 40)) + "\n"


@pytest.fixture(scope="module")
def cjk_corpus() -> str:
    text = _cjk_like_corpus(68_000, 3000)
    assert 190_000 < len(text.encode("utf-8")) < 220_000  # about 200 KB, as in the issue
    return text


@pytest.mark.parametrize("kind", ["bpe", "unigram"])
def test_the_default_vocabulary_is_a_ceiling_on_200_kb_of_cjk_text(cjk_corpus, kind):
    # Issue 22: unigram stopped with "too short to learn a unigram vocabulary" here.
    train_text = cjk_corpus[: len(cjk_corpus) * 9 // 10]
    tokenizer = fit_tokenizer(kind, train_text, cjk_corpus)
    assert FIXED_PIECES < tokenizer.vocab_size <= DEFAULT_SUBWORD_VOCAB_SIZE
    if kind == "unigram":
        assert tokenizer.vocab_size < DEFAULT_SUBWORD_VOCAB_SIZE  # the pieces the text holds
    ids = tokenizer.encode(cjk_corpus)
    assert tokenizer.decode(ids) == cjk_corpus
    assert tokenizer.char_counts(ids).sum() == len(cjk_corpus)


def test_an_explicit_vocabulary_size_stays_exact_on_cjk_text(cjk_corpus):
    train_text = cjk_corpus[: len(cjk_corpus) * 9 // 10]
    assert fit_tokenizer("bpe", train_text, cjk_corpus, 500).vocab_size == 500
    with pytest.raises(TokenizerError, match=r"--vocab-size 4096 is too large.*unigram can learn at most"):
        fit_tokenizer("unigram", train_text, cjk_corpus, 4096)


def test_to_dict_is_json_with_the_model_as_base64_and_reloads_identically(tokenizers):
    for kind in ("byte", "bpe", "unigram"):
        tokenizer = tokenizers[kind]
        stored = json.loads(json.dumps(tokenizer.to_dict()))
        assert stored["kind"] == kind
        reloaded = tokenizer_from_dict(stored)
        sample = SHAKESPEARE[:3000] + EXAMPLES["emoji"]
        assert np.array_equal(reloaded.encode(sample), tokenizer.encode(sample))
        assert reloaded.vocab_size == tokenizer.vocab_size
    proto = base64.b64decode(tokenizers["bpe"].to_dict()["model"])
    assert proto == tokenizers["bpe"].model_proto


def test_damaged_stored_sentencepiece_model_is_a_tokenizer_error(tokenizers):
    with pytest.raises(TokenizerError):
        tokenizer_from_dict({"kind": "bpe", "model": "not base64!"})
    with pytest.raises(TokenizerError):
        tokenizer_from_dict({"kind": "bpe", "model": base64.b64encode(b"garbage").decode()})
    with pytest.raises(TokenizerError):
        tokenizer_from_dict({"kind": "bpe"})


def test_index_dtype_follows_the_vocabulary_size():
    assert token_dtype(256) == np.uint8
    assert token_dtype(257) == np.uint16
    assert token_dtype(60_000) == np.uint16
    assert token_dtype(65_536) == np.uint16
    assert token_dtype(65_537) == np.uint32
    assert ByteTokenizer().encode("é").dtype == np.uint8


def test_large_sentencepiece_vocabulary_uses_uint16_and_stays_lossless():
    # A tiny but varied synthetic corpus: thousands of distinct "words" over two scripts.
    rng = np.random.default_rng(0)
    syllables = ["ka", "lo", "mi", "ne", "su", "tra", "vel", "quo", "zen", "pri"] + [
        chr(c) for c in range(0x4E00, 0x4E00 + 400)
    ]
    words = ["".join(rng.choice(syllables, size=rng.integers(1, 4))) for _ in range(6000)]
    text = "\n".join(" ".join(rng.choice(words, size=12)) for _ in range(3000))
    tokenizer = fit_tokenizer("bpe", text, text, 3000)
    assert tokenizer.vocab_size == 3000
    ids = tokenizer.encode(text[:20_000])
    assert ids.dtype == np.uint16 and int(ids.max()) > 255
    assert tokenizer.decode(ids) == text[:20_000]


def test_char_vocabulary_of_thirty_thousand_cjk_characters_encodes_to_uint16():
    chars = "".join(chr(c) for c in range(0x4E00, 0x4E00 + 30_000))
    tokenizer = CharTokenizer.fit(chars + "\n")
    ids = tokenizer.encode(chars)
    assert tokenizer.vocab_size == 30_001 and ids.dtype == np.uint16
    assert int(ids.max()) == 30_000 and tokenizer.decode(ids) == chars


def test_help_does_not_import_sentencepiece():
    code = "import sys, charrnn.cli; print('sentencepiece' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


@pytest.mark.parametrize("kind", ["bpe", "unigram"])
def test_sentencepiece_training_is_deterministic(kind):
    first = fit_tokenizer(kind, SHAKESPEARE[:30_000], SHAKESPEARE[:30_000], 400)
    second = fit_tokenizer(kind, SHAKESPEARE[:30_000], SHAKESPEARE[:30_000], 400)
    assert first.model_proto == second.model_proto
