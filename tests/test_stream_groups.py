"""Stream groups: the text cut into batch x groups streams, the groups trained in turns, each
carrying its own state (issue 23: the validation loss rose and fell with each pass)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import PATTERN

from charrnn import events
from charrnn.config import ModelConfig, TrainConfig
from charrnn.data.in_memory import Corpus, prepare_corpus
from charrnn.data.windows import BatchStream, ShiftedPasses, fit_stream_layout
from charrnn.distributed import World
from charrnn.errors import CorpusError, RunDirError
from charrnn.store.checkpoint import load_training_state, read_saved_state
from charrnn.store.run_dir import RunDir
from charrnn.training.loop import Trainer
from charrnn.training.resume import resumed_configs

MODEL = ModelConfig(model="lstm", hidden_size=16, embedding_size=8, num_layers=2, dropout=0.2)
TEXT = "".join(f"{i} {PATTERN}" for i in range(60))  # about 2,400 training tokens


def _windows(tokens, batch_size, groups, world_size, shifted, rank, seq_len=8):
    arguments = (tokens, batch_size, seq_len, rank, world_size)
    if shifted:
        return ShiftedPasses(*arguments, seed=4, stream_groups=groups)
    return BatchStream(*arguments, stream_groups=groups)


# -- the windows ---------------------------------------------------------------------------------


@pytest.mark.parametrize("shifted", [False, True])
@pytest.mark.parametrize(
    "batch_size, groups, world_size", [(1, 1, 1), (4, 1, 1), (3, 4, 1), (2, 5, 2), (4, 8, 1), (1, 3, 3)]
)
def test_every_token_is_read_once_a_pass_and_the_ranks_make_up_the_one_process_windows(
    batch_size, groups, world_size, shifted
):
    seq_len, streams = 8, batch_size * groups * world_size
    # One more prediction than the streams' windows hold, so the cut leaves a little out.
    tokens = np.arange(streams * seq_len * 5 + streams + 1, dtype=np.int64)
    alone = _windows(tokens, batch_size * world_size, groups, 1, shifted, 0)
    ranks = [_windows(tokens, batch_size, groups, world_size, shifted, r) for r in range(world_size)]
    assert alone.windows_per_stream == 5 and alone.windows_per_epoch == 5 * groups
    step = 0
    for pass_number in range(4):
        reads = np.zeros(len(tokens), dtype=np.int64)
        later = shifted and pass_number > 0
        steps_in_pass = alone.later_pass_windows if later else alone.windows_per_epoch
        for within in range(steps_in_pass):
            assert alone.locate(step) == (pass_number, within)
            assert alone.starts_epoch(step) == (within < groups) and alone.group_of(step) == within % groups
            inputs, targets = alone.window(step)
            assert inputs.shape == (batch_size * world_size, seq_len) and np.array_equal(targets, inputs + 1)
            # torchrun's ranks side by side make up the one-process window
            together = np.concatenate([rank.window(step)[0] for rank in ranks])
            assert np.array_equal(together, inputs)
            np.add.at(reads, inputs.ravel(), 1)
            step += 1
        assert reads.max() == 1  # no token twice in a pass
        # Each stream reads a run of whole windows from its start (plus the pass's offset): what
        # is left out is the end of the division, and in a shifted pass the room for the offset.
        offset = alone.offset(pass_number)
        windows = steps_in_pass // groups
        expected = np.zeros(len(tokens), dtype=np.int64)
        for stream in range(streams):
            start = stream * alone.stream_len + offset
            expected[start : start + windows * seq_len] = 1
        assert np.array_equal(reads, expected)
        if pass_number == 0:
            assert reads.sum() == len(tokens) - 1 - streams  # all but one token a stream


def test_every_prediction_is_read_once_in_the_first_pass_when_the_streams_divide_the_text():
    tokens = np.arange(4 * 3 * 8 * 6 + 1)
    stream = BatchStream(tokens, batch_size=4, seq_len=8, stream_groups=3)
    reads = np.zeros(len(tokens), dtype=np.int64)
    for step in range(stream.windows_per_epoch):
        np.add.at(reads, stream.window(step)[1].ravel(), 1)  # every target: every token but the first
    assert reads[0] == 0 and (reads[1:] == 1).all()


def test_each_group_continues_its_own_streams_and_spreads_over_the_whole_text(tmp_path):
    path = tmp_path / "tokens.bin"
    np.arange(3 * 4 * 8 * 5 + 1, dtype=np.uint16).tofile(path)
    tokens = np.memmap(path, dtype=np.uint16, mode="r")  # cut lazily from a memory map, as in training
    stream = BatchStream(tokens, batch_size=3, seq_len=8, stream_groups=4)
    assert stream.stream_len == 40
    # Group g holds streams g, g + 4, g + 8: one in each third of the text.
    assert [stream.window(g)[0][:, 0].tolist() for g in range(4)] == [
        [g * 40, (g + 4) * 40, (g + 8) * 40] for g in range(4)
    ]
    for step in range(stream.windows_per_epoch - 4):
        now, later = stream.window(step)[0], stream.window(step + 4)[0]
        assert stream.group_of(step) == stream.group_of(step + 4)
        assert np.array_equal(later[:, 0], now[:, -1] + 1)  # group g's window i+1 goes on from window i
    assert np.array_equal(stream.window(stream.windows_per_epoch)[0], stream.window(0)[0])


def test_one_group_is_the_layout_before_groups():
    tokens = np.arange(1000)
    for plain, grouped in [
        (BatchStream(tokens, 4, 16), BatchStream(tokens, 4, 16, stream_groups=1)),
        (ShiftedPasses(tokens, 4, 16, seed=3), ShiftedPasses(tokens, 4, 16, seed=3, stream_groups=1)),
    ]:
        assert plain.windows_per_epoch == 15 and not plain.group_of(7)
        for step in range(100):
            assert np.array_equal(plain.window(step)[0], grouped.window(step)[0])
            # Before groups, stream s started at s * stream_len and window i at i * seq_len.
            pass_number, within = plain.locate(step)
            expected = np.arange(4) * plain.stream_len + plain.offset(pass_number) + within * 16
            assert np.array_equal(plain.window(step)[0][:, 0], expected)


def test_a_small_corpus_lowers_the_groups_first_then_the_batch():
    assert fit_stream_layout(10_000, 8, 8, 16) == (8, 8)
    assert fit_stream_layout(16 * 8 * 3 + 1, 8, 8, 16) == (8, 3)
    assert fit_stream_layout(16 * 5 + 1, 8, 8, 16) == (5, 1)
    assert fit_stream_layout(16 * 8 * 3 + 1, 4, 8, 16, world_size=2) == (4, 3)
    with pytest.raises(CorpusError, match="shorter than one training window"):
        fit_stream_layout(16, 8, 8, 16)


# -- the trainer ---------------------------------------------------------------------------------


def _trainer(run_path, text=TEXT, resume=False, stop_after=None, **overrides):
    corpus = prepare_corpus(Corpus(text, "t", "t.txt"), "char", 0.1)
    settings = dict(
        seq_len=8,
        batch_size=4,
        stream_groups=3,
        max_steps=40,
        eval_every=9,
        warmup_steps=2,
        threads=1,
        precision="fp32",
        seed=5,
    )
    run_dir = RunDir(run_path)
    run_dir.prepare()
    seen = []

    def record(event):
        seen.append(event)

    trainer = Trainer(
        corpus,
        MODEL,
        TrainConfig(**{**settings, **overrides}),
        run_dir,
        on_event=record,
        should_stop=lambda: (
            stop_after is not None and sum(isinstance(e, events.StepDone) for e in seen) >= stop_after
        ),
        resume_state=read_saved_state(run_dir.state) if resume else None,
    )
    return trainer, seen


def _steps(seen):
    return [(e.step, e.loss, e.grad_norm) for e in seen if isinstance(e, events.StepDone)]


def test_each_group_carries_its_own_state_and_starts_each_pass_cold(tmp_path):
    trainer, _ = _trainer(tmp_path / "run", text=TEXT[:240], batch_size=2)
    assert trainer.stream_groups == 3 and trainer.stream.windows_per_epoch == 12  # a few passes in 40 steps
    calls = []
    real_model = trainer.train_model

    def recording_model(inputs, state, features_only):
        features, new_state = real_model(inputs, state, features_only=features_only)
        calls.append(([part.clone() for part in state], [part.detach().clone() for part in new_state]))
        return features, new_state

    trainer.train_model = recording_model
    for _ in range(40):
        trainer.train_step()
    stream, groups = trainer.stream, 3
    for step, (state_in, _) in enumerate(calls):
        if stream.starts_epoch(step):
            assert all(not part.any() for part in state_in), step  # the group's pass starts cold
        else:
            _, state_out = calls[step - groups]  # the same group's previous window
            assert all(torch.equal(a, b) for a, b in zip(state_in, state_out)), step
    assert sum(stream.starts_epoch(step) for step in range(40)) > groups  # more than one pass


def test_resume_with_stream_groups_is_exact(tmp_path):
    options = dict(text=TEXT[:1000], max_steps=40, eval_every=9)  # more than one (shifted) pass
    straight, straight_seen = _trainer(tmp_path / "straight", **options)
    straight.run()
    assert straight.stream_groups == 3 and straight.stream.locate(39)[0] >= 1
    first, first_seen = _trainer(tmp_path / "split", stop_after=13, **options)  # mid-way through the groups
    assert first.run().reason == "interrupted"
    state = load_training_state(tmp_path / "split/state.pt")
    assert state["stream_groups"] == 3 and state["hidden"][0].shape == (2, 3 * 4, 16)
    second, second_seen = _trainer(tmp_path / "split", resume=True, **options)
    second.run()
    assert _steps(first_seen) + _steps(second_seen) == _steps(straight_seen)  # exact floats
    timing = {"elapsed", "chars_per_second", "eval_seconds"}

    def records(path):
        return [{k: v for k, v in r.items() if k not in timing} for r in RunDir(path).read_metrics()]

    assert records(tmp_path / "split") == records(tmp_path / "straight")
    for name, tensor in straight.model.state_dict().items():
        assert torch.equal(tensor, second.model.state_dict()[name]), name


def _as_before_stream_groups(path):
    """Rewrite a one-group run's state.pt as charrnn wrote it before stream groups existed."""
    state = load_training_state(path)
    del state["stream_groups"]
    settings = json.loads(state["train_config"])
    del settings["stream_groups"]
    state["train_config"] = json.dumps(settings)
    torch.save(state, path)


