"""charrnn serve: the official `openai` client against a real uvicorn server, batching, disconnects,
bad input, the API key, the queue limit, and the command itself."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time

import httpx
import pytest

from charrnn.config import SampleConfig
from charrnn.generate.sampler import generate_records, generate_text
from charrnn.serve.app import ServeSettings
from charrnn.serve.completions import Limits
from charrnn.serve.server import free_port, server_in_thread
from charrnn.store.checkpoint import load_weights

openai = pytest.importorskip("openai")


@pytest.fixture(scope="module")
def loaded(trained_run):
    loaded = load_weights(trained_run / "best.safetensors")
    loaded.model.eval()
    return loaded


@pytest.fixture(scope="module")
def server(loaded):
    settings = ServeSettings(limits=Limits(max_tokens=1_000_000, max_n=8))
    with server_in_thread(loaded.model, loaded.tokenizer, "pattern", settings) as (url, uvicorn_server):
        yield url, uvicorn_server.config.app.state.server.engine


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server[0] + "/v1", api_key="unused", max_retries=0, timeout=30)


def _alone(loaded, prompt: str, seed: int, length: int, **options) -> str:
    config = SampleConfig(prime=prompt, seed=seed, length=length, **options)
    return "".join(generate_text(loaded.model, loaded.tokenizer, config))[len(prompt) :]


# -- the official client ------------------------------------------------------------------------


def test_the_openai_client_gets_what_charrnn_sample_writes_with_the_same_seed(client, loaded):
    answer = client.completions.create(model="pattern", prompt="the ", max_tokens=30, temperature=1.5, seed=7)
    expected = _alone(loaded, "the ", 7, 30, temperature=1.5)
    assert answer.choices[0].text == expected
    assert answer.choices[0].finish_reason == "length"
    assert answer.usage.completion_tokens == 30 and answer.usage.prompt_tokens == 4
    again = client.completions.create(model="pattern", prompt="the ", max_tokens=30, temperature=1.5, seed=7)
    assert again.choices[0].text == expected


def test_a_streamed_completion_is_the_same_text_in_pieces_then_usage(client, loaded):
    chunks = list(
        client.completions.create(
            model="pattern",
            prompt="fox",
            max_tokens=3000,
            temperature=1.4,
            seed=3,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    pieces = [choice.text for chunk in chunks for choice in chunk.choices]
    assert "".join(pieces) == _alone(loaded, "fox", 3, 3000, temperature=1.4)
    assert len([piece for piece in pieces if piece]) > 2  # it arrived as it was written
    assert chunks[-1].usage.completion_tokens == 3000 and chunks[-1].choices == []
    assert [choice.finish_reason for chunk in chunks for choice in chunk.choices][-1] == "length"


def test_stop_strings_never_appear_and_n_writes_the_samples_of_charrnn_sample(client, loaded):
    answer = client.completions.create(
        model="pattern", prompt="the ", max_tokens=40, temperature=1.5, seed=21, n=3, stop=["o", "zz"]
    )
    config = SampleConfig(prime="the ", seed=21, length=40, temperature=1.5, num_samples=3, stop=("o", "zz"))
    records = list(generate_records(loaded.model, loaded.tokenizer, config))
    assert [choice.text for choice in answer.choices] == [record.text for record in records]
    assert all("o" not in choice.text for choice in answer.choices)
    assert {choice.finish_reason for choice in answer.choices} == {"stop"}
    assert [choice.index for choice in answer.choices] == [0, 1, 2]


def test_models_list_names_the_model(client):
    assert [model.id for model in client.models.list()] == ["pattern"]


def test_echo_and_logprobs(client):
    answer = client.completions.create(
        model="pattern", prompt="the ", max_tokens=10, seed=2, echo=True, logprobs=2, temperature=1.3
    )
    choice = answer.choices[0]
    assert choice.text.startswith("the ") and len(choice.text) == 14
    assert "".join(choice.logprobs.tokens) == choice.text[4:]
    assert choice.logprobs.text_offset == list(range(4, 14))
    assert all(value <= 0 for value in choice.logprobs.token_logprobs)


# -- batching, disconnects --------------------------------------------------------------------


def test_32_concurrent_streams_all_complete_each_as_it_is_alone(server, loaded):
    url, engine = server
    requests = [
        {"prompt": ["the ", "fox", "lazy ", "q"][index % 4], "max_tokens": 20 + index, "seed": 100 + index,
         "temperature": 1.2 + (index % 5) / 10, "stream": True}
        for index in range(32)
    ]  # fmt: skip

    async def one(http: httpx.AsyncClient, body: dict) -> str:
        text = ""
        async with http.stream("POST", url + "/v1/completions", json=body) as response:
            assert response.status_code == 200
            async for line in response.aiter_lines():
                if line.startswith("data: ") and line != "data: [DONE]":
                    text += "".join(choice["text"] for choice in json.loads(line[6:])["choices"])
        return text

    async def all_of_them() -> list[str]:
        async with httpx.AsyncClient(timeout=60) as http:
            return await asyncio.gather(*(one(http, body) for body in requests))

    texts = asyncio.run(all_of_them())
    for body, text in zip(requests, texts):
        assert text == _alone(
            loaded, body["prompt"], body["seed"], body["max_tokens"], temperature=body["temperature"]
        )
    assert engine.peak_streams_in_flight > 1  # they shared steps


def _health(url: str) -> dict:
    return httpx.get(url + "/health", timeout=10).json()


def test_a_client_that_goes_away_frees_its_slot_at_once(server):
    url, engine = server
    cancelled_before = _health(url)["streams_cancelled"]
    body = {"prompt": "the ", "max_tokens": 1_000_000, "stream": True, "seed": 1}
    with (
        httpx.Client(timeout=30) as http,
        http.stream("POST", url + "/v1/completions", json=body) as response,
    ):
        lines = response.iter_lines()
        for _ in range(5):
            next(lines)
        assert _health(url)["streams_in_flight"] == 1
    # The connection is closed: the stream leaves the batch long before its million tokens.
    deadline = time.monotonic() + 5
    while _health(url)["streams_in_flight"] != 0:
        assert time.monotonic() < deadline, _health(url)
        time.sleep(0.02)
    health = _health(url)
    assert health["streams_cancelled"] == cancelled_before + 1
    assert health["steps"] < 200_000


def test_health_answers_while_streams_are_written(server):
    url, _ = server
    body = {"prompt": "the ", "max_tokens": 1_000_000, "stream": True, "seed": 1}
    with (
        httpx.Client(timeout=30) as http,
        http.stream("POST", url + "/v1/completions", json=body) as response,
    ):
        lines = response.iter_lines()
        for _ in range(5):  # past the opening chunk: the stream is being written
            next(lines)
        started = time.monotonic()
        health = _health(url)
        assert health["status"] == "ok" and health["streams_in_flight"] == 1
        assert time.monotonic() - started < 2


# -- bad input ---------------------------------------------------------------------------------

BAD_BODIES = [
    (b"{not json", 400, None, "not valid JSON"),
    (b"[1, 2]", 400, None, "JSON object"),
    (b'{"prompt": 5}', 400, "prompt", "prompt must be"),
    (b'{"prompt": "the", "max_tokens": "ten"}', 400, "max_tokens", "integer"),
    (b'{"prompt": "the", "max_tokens": true}', 400, "max_tokens", "integer"),
    (b'{"prompt": "the", "max_tokens": -1}', 400, "max_tokens", "from 1 to"),
    (b'{"prompt": "the", "max_tokens": 10000000000}', 400, "max_tokens", "from 1 to"),
    (b'{"prompt": "the", "n": 1000}', 400, "n", "from 1 to 8"),
    (b'{"prompt": "the", "temperature": -0.5}', 400, "temperature", "number"),
    (b'{"prompt": "the", "top_p": 0}', 400, "top_p", "above 0"),
    (b'{"prompt": "the", "seed": -3}', 400, "seed", "integer"),
    (b'{"prompt": "the", "logprobs": 50}', 400, "logprobs", "from 0 to 5"),
    (b'{"prompt": "the", "stream": "yes"}', 400, "stream", "true or false"),
    (b'{"prompt": "the", "stream_options": {"include_usage": true}}', 400, "stream_options", "stream: true"),
    (b'{"prompt": "the", "stop": ["a", "b", "c", "d", "e"]}', 400, "stop", "up to 4"),
    (b'{"prompt": "the", "stop": ""}', 400, "stop", "non-empty"),
    (b'{"prompt": "the", "temprature": 1}', 400, "temprature", "unknown field"),
    (b'{"prompt": "the", "logit_bias": {"1": 5}}', 400, "logit_bias", "not supported"),
    (b'{"prompt": ""}', 400, "prompt", "empty"),
    (b'{"prompt": []}', 400, "prompt", "non-empty list"),
    (b'{"max_tokens": 5}', 400, "prompt", "missing"),
    ('{"prompt": "the €"}'.encode(), 400, "prompt", "'€' (U+20AC)"),
    ('{"prompt": "the", "stop": "€"}'.encode(), 400, "stop", "'€' (U+20AC)"),
]


@pytest.mark.parametrize(("body", "status", "param", "phrase"), BAD_BODIES)
def test_bad_input_is_one_clear_openai_error_and_the_server_keeps_serving(
    server, body, status, param, phrase
):
    url, _ = server
    response = httpx.post(url + "/v1/completions", content=body, headers={"content-type": "application/json"})
    assert response.status_code == status
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error" and error["param"] == param
    assert phrase in error["message"]
    assert _health(url)["status"] == "ok"


def test_a_10_mb_body_is_413_and_the_server_keeps_serving(server):
    url, _ = server
    body = json.dumps({"prompt": "the " * (10 * 1024 * 1024 // 4)}).encode()
    response = httpx.post(url + "/v1/completions", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert "larger than 1048576 bytes" in response.json()["error"]["message"]
    ok = httpx.post(url + "/v1/completions", json={"prompt": "the ", "max_tokens": 3}, timeout=30)
    assert ok.status_code == 200 and len(ok.json()["choices"][0]["text"]) == 3


def test_unknown_paths_and_methods_are_openai_errors(server):
    url, _ = server
    missing = httpx.get(url + "/v1/chat/completions")
    assert missing.status_code == 404 and "no such path" in missing.json()["error"]["message"]
    wrong = httpx.get(url + "/v1/completions")
    assert wrong.status_code == 405 and wrong.json()["error"]["message"] == "GET is not allowed here"


# -- the key, the queue, CORS -----------------------------------------------------------------


def test_api_key_queue_limit_and_cors(loaded):
    settings = ServeSettings(
        api_key="sesame",
        max_streams=1,
        max_queued=0,
        cors_origins=("http://app.example",),
        limits=Limits(max_tokens=1_000_000),
    )
    with server_in_thread(loaded.model, loaded.tokenizer, "pattern", settings) as (url, _):
        refused = httpx.post(url + "/v1/completions", json={"prompt": "the "})
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key"
        assert httpx.get(url + "/v1/models", headers={"Authorization": "Bearer nope"}).status_code == 401
        assert httpx.get(url + "/health").status_code == 200  # health checks need no key
        keyed = openai.OpenAI(base_url=url + "/v1", api_key="sesame", max_retries=0)
        assert keyed.completions.create(model="x", prompt="the ", max_tokens=4).choices[0].text
        headers = {"Authorization": "Bearer sesame"}
        body = {"prompt": "the ", "max_tokens": 1_000_000, "stream": True}
        with (
            httpx.Client(timeout=30) as http,
            http.stream("POST", url + "/v1/completions", json=body, headers=headers) as long_one,
        ):
            lines = long_one.iter_lines()  # kept: a dropped iterator closes the connection
            next(lines)
            busy = httpx.post(url + "/v1/completions", json={"prompt": "the "}, headers=headers)
            assert busy.status_code == 429 and busy.headers["retry-after"] == "1"
            assert "busy" in busy.json()["error"]["message"]
        preflight = httpx.options(
            url + "/v1/completions",
            headers={"Origin": "http://app.example", "Access-Control-Request-Method": "POST"},
        )
        assert preflight.headers["access-control-allow-origin"] == "http://app.example"
        other = httpx.options(
            url + "/v1/completions",
            headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"},
        )
        assert "access-control-allow-origin" not in other.headers


# -- the command ------------------------------------------------------------------------------


def test_charrnn_serve_prints_its_url_serves_the_page_and_stops_on_sigterm_closing_its_streams(trained_run):
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "charrnn",
            "serve",
            str(trained_run),
            "--port",
            str(port),
            "--max-tokens",
            "1000000",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "CHARRNN_API_KEY": ""},
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                page = httpx.get(url + "/", timeout=5)
                break
            except httpx.TransportError:
                assert process.poll() is None and time.monotonic() < deadline, process.stderr.read()  # type: ignore[union-attr]
                time.sleep(0.2)
        assert (
            page.status_code == 200
            and "<textarea" in page.text
            and "http" not in page.text.split("<script>")[1]
        )
        assert "run" in page.text  # the model's name (its run directory)
        body = {"prompt": "the ", "max_tokens": 1_000_000, "stream": True}
        with (
            httpx.Client(timeout=30) as http,
            http.stream("POST", url + "/v1/completions", json=body) as stream,
        ):
            lines = stream.iter_lines()
            next(lines)
            process.send_signal(signal.SIGTERM)
            rest = list(lines)  # the stream in flight is closed, at once, without [DONE]
        assert "data: [DONE]" not in rest
        stdout, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, stderr
    assert stdout == b""
    assert stderr.decode().splitlines() == [
        f"Serving run at {url}/ (the API under /v1; Ctrl-C stops)",
        "Stopped.",
    ]


def test_charrnn_serve_refuses_a_taken_port_in_one_line(trained_run):
    import socket

    from conftest import error_lines, run_cli

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli("serve", str(trained_run), "--port", str(port))
    assert result.exit_code == 2
    assert len(error_lines(result.stderr)) == 1
    assert result.stderr.startswith(f"Error: cannot listen on 127.0.0.1:{port}: Address already in use")


# -- faults of the model or the worker ------------------------------------------------------------


def test_a_model_whose_scores_overflow_is_a_500_error_object_and_the_server_keeps_answering(loaded):
    import copy

    import torch

    damaged = copy.deepcopy(loaded.model)
    with torch.no_grad():
        damaged.head.weight.mul_(1e38)  # finite weights whose products overflow float32
    with server_in_thread(damaged, loaded.tokenizer, "damaged") as (url, _):
        for stream in (False, True):
            body = {"prompt": "the ", "max_tokens": 5, "stream": stream}
            response = httpx.post(url + "/v1/completions", json=body, timeout=30)
            if stream:
                assert response.status_code == 200  # the error comes as an event: the answer had begun
                error = json.loads(response.text.strip().split("\n\n")[-1][6:])["error"]
            else:
                assert response.status_code == 500
                error = response.json()["error"]
            assert error["type"] == "server_error" and "not finite" in error["message"]
        assert _health(url)["status"] == "ok"


class _WorkerFault(BaseException):
    """Not an Exception: what the worker cannot carry on from."""


def test_a_fault_in_the_worker_answers_the_requests_instead_of_leaving_them_hanging(loaded, monkeypatch):
    from charrnn.generate.stream_batch import StreamBatch

    def broken_step(self):
        raise _WorkerFault("a bug")

    monkeypatch.setattr(StreamBatch, "step", broken_step)
    monkeypatch.setattr("threading.excepthook", lambda args: None)  # the worker thread's end is expected
    with server_in_thread(loaded.model, loaded.tokenizer, "pattern") as (url, _):
        response = httpx.post(url + "/v1/completions", json={"prompt": "the "}, timeout=30)
        assert response.status_code == 500
        assert "generation worker stopped (_WorkerFault: a bug)" in response.json()["error"]["message"]
        after = httpx.post(url + "/v1/completions", json={"prompt": "the "}, timeout=30)
        assert after.status_code == 503 and "a bug" in after.json()["error"]["message"]
