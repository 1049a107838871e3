"""Memory does not grow with the length of one input: a prime, a line, a text to explain.

Long text goes through the model a window of tokens at a time, carrying only the recurrent
state. The tests count the longest sequence the model is given (every read goes through its
embedding), and measure with tracemalloc what is kept per character (NumPy's arrays are
traced; a leftover per-character array shows up as bytes per character), at two lengths.
"""

from __future__ import annotations

import json
import math
import tracemalloc

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import PATTERN, error_lines, run_cli

from charrnn.api import load
from charrnn.config import ModelConfig
from charrnn.data import subword
from charrnn.data.tokenizer_interface import PIECE_CHARS
from charrnn.data.tokenizers import ByteTokenizer, CharTokenizer
from charrnn.generate import sampler
from charrnn.inspect import scoring
from charrnn.inspect.activations import UnitRef, analyse_text, track_units
from charrnn.inspect.unit_finder import UnitFinder
from charrnn.model import READ_WINDOW, CharRNN

LONG_PRIME = PATTERN * 15  # 675 characters: three windows


@pytest.fixture
def longest_read(monkeypatch) -> list[int]:
    """The length of every sequence any model reads (all reading starts at the embedding)."""
    seen: list[int] = []
    real_forward = torch.nn.Embedding.forward

    def spy(module, tokens):
        seen.append(int(tokens.shape[-1]))
        return real_forward(module, tokens)

    monkeypatch.setattr(torch.nn.Embedding, "forward", spy)
    return seen


def whole_prime_reader(model, pieces, state=None, window=None):
    """How a prime used to be read: all its ids in one call of the model."""
    ids = np.concatenate([np.asarray(piece, dtype=np.int64) for piece in pieces])
    with torch.inference_mode():
        logits, state = model(torch.from_numpy(ids).unsqueeze(0), state)
    return logits[:, -1, :], state


def peak_bytes(work) -> int:
    """The most memory `work()` held at once, as tracemalloc sees it (NumPy arrays included)."""
    tracemalloc.start()
    try:
        work()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


# -- sampling ---------------------------------------------------------------------------------


@pytest.mark.parametrize("output_format", ["text", "jsonl"])
def test_a_long_prime_is_read_a_window_at_a_time_and_writes_what_one_call_wrote(
    trained_run, longest_read, monkeypatch, output_format
):
    # trained_run is trained with --precision fp32: the same seed must give the very same text.
    args = ["sample", str(trained_run), "--prime", LONG_PRIME, "--seed", "5", "--length", "300"]
    args += ["--num-samples", "3", "--temperature", "2", "--format", output_format]
    windowed = run_cli(*args)
    assert windowed.exit_code == 0, windowed.stderr
    assert max(longest_read) <= READ_WINDOW
    monkeypatch.setattr(sampler, "read_tokens", whole_prime_reader)
    whole = run_cli(*args)
    assert max(longest_read) == len(LONG_PRIME)  # the reference did read it whole
    assert windowed.stdout == whole.stdout
    assert windowed.stdout.startswith(LONG_PRIME) or output_format == "jsonl"


def test_each_line_reads_a_long_line_a_window_at_a_time(trained_run, longest_read):
    line = LONG_PRIME.replace("\n", " ")
    args = ["sample", str(trained_run), "--each-line", "-n", "20", "--seed", "1", "--format", "jsonl"]
    result = run_cli(*args, input=f"the\n{line}\nfox\n")
    assert result.exit_code == 0, result.stderr
    records = [json.loads(record) for record in result.stdout.splitlines()]
    assert [record["prime"] for record in records] == ["the", line, "fox"]
    assert all(record["chars"] == 20 for record in records)
    assert max(longest_read) <= READ_WINDOW


class _CountedChunk(bytes):
    """A chunk read from a stream that counts the bytes copied when bytes are added before it
    (`bytes + chunk` makes a new copy of both; a bytearray grows in place)."""

    copied = 0

    def __radd__(self, other):
        if isinstance(other, bytes):
            _CountedChunk.copied += len(other)
        return NotImplemented  # then the addition goes on as usual


class _ChunkStream:
    """A stream that gives a long line in small chunks (no file descriptor: read() is called)."""

    def __init__(self, data: bytes, chunk: int) -> None:
        self.data, self.chunk, self.position = data, chunk, 0

    def read(self, size: int) -> bytes:
        piece = self.data[self.position : self.position + min(size, self.chunk)]
        self.position += len(piece)
        return _CountedChunk(piece)