def test_a_state_from_before_stream_groups_resumes_with_one_group_exactly(tmp_path):
    options = dict(text=TEXT[:1000], stream_groups=1, max_steps=30)
    straight, straight_seen = _trainer(tmp_path / "straight", **options)
    straight.run()
    first, first_seen = _trainer(tmp_path / "old", stop_after=11, **options)
    first.run()
    _as_before_stream_groups(tmp_path / "old/state.pt")
    saved = read_saved_state(tmp_path / "old/state.pt")
    assert saved.record.stream_groups == 1 and saved.train_config.stream_groups == 1
    # Resumed with today's default (8 groups), as `charrnn train --resume` would pass it.
    second, second_seen = _trainer(
        tmp_path / "old", text=TEXT[:1000], resume=True, max_steps=30, stream_groups=8
    )
    assert second.stream_groups == 1 and second.train_config.stream_groups == 1
    second.run()
    assert _steps(first_seen) + _steps(second_seen) == _steps(straight_seen)

    _, train_config = resumed_configs(
        saved, {}, {"stream_groups": 8}, set(), World(), lambda: saved.corpus_fingerprint
    )
    assert train_config.stream_groups == 1
    with pytest.raises(RunDirError) as caught:
        resumed_configs(saved, {}, {"stream_groups": 8}, {"stream_groups"}, World(), lambda: "never read")
    assert str(caught.value) == "cannot resume: --stream-groups is 8 but the run was trained with 1"


def test_a_small_corpus_gets_fewer_groups_with_a_notice(tmp_path):
    # About 300 training tokens: 37 windows of 8, room for 4 streams x 9 groups but not 4 x 10.
    trainer, seen = _trainer(tmp_path / "run", text=TEXT[:340], stream_groups=10, max_steps=2)
    notices = [e.message for e in seen if isinstance(e, events.Notice)]
    tokens = len(trainer.corpus.train_tokens)
    groups = (tokens - 1) // (8 * 4)
    assert trainer.stream_groups == groups < 10 and trainer.batch_size == 4
    assert notices == [
        f"the corpus is small: --stream-groups lowered from 10 to {groups} "
        "so every stream holds a whole window"
    ]
    trainer.run()

    tiny, seen = _trainer(tmp_path / "tiny", text=TEXT[:30], max_steps=2)
    notices = [e.message for e in seen if isinstance(e, events.Notice)]
    assert (tiny.stream_groups, tiny.batch_size) == (1, (len(tiny.corpus.train_tokens) - 1) // 8)
    assert [n.split(" lowered")[0] for n in notices] == [
        "the corpus is small: --stream-groups",
        "the corpus is small: --batch-size",
    ]
