"""generate/stream_batch.py: streams that join and leave a batched step write what they write alone."""

from __future__ import annotations

import pytest

from charrnn.config import SampleConfig
from charrnn.generate.sampler import generate_text
from charrnn.generate.stream_batch import CANCELLED, Stream, StreamBatch
from charrnn.store.checkpoint import load_weights


@pytest.fixture(scope="module")
def loaded(trained_run):
    loaded = load_weights(trained_run / "best.safetensors")
    loaded.model.eval()
    return loaded


def _alone(loaded, prompt: str, seed: int, length: int, **options) -> str:
    config = SampleConfig(prime=prompt, seed=seed, length=length, **options)
    return "".join(generate_text(loaded.model, loaded.tokenizer, config))[len(prompt) :]


REQUESTS = [
    ("the ", 1, 40, {"temperature": 1.6}),
    ("fox", 2, 25, {"temperature": 1.3, "top_k": 5}),
    ("lazy", 3, 33, {"temperature": 2.0, "top_p": 0.9}),
    ("q", 4, 50, {"greedy": True}),
    ("the ", 5, 60, {"temperature": 1.8, "stop": ("o",)}),
    ("jumps", 6, 17, {"temperature": 1.6}),
]


def test_streams_that_join_at_different_steps_write_what_they_write_alone(loaded):
    batch = StreamBatch(loaded.model, loaded.tokenizer)
    streams = [
        Stream(loaded.tokenizer, prompt, SampleConfig(**options), seed, length, tag=index)
        for index, (prompt, seed, length, options) in enumerate(REQUESTS)
    ]
    texts: dict[int, list[str]] = {index: [] for index in range(len(streams))}
    waiting, most = list(streams), 0
    while waiting or len(batch):
        if waiting:  # one more joins before each step, while the others are mid-way
            batch.add([waiting.pop(0)])
        most = max(most, len(batch))
        for update in batch.step():
            texts[update.stream.tag].append(update.text)
    assert most >= 5  # they really were stepped together
    for index, (prompt, seed, length, options) in enumerate(REQUESTS):
        assert "".join(texts[index]) == _alone(loaded, prompt, seed, length, **options), REQUESTS[index]
    assert streams[4].finish_reason == "stop" and "o" not in "".join(texts[4])
    assert {stream.finish_reason for stream in streams[:4]} == {"length"}


def test_a_cancelled_stream_leaves_at_the_next_step_and_the_others_go_on(loaded):
    batch = StreamBatch(loaded.model, loaded.tokenizer)
    config = SampleConfig(temperature=1.5)
    kept = Stream(loaded.tokenizer, "the ", config, 11, 30, tag="kept")
    gone = Stream(loaded.tokenizer, "the ", config, 12, 10_000, tag="gone")
    batch.add([kept, gone])
    text = [update.text for update in batch.step() if update.stream is kept]
    batch.step()
    StreamBatch.cancel(gone)
    updates = batch.step()
    assert [(update.stream.tag, update.finish_reason) for update in updates][0] == ("gone", CANCELLED)
    assert len(batch) == 1 and gone.tokens_written == 2
    text += [update.text for update in updates if update.stream is kept]
    while len(batch):
        text += [update.text for update in batch.step()]
    assert "".join(text)[:1] != "" and kept.finish_reason == "length"


def test_text_that_may_start_a_stop_string_is_held_back_until_decided(loaded):
    batch = StreamBatch(loaded.model, loaded.tokenizer)
    # The pattern model writes "the quick brown fox ..." after "jumps over ": "the la" is
    # held while it could still become "the lazy dog" and never released.
    stream = Stream(
        loaded.tokenizer, "jumps over ", SampleConfig(greedy=True, stop=("the lazy dog",)), 1, 200
    )
    batch.add([stream])
    pieces = []
    while len(batch):
        pieces += [update.text for update in batch.step()]
    assert stream.finish_reason == "stop"
    assert "".join(pieces) == ""  # everything written was the stop string: nothing is released
    assert stream.tokens_written == len("the lazy dog")


def test_logprobs_are_the_models_and_follow_the_released_text(loaded):
    batch = StreamBatch(loaded.model, loaded.tokenizer)
    stream = Stream(loaded.tokenizer, "the ", SampleConfig(temperature=1.5, stop=("fox",)), 3, 40, logprobs=2)
    batch.add([stream])
    text, tokens = "", []
    while len(batch):
        for update in batch.step():
            text += update.text
            tokens += update.tokens
    assert "".join(token.text for token in tokens) == text  # no token of the stop string
    assert [token.offset for token in tokens] == list(range(len(text)))
    for token in tokens:
        assert token.logprob <= 0 and len(token.top) <= 2
        assert max(token.top.values()) >= token.logprob - 1e-9
