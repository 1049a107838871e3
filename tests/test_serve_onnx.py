"""`charrnn serve model.onnx`: an exported model is served as it is sampled, and a worker that cannot
run leaves no request waiting (every one gets OpenAI's error object, stderr one line)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from conftest import run_cli

from charrnn.serve.app import ServeSettings
from charrnn.serve.completions import Limits
from charrnn.serve.server import free_port, server_in_thread

pytest.importorskip("onnxruntime")
pytest.importorskip("uvicorn")


@pytest.fixture(scope="module")
def exported(trained_run, tmp_path_factory) -> Path:
    """The session's tiny trained LSTM exported in float32."""
    from charrnn.export.exporter import export_model

    path = tmp_path_factory.mktemp("served_export") / "tiny.onnx"
    export_model(trained_run / "best.safetensors", path)
    return path


@pytest.fixture(scope="module")
def onnx_server(exported):
    from charrnn.export.runtime import load_onnx_model

    loaded = load_onnx_model(exported)
    settings = ServeSettings(limits=Limits(max_tokens=10_000, max_n=8))
    with server_in_thread(loaded.model, loaded.tokenizer, "tiny", settings) as (url, _):
        yield url


def _sampled(model: Path, prompt: str, seed: int, length: int) -> str:
    result = run_cli("sample", str(model), "--prime", prompt, "--seed", str(seed), "-n", str(length))
    assert result.exit_code == 0, result.stderr
    return result.stdout.rstrip("\n")[len(prompt) :]