def test_each_line_reads_a_long_line_without_copying_it_at_every_read():
    from charrnn.cli.line_input import read_line_batches

    line = b"x" * 200_000
    _CountedChunk.copied = 0
    batches = read_line_batches(_ChunkStream(line + b"\nshort\n" + line, 1000), 8, "input")
    assert [text for batch in batches for text in batch] == [line.decode(), "short", line.decode()]
    # Adding each chunk to the line read so far copied it every time: 400 reads, 40 MB copied.
    assert _CountedChunk.copied <= 2 * len(line)


def test_the_api_reads_a_long_prime_a_window_at_a_time(trained_run, longest_read):
    model = load(trained_run, device="cpu")
    text = model.generate_text(prime=LONG_PRIME, length=30, seed=2)
    assert text.startswith(LONG_PRIME) and len(text) == len(LONG_PRIME) + 30
    assert max(longest_read) <= READ_WINDOW


@pytest.mark.parametrize("kind", ["char", "byte", "bpe"])
def test_a_text_encoded_a_piece_at_a_time_has_the_ids_of_the_whole(kind, monkeypatch):
    text = ("Qu'est-ce que c'est? Ça va: 😀 ▁ ok\n" * 40) + "no newline at the end " * 30
    if kind == "char":
        tokenizer = CharTokenizer.fit(text)
    elif kind == "byte":
        tokenizer = ByteTokenizer()
    else:
        tokenizer = subword.SentencePieceTokenizer.fit("bpe", text * 5, 290)
        monkeypatch.setattr(subword, "ENCODE_CHUNK_CHARS", 100)  # many spans, cut inside lines too
    monkeypatch.setattr("charrnn.data.tokenizer_interface.PIECE_CHARS", 37)
    pieces = list(tokenizer.encode_pieces(text))
    assert len(pieces) > 10
    assert np.concatenate(pieces).tolist() == tokenizer.encode(text).tolist()


