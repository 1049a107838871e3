"""Figures of `charrnn serve` (docs/serving.md): one streamed client against `charrnn sample` at batch 1,
32 concurrent streamed clients, and the time to the first chunk of a new request and of `/health`
under that load.

    .venv/bin/python benchmarks/serve_benchmark.py [--model shakespeare] [--repeats 3]

The server runs as a real `charrnn serve` process (so the clients here do not share its
interpreter); `charrnn sample`'s speed is measured in this process with the same sampler
(`generate_text`, what the command runs), without the command's start-up. Each figure is the
median of --repeats runs; the ratios are of figures measured in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time

import httpx

import charrnn
from charrnn.config import SampleConfig
from charrnn.generate.sampler import generate_text
from charrnn.serve.server import free_port

PROMPT = "ROMEO:"


def sample_speed(model: charrnn.Model, length: int) -> float:
    """Characters per second of `charrnn sample --length LENGTH` (batch 1), sampler only."""
    config = SampleConfig(prime=PROMPT, seed=1, length=length, temperature=0.8)
    started = time.perf_counter()
    text = "".join(generate_text(model.module, model.tokenizer, config))
    return (len(text) - len(PROMPT)) / (time.perf_counter() - started)


async def stream_one(
    http: httpx.AsyncClient, url: str, max_tokens: int, seed: int
) -> tuple[int, float, float]:
    """(characters, seconds to the first text chunk, seconds in all) of one streamed completion."""
    body = {"prompt": PROMPT, "max_tokens": max_tokens, "seed": seed, "temperature": 0.8, "stream": True}
    started = time.perf_counter()
    first, chars = None, 0
    async with http.stream("POST", url + "/v1/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            text = "".join(choice["text"] for choice in json.loads(line[6:])["choices"])
            if text and first is None:
                first = time.perf_counter() - started
            chars += len(text)
    return chars, first or 0.0, time.perf_counter() - started


async def health_times(http: httpx.AsyncClient, url: str, stop: asyncio.Event) -> list[float]:
    """Seconds each `/health` call took, every 50 ms until `stop`."""
    times = []
    while not stop.is_set():
        started = time.perf_counter()
        (await http.get(url + "/health")).raise_for_status()
        times.append(time.perf_counter() - started)
        await asyncio.sleep(0.05)
    return times


async def probe_first_chunks(http: httpx.AsyncClient, url: str, stop: asyncio.Event) -> list[float]:
    """Seconds to the first text chunk of a new streamed request, one every 100 ms until `stop`."""
    times = []
    await asyncio.sleep(0.3)  # once the load is running
    while not stop.is_set():
        times.append((await stream_one(http, url, 1, 999))[1])
        await asyncio.sleep(0.1)
    return times


async def load(url: str, clients: int, max_tokens: int) -> dict:
    """`clients` concurrent streams; meanwhile /health is polled and new requests probe the first chunk."""
    limits = httpx.Limits(max_connections=clients + 4)
    async with httpx.AsyncClient(timeout=600, limits=limits) as http:
        stop = asyncio.Event()
        health_poller = asyncio.ensure_future(health_times(http, url, stop))
        probes = asyncio.ensure_future(probe_first_chunks(http, url, stop)) if clients > 1 else None
        started = time.perf_counter()
        results = await asyncio.gather(*(stream_one(http, url, max_tokens, seed) for seed in range(clients)))
        elapsed = time.perf_counter() - started
        stop.set()
        health = await health_poller
        probe_times = await probes if probes is not None else []
    return {
        "chars_per_second": sum(chars for chars, _, _ in results) / elapsed,
        "first_chunk": [first for _, first, _ in results],
        "probe_first_chunk": probe_times,
        "health": health,
    }


def p95(values: list[float]) -> float:
    """The 95th percentile (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.95 * len(ordered) + 0.5) - 1)] if ordered else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="shakespeare")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--single-tokens", type=int, default=6000)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--client-tokens", type=int, default=600)
    args = parser.parse_args()

    model = charrnn.load(args.model, device="cpu")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "charrnn",
            "serve",
            args.model,
            "--port",
            str(port),
            "--max-streams",
            "64",
            "--max-tokens",
            "100000",
        ],
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                httpx.get(url + "/health", timeout=2).raise_for_status()
                break
            except httpx.TransportError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("the server did not start") from None
                time.sleep(0.2)
        sample, single, many, first_chunks, probe_chunks, healths = [], [], [], [], [], []
        for _ in range(args.repeats):
            sample.append(sample_speed(model, args.single_tokens))
            single.append(asyncio.run(load(url, 1, args.single_tokens))["chars_per_second"])
            result = asyncio.run(load(url, args.clients, args.client_tokens))
            many.append(result["chars_per_second"])
            first_chunks += result["first_chunk"]
            probe_chunks += result["probe_first_chunk"]
            healths += result["health"]
    finally:
        server.terminate()
        server.wait(30)
    sample_median, single_median, many_median = (
        statistics.median(values) for values in (sample, single, many)
    )
    print(f"model {args.model}; {args.repeats} runs, medians")
    print(f"charrnn sample, batch 1:        {sample_median:9.0f} chars/s")
    print(
        f"one streamed client:            {single_median:9.0f} chars/s  "
        f"({single_median / sample_median:.2f} of sample; target >= 0.8)"
    )
    print(
        f"{args.clients} concurrent clients, total: {many_median:9.0f} chars/s  "
        f"({many_median / single_median:.1f}x one client; target >= 4x)"
    )
    print(
        f"first chunk of a new request under that load: p95 {1000 * p95(probe_chunks):6.1f} ms over "
        f"{len(probe_chunks)} requests (target <= 100 ms)"
    )
    print(f"first chunk of the {args.clients} arriving at once: p95 {1000 * p95(first_chunks):6.1f} ms")
    print(
        f"/health under that load:        p95 {1000 * p95(healths):6.1f} ms over {len(healths)} calls "
        "(target <= 100 ms)"
    )


if __name__ == "__main__":
    main()