def _streamed_text(url: str, body: dict) -> str:
    with httpx.Client(timeout=60) as http, http.stream("POST", url + "/v1/completions", json=body) as answer:
        assert answer.status_code == 200
        events = [line[6:] for line in answer.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    return "".join(json.loads(event)["choices"][0]["text"] for event in events[:-1] if "choices" in event)


def test_a_served_fp32_export_writes_what_sample_writes_with_it_and_with_the_pytorch_model(
    onnx_server, exported, trained_run
):
    for prompt, seed, length in (("the ", 3, 40), ("fox", 11, 25)):
        expected = _sampled(exported, prompt, seed, length)
        assert expected == _sampled(trained_run, prompt, seed, length) and len(expected) == length
        body = {"prompt": prompt, "max_tokens": length, "seed": seed, "temperature": 1.0}
        whole = httpx.post(onnx_server + "/v1/completions", json=body, timeout=60)
        assert whole.status_code == 200, whole.text
        assert whole.json()["choices"][0]["text"] == expected
        assert _streamed_text(onnx_server, {**body, "stream": True}) == expected


def test_streams_joining_a_running_onnx_batch_each_write_their_text_alone(onnx_server, exported):
    # Later requests join a batch that is already stepping: the export's state is carried over.
    seeds = [21, 22, 23, 24, 25, 26]
    bodies = [{"prompt": "the ", "max_tokens": 200 + 20 * i, "seed": seed} for i, seed in enumerate(seeds)]
    with ThreadPoolExecutor(len(bodies)) as pool:
        found = list(pool.map(lambda body: _streamed_text(onnx_server, {**body, "stream": True}), bodies))
    for body, text in zip(bodies, found, strict=True):
        assert text == _sampled(exported, "the ", body["seed"], body["max_tokens"])


def test_models_and_the_page_name_an_export(onnx_server):
    models = httpx.get(onnx_server + "/v1/models", timeout=30).json()
    assert [entry["id"] for entry in models["data"]] == ["tiny"]
    page = httpx.get(onnx_server + "/", timeout=30)
    assert page.status_code == 200 and "<textarea" in page.text and "tiny" in page.text
    assert httpx.get(onnx_server + "/health", timeout=30).json()["status"] == "ok"


def _wait_for(url: str, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 90
    while True:
        try:
            httpx.get(url + "/health", timeout=5)
            return
        except httpx.TransportError:
            assert process.poll() is None and time.monotonic() < deadline, process.stderr.read()  # type: ignore[union-attr]
            time.sleep(0.2)


def _start_serve(command_prefix: list[str], *args: str) -> tuple[subprocess.Popen, str]:
    """Start `charrnn serve ARGS` (after `command_prefix`, the interpreter's way in) on a free
    loopback port, without an API key; return the process once it answers, and its URL."""
    port = free_port()
    process = subprocess.Popen(
        [*command_prefix, "serve", *args, "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "CHARRNN_API_KEY": ""},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_for(url, process)
    except BaseException:
        process.kill()
        raise
    return process, url


def test_charrnn_serve_runs_an_int8_export(trained_run, tmp_path):
    model = tmp_path / "s.onnx"
    assert run_cli("export", str(trained_run), "-o", str(model), "--int8").exit_code == 0
    process, url = _start_serve([sys.executable, "-m", "charrnn"], str(model))
    try:
        answer = httpx.post(url + "/v1/completions", json={"prompt": "the ", "max_tokens": 30}, timeout=60)
        assert answer.status_code == 200, answer.text
        choice = answer.json()["choices"][0]
        assert len(choice["text"]) == 30 and choice["finish_reason"] == "length"
        process.terminate()
        stdout, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0 and stdout == b""
    assert stderr.decode().splitlines() == [
        f"Serving s at {url}/ (the API under /v1; Ctrl-C stops)",
        "Stopped.",
    ]


# -- a worker that cannot build its batch --------------------------------------------------------------


def _refuse_to_build(self, *args, **kwargs):
    raise AttributeError("'Model' object has no attribute 'recurrent'")


def test_a_batch_that_cannot_be_built_answers_every_request_500_then_503(loaded_pattern, monkeypatch):
    from charrnn.generate.stream_batch import StreamBatch

    hooked: list = []
    monkeypatch.setattr("threading.excepthook", hooked.append)  # a traceback would come through here
    monkeypatch.setattr(StreamBatch, "__init__", _refuse_to_build)
    with server_in_thread(loaded_pattern.model, loaded_pattern.tokenizer, "pattern") as (url, server):
        engine = server.config.app.state.server.engine
        engine._thread.join(30)  # the worker has failed before any request came
        for stream in (False, True):
            answer = httpx.post(
                url + "/v1/completions",
                json={"prompt": "the ", "max_tokens": 5, "stream": stream},
                timeout=30,
            )
            assert answer.status_code == 503
            error = answer.json()["error"]
            assert error["type"] == "server_error"
            assert "'Model' object has no attribute 'recurrent'" in error["message"]
            assert "restart `charrnn serve`" in error["message"]
        assert httpx.get(url + "/health", timeout=30).json()["status"] == "failed"
    assert hooked == []


def test_requests_waiting_when_the_worker_fails_get_a_500_not_a_hang(loaded_pattern, monkeypatch):
    import threading

    from charrnn.generate.stream_batch import StreamBatch

    hooked: list = []
    monkeypatch.setattr("threading.excepthook", hooked.append)
    may_build = threading.Event()
    original = StreamBatch.__init__

    def build_after_requests(self, *args, **kwargs):
        may_build.wait(30)  # requests arrive and wait while the batch is being built
        _refuse_to_build(self)

    monkeypatch.setattr(StreamBatch, "__init__", build_after_requests)
    with server_in_thread(loaded_pattern.model, loaded_pattern.tokenizer, "pattern") as (url, server):
        engine = server.config.app.state.server.engine
        bodies = [{"prompt": "the ", "max_tokens": 5, "stream": False}] * 2
        bodies += [{"prompt": "fox", "max_tokens": 5, "stream": True}]
        with ThreadPoolExecutor(len(bodies)) as pool:
            answers = [
                pool.submit(httpx.post, url + "/v1/completions", json=body, timeout=30) for body in bodies
            ]
            deadline = time.monotonic() + 30
            while engine.streams_queued < len(bodies):
                assert time.monotonic() < deadline
                time.sleep(0.01)
            may_build.set()
            results = [answer.result() for answer in answers]
        for body, result in zip(bodies, results, strict=True):
            if body["stream"]:
                assert result.status_code == 200  # the error is the stream's last event
                error = json.loads(result.text.strip().split("\n\n")[-1][6:])["error"]
            else:
                assert result.status_code == 500
                error = result.json()["error"]
            assert error["type"] == "server_error" and "generation worker stopped" in error["message"]
            assert "no attribute 'recurrent'" in error["message"]
        later = httpx.post(url + "/v1/completions", json={"prompt": "the "}, timeout=30)
        assert later.status_code == 503 and "restart `charrnn serve`" in later.json()["error"]["message"]
    monkeypatch.setattr(StreamBatch, "__init__", original)
    assert hooked == []


_FAILING_SERVE = """
import sys
from charrnn.generate.stream_batch import StreamBatch

def refuse(self, *args, **kwargs):
    raise AttributeError("'Model' object has no attribute 'recurrent'")

StreamBatch.__init__ = refuse
from charrnn.cli import main
sys.argv = ["charrnn", *sys.argv[1:]]
main()
"""


def test_a_failed_worker_is_one_line_on_stderr_not_a_traceback(trained_run):
    process, url = _start_serve([sys.executable, "-c", _FAILING_SERVE], str(trained_run))
    try:
        answer = httpx.post(url + "/v1/completions", json={"prompt": "the ", "max_tokens": 5}, timeout=30)
        assert answer.status_code in (500, 503) and "recurrent" in answer.json()["error"]["message"]
        process.terminate()
        _, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    lines = stderr.decode().splitlines()
    assert lines[0].startswith("Serving run at") and lines[-1] == "Stopped."
    assert len(lines) == 3 and "Traceback" not in stderr.decode()
    assert (
        "generation worker stopped (AttributeError: 'Model' object has no attribute 'recurrent')" in lines[1]
    )


@pytest.fixture(scope="module")
def loaded_pattern(trained_run):
    from charrnn.store.checkpoint import load_weights

    loaded = load_weights(trained_run / "best.safetensors")
    loaded.model.eval()
    return loaded
