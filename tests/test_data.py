"""Corpus reading, the split, truncated-BPTT windows and the evaluation windows that cover every token.

The bits-per-char figure itself is checked on a trained model in test_learning.py.
"""

from __future__ import annotations

import numpy as np
import pytest

from charrnn.data.in_memory import Corpus, prepare_corpus, read_corpus
from charrnn.data.windows import IGNORE_TARGET, BatchStream, EvaluationWindows


def test_windows_of_each_stream_are_contiguous_and_targets_shifted_by_one():
    tokens = np.arange(1000, dtype=np.uint16)
    stream = BatchStream(tokens, batch_size=4, seq_len=10)
    assert stream.stream_len == 249 and stream.windows_per_epoch == 24
    x0, y0 = stream.window(0)
    x1, y1 = stream.window(1)
    assert x0.shape == (4, 10) and x0.dtype == np.int64
    assert np.array_equal(y0, x0 + 1)  # next-token targets
    assert np.array_equal(x1[:, 0], x0[:, -1] + 1)  # window 1 continues window 0 in every stream
    assert np.array_equal(x0[:, 0], np.arange(4) * 249)
    assert stream.starts_epoch(24) and np.array_equal(stream.window(24)[0], x0)


def test_ranks_own_disjoint_streams_that_make_up_the_global_batch():
    tokens = np.arange(2000, dtype=np.uint16)
    whole = BatchStream(tokens, batch_size=6, seq_len=8).window(3)[0]
    parts = [
        BatchStream(tokens, batch_size=3, seq_len=8, rank=r, world_size=2).window(3)[0] for r in range(2)
    ]
    assert np.array_equal(np.concatenate(parts), whole)


def test_split_keeps_the_last_fraction_for_validation():
    text = "".join(chr(ord("a") + i % 26) for i in range(1000))
    prepared = prepare_corpus(Corpus(text, "t", "t"), "char", 0.1)
    assert len(prepared.train_tokens) == 900 and len(prepared.val_tokens) == 100
    assert prepared.tokenizer.decode(prepared.val_tokens) == text[900:]
    assert prepared.val_chars == 99


@pytest.mark.parametrize("length,streams,window,warmup", [(101, 4, 7, 0), (1000, 16, 32, 5), (57, 100, 8, 3)])
def test_evaluation_windows_predict_every_token_exactly_once(length, streams, window, warmup):
    tokens = np.arange(length) % 50
    windows = EvaluationWindows(tokens, streams, window, warmup=warmup)
    predicted = []
    for index, (_inputs, targets) in enumerate(windows):
        if index == 0 and windows.first_is_warmup:
            assert (targets == IGNORE_TARGET).all()
            continue
        predicted.extend(targets[targets != IGNORE_TARGET].tolist())
    assert sorted(predicted) == sorted(tokens[1:].tolist())


def _predicted_positions(windows: EvaluationWindows, tokens: np.ndarray) -> list[int]:
    """Where in `tokens` each predicted target sits (tokens are their own positions)."""
    predicted = []
    for index, (inputs, targets) in enumerate(windows):
        if index == 0 and windows.first_is_warmup:
            assert (targets == IGNORE_TARGET).all()
            continue
        kept = targets != IGNORE_TARGET
        assert (targets[kept] == inputs[kept] + 1).all()  # each target follows its input
        predicted.extend(targets[kept].tolist())
    return predicted


def test_a_limited_evaluation_predicts_pieces_spread_over_the_whole_array():
    # A big split is many documents in a row: the sample must reach its end, not stop at its start.
    tokens = np.arange(100_000)
    windows = EvaluationWindows(tokens, 16, 32, warmup=8, limit=1_600)
    predicted = _predicted_positions(windows, tokens)
    assert len(predicted) == len(set(predicted)) == 1_600
    spans = windows.scored_spans()
    assert sorted(predicted) == [p for first, end in spans for p in range(first, end)]
    starts = [first for first, _ in spans]
    assert starts[0] == 1 and starts[-1] > 90_000  # 16 pieces, 6,249 tokens apart
    assert len({b - a for a, b in zip(starts, starts[1:])}) == 1
    # A limit that 16 pieces do not divide: never more predictions than asked for.
    uneven = EvaluationWindows(tokens, 16, 32, warmup=8, limit=1_615)
    assert len(_predicted_positions(uneven, tokens)) == 1_600


def test_each_piece_of_a_limited_evaluation_is_warmed_up_on_the_text_just_before_it():
    tokens = np.arange(10_000)
    windows = EvaluationWindows(tokens, 4, 16, warmup=5, limit=400)
    context, targets = next(iter(windows))
    assert (targets == IGNORE_TARGET).all() and windows.cold_row == 0
    for row, (first, _) in enumerate(windows.scored_spans()[1:], start=1):
        assert context[row].tolist() == list(range(first - 6, first - 1))


def test_a_limit_at_or_above_the_array_is_the_whole_array():
    tokens = np.arange(500)
    for limit in (0, 499, 10_000):
        limited = EvaluationWindows(tokens, 8, 16, warmup=4, limit=limit)
        assert sorted(_predicted_positions(limited, tokens)) == list(range(1, 500))


def test_the_ranks_of_a_limited_evaluation_together_predict_what_one_process_does():
    tokens = np.arange(50_000)
    alone = _predicted_positions(EvaluationWindows(tokens, 16, 32, warmup=8, limit=3_000), tokens)
    shared = []
    for rank in range(3):
        part = EvaluationWindows(tokens, 16, 32, warmup=8, rank=rank, world_size=3, limit=3_000)
        shared.extend(_predicted_positions(part, tokens))
    assert sorted(shared) == sorted(alone)


def test_byte_order_mark_is_dropped_and_directory_files_are_sorted(tmp_path):
    (tmp_path / "b.txt").write_text("B", encoding="utf-8")
    (tmp_path / "a.txt").write_bytes("\ufeffA".encode("utf-8"))
    assert read_corpus(str(tmp_path)).text == "AB"
