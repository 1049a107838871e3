"""Does torch.compile pay off here? Time eager vs compiled for the training step and a one-token model step.

    python benchmarks/compile_check.py

Prints, for each, the one-off compile time and the steady-state time per
call, so the break-even point can be read off: compile time / time saved per
call. charrnn uses neither compiled path (see README, "Performance"). Sampling itself no longer
runs torch per token (its step is NumPy, `charrnn/stepper.py`); the second row times the fused
model on one token at batch 1, the torch path it replaced.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from charrnn.config import ModelConfig, TrainConfig  # noqa: E402
from charrnn.hardware import configure_threads  # noqa: E402
from charrnn.model import CharRNN  # noqa: E402


def per_call(function, calls: int) -> float:
    times = []
    for _ in range(calls):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def first_call(function) -> float:
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


def training_step_factory(compiled: bool):
    torch.manual_seed(0)
    model_config, train_config = ModelConfig(vocab_size=65), TrainConfig()
    model = CharRNN(model_config)
    forward = torch.compile(model) if compiled else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    inputs = torch.randint(65, (train_config.batch_size, train_config.seq_len))
    targets = torch.randint(65, (train_config.batch_size, train_config.seq_len))

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits, _ = forward(inputs)
            loss = F.cross_entropy(logits.reshape(-1, 65).float(), targets.reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def sampler_step_factory(compiled: bool):
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(vocab_size=65)).eval()
    forward = torch.compile(model) if compiled else model
    token = torch.zeros((1, 1), dtype=torch.long)
    state = [model.initial_state(1)]

    def step() -> None:
        with torch.inference_mode():
            _, state[0] = forward(token, state[0])

    return step


def main() -> None:
    configure_threads(None)
    print("| what | eager per call | compiled per call | compile (first call) | break-even calls |")
    print("|---|---|---|---|---|")
    for name, factory, calls, threads in (
        ("training step (bf16, defaults)", training_step_factory, 10, None),
        ("model on one token (batch 1)", sampler_step_factory, 2000, 1),
    ):
        configure_threads(threads)
        eager = factory(False)
        eager()
        eager_time = per_call(eager, calls)
        compiled = factory(True)
        compile_time = first_call(compiled)
        compiled_time = per_call(compiled, calls)
        saved = eager_time - compiled_time
        break_even = f"{compile_time / saved:,.0f}" if saved > 0 else "never"
        print(
            f"| {name} | {eager_time * 1e3:.2f} ms | {compiled_time * 1e3:.2f} ms | "
            f"{compile_time:.1f} s | {break_even} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