def test_an_unseen_character_is_named_wherever_it_is_in_a_long_prime(trained_run):
    prime = "Z" + "the quick brown fox " * (PIECE_CHARS // 10) + "Q"  # far apart: two pieces
    result = run_cli("sample", str(trained_run), "--prime", prime, "-n", "5")
    assert result.exit_code == 1
    assert error_lines(result.stderr) == [
        "Error: the prime text has characters the model never saw in training: 'Q' (U+0051), 'Z' (U+005A)"
    ]


# -- score --------------------------------------------------------------------------------------


def test_a_long_line_is_scored_in_bounded_memory_as_a_batch_of_one_scores_it(trained_run):
    model = load(trained_run, device="cpu")
    scorer = scoring.LineScorer(model.module, model.tokenizer, model.device)
    sentence = PATTERN.strip() + " "
    short_line = (sentence * (2 * PIECE_CHARS // len(sentence) + 1))[: 2 * PIECE_CHARS]
    long_line = (sentence * (4 * PIECE_CHARS // len(sentence) + 1))[: 4 * PIECE_CHARS]
    scores = {}
    peaks = {}
    for line in (short_line, long_line):
        peaks[len(line)] = peak_bytes(
            lambda line=line: scores.update({len(line): list(scorer.score([line]))[0]})
        )
    # Twice the line, not twice the memory: under a byte a character more (ids were 30 bytes each).
    assert peaks[len(long_line)] - peaks[len(short_line)] < len(short_line)
    # The same windows as a batch of one: the very same number.
    ids, _ = scorer._encode(short_line)
    assert scores[len(short_line)].total_bits == scorer._score_batch([ids])[0]
    assert scores[len(short_line)].chars == len(short_line) + 1


def test_a_long_line_with_unseen_characters_scores_inf_or_without_them(trained_run):
    model = load(trained_run, device="cpu")
    line = "Z" + "the lazy dog " * (scoring.LONG_LINE_CHARS // 10)
    [kept] = model.score([line])
    assert kept.total_bits == math.inf and kept.unknown_chars == 1
    [skipped] = model.score([line], skip_unknown=True)
    [plain] = model.score([line[1:]])
    assert skipped.total_bits == pytest.approx(plain.total_bits, rel=1e-9)
    assert skipped.chars == plain.chars


def test_carry_state_reads_a_long_line_a_window_at_a_time(trained_run, longest_read):
    model = load(trained_run, device="cpu")
    lines = ["the quick brown fox", LONG_PRIME.replace("\n", " "), "the lazy dog"]
    scores = model.score(lines, carry_state=True)
    assert max(longest_read) <= scoring.WINDOW
    # One stream: the bits of all lines are those of the text read in one call after a newline.
    ids = torch.from_numpy(model.tokenizer.encode("\n" + "\n".join(lines) + "\n").astype(np.int64))
    with torch.inference_mode():
        logits, _ = model.module(ids[None, :-1])
    expected = float(F.cross_entropy(logits[0], ids[1:], reduction="sum")) / math.log(2)
    assert sum(score.total_bits for score in scores) == pytest.approx(expected, rel=1e-5)


# -- explain ------------------------------------------------------------------------------------

TEXT = 'He said "stop (now)" and left.\nShe said "go [there]".\n'


def tiny_model(kind: str, vocab_size: int, layers: int = 2, hidden: int = 8) -> CharRNN:
    torch.manual_seed(0)
    config = ModelConfig(
        model=kind,
        num_layers=layers,
        hidden_size=hidden,
        embedding_size=6,
        dropout=0.0,
        vocab_size=vocab_size,
    )
    return CharRNN(config).eval()


def test_explain_reads_the_text_a_window_at_a_time(longest_read):
    text = TEXT * 60
    tokenizer = CharTokenizer.fit(text)
    model = tiny_model("lstm", tokenizer.vocab_size)
    finder = UnitFinder("lstm", 2, 8)
    chosen = [UnitRef(1, 2, "cell"), UnitRef(1, 5, "hidden")]
    analysis = analyse_text(model, tokenizer, text, units=chosen, observers=[finder])
    track_units(model, tokenizer, analysis, [UnitRef(0, 1, "cell")])
    assert max(longest_read) <= READ_WINDOW < len(text)
    # The numbers are those of the whole model in one call.
    ids = torch.from_numpy(tokenizer.encode(text).astype(np.int64)).unsqueeze(0)
    with torch.no_grad():
        logits, (hidden, cells) = model(ids)
    log_probs = F.log_softmax(logits[0].double(), dim=-1)
    expected = (-log_probs[:-1].gather(1, ids[0, 1:, None])[:, 0] / math.log(2)).numpy()
    np.testing.assert_allclose(analysis.bits[1:], expected, atol=1e-5)
    assert analysis.unit_values(UnitRef(1, 2, "cell"))[-1] == pytest.approx(float(cells[1, 0, 2]), abs=1e-5)
    assert analysis.unit_values(UnitRef(1, 5, "hidden"))[-1] == pytest.approx(
        float(hidden[1, 0, 5]), abs=1e-5
    )
    assert analysis.unit_values(UnitRef(0, 1, "cell"))[-1] == pytest.approx(float(cells[0, 0, 1]), abs=1e-5)


@pytest.mark.parametrize(
    "answer, bytes_per_char",
    [
        ("terminal", 20),  # where each segment ends and its surprise: 16 bytes
        ("finder", 20),  # the same: the finder keeps sums, not states
        ("json", 45),  # and the top 5 predictions: 5 ids (1 byte here) and 5 probabilities (4 bytes)
        ("unit", 24),  # and one unit's values: 4 bytes
    ],
)
def test_explain_keeps_a_few_bytes_per_character(answer, bytes_per_char, monkeypatch):
    # The text is encoded a piece at a time: small pieces here, so that what grows is what is kept.
    monkeypatch.setattr("charrnn.data.tokenizer_interface.PIECE_CHARS", 1000)
    tokenizer = CharTokenizer.fit(TEXT)
    model = tiny_model("lstm", tokenizer.vocab_size)

    def explain(text):
        finder = [UnitFinder("lstm", 2, 8)] if answer == "finder" else []
        top = 5 if answer == "json" else 0
        units = [UnitRef(1, 3, "cell")] if answer == "unit" else []
        analyse_text(model, tokenizer, text, top_predictions=top, units=units, observers=finder)

    short_text, long_text = TEXT * 400, TEXT * 800
    grown = peak_bytes(lambda: explain(long_text)) - peak_bytes(lambda: explain(short_text))
    assert grown / (len(long_text) - len(short_text)) < bytes_per_char


def test_the_json_answer_is_made_a_piece_at_a_time_and_is_the_json_of_its_data(monkeypatch):
    from charrnn.cli import explain_view
    from charrnn.cli.explain_view import explanation_json, views_for

    monkeypatch.setattr(explain_view, "SEGMENTS_PER_PIECE", 100)
    text = TEXT * 20
    tokenizer = CharTokenizer.fit(text)
    model = tiny_model("gru", tokenizer.vocab_size)
    chosen = UnitRef(0, 1, "hidden")
    analysis = analyse_text(model, tokenizer, text, units=[chosen])
    views = views_for(analysis, chosen)
    pieces = list(explanation_json(analysis, views, "m.safetensors", "char", [{"unit": "0:1:hidden"}]))
    assert max(len(piece) for piece in pieces) < len("".join(pieces)) / 10

    def rounded(value, digits=4):
        return None if not math.isfinite(value) else round(float(value), digits)

    expected = {
        "model": "m.safetensors",
        "model_kind": "gru",
        "tokenizer": "char",
        "characters": len(text),
        "bits_per_char": rounded(analysis.bits_per_char),
        "segments": [
            {"text": segment, "bits": rounded(bits), "top": [[label, rounded(p, 5)] for label, p in top]}
            for segment, bits, top in zip(analysis.segments, analysis.bits.tolist(), analysis.predictions)
        ],
        "views": [
            {
                "key": view.key,
                "label": view.label,
                "kind": view.kind,
                "scale": rounded(view.scale),
                "values": [rounded(value) for value in view.values.tolist()],
            }
            for view in views
        ],
        "units_found": [{"unit": "0:1:hidden"}],
    }
    assert "".join(pieces) == json.dumps(expected, ensure_ascii=False)


def test_the_coloured_text_is_rendered_a_piece_at_a_time_as_it_was_whole(monkeypatch):
    from charrnn.cli import explain as explain_command
    from charrnn.cli import explain_view
    from charrnn.cli.explain_view import render_text, surprise_view

    monkeypatch.setattr(explain_view, "SEGMENTS_PER_PIECE", 100)
    monkeypatch.setenv("FORCE_COLOR", "1")
    text = TEXT * 20
    tokenizer = CharTokenizer.fit(text)
    model = tiny_model("lstm", tokenizer.vocab_size)
    analysis = analyse_text(model, tokenizer, text, top_predictions=0)
    view = surprise_view(analysis)
    pieces = list(explain_command._stdout_pieces(explain_command._coloured_text(analysis, view, True)))
    assert len(pieces) > len(text) // 100
    whole = explain_command._stdout_text(render_text(analysis, view, True))
    assert "\x1b[" in whole and "".join(pieces) == whole


# -- out of memory: each command names its own options ------------------------------------------

ALLOCATOR_FAILURE = RuntimeError(
    "[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: "
    "you tried to allocate 70368744177664 bytes. Error code 12 (Cannot allocate memory)"
)


def _run_out(*args, **options):
    raise ALLOCATOR_FAILURE


@pytest.mark.parametrize(
    "command, patched, advice",
    [
        (["sample"], "charrnn.generate.sampler.generate_text", "try a smaller --num-samples or --batch-size"),
        (["eval", "t.txt"], "charrnn.api.Model.evaluate_file", "try --device cpu"),
        (["score", "t.txt"], "charrnn.api.Model.score_file", "split very long lines"),
        (["explain", "t.txt"], "charrnn.inspect.activations.analyse_text", "try a smaller --max-chars"),
    ],
)
@pytest.mark.parametrize("failure", [ALLOCATOR_FAILURE, MemoryError()])
def test_out_of_memory_names_the_commands_own_options(
    trained_run, in_tmp, monkeypatch, command, patched, advice, failure
):
    def run_out(*args, **options):
        raise failure

    (in_tmp / "t.txt").write_text(PATTERN, encoding="utf-8")
    monkeypatch.setattr(patched, run_out)
    result = run_cli(command[0], str(trained_run), *command[1:])
    assert result.exit_code == 1
    [line] = error_lines(result.stderr)
    assert line.startswith("Error: out of memory") and advice in line
    assert "--hidden-size" not in line  # training's options are no help here
