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


def test_byte_order_mark_is_dropped_and_directory_files_are_sorted(tmp_path):
    (tmp_path / "b.txt").write_text("B", encoding="utf-8")
    (tmp_path / "a.txt").write_bytes("\ufeffA".encode("utf-8"))
    assert read_corpus(str(tmp_path)).text == "AB"
