"""How fast this machine trains: a few timed steps of two shapes, before a run is sized.

The sizing rule (`sizing.py`) turns a time budget into steps with the reference shape's speed and
each shape's step cost relative to it. The ladder's costs were measured on one thread with
tinyshakespeare's 65 characters; they hold for the larger shapes to about 10%, but not for the
smallest: on two threads 2 x 256 costs 0.51 of 2 x 384 (0.40 on one), and with 3,137 distinct
characters, whose output layer it multiplies too, 0.64 (`python benchmarks/sizing_study.py costs
--threads 2 --vocab 3137`). So the probe times the reference and the smallest shape, at the run's
own batch, window, vocabulary, device, precision and threads; timing every shape would take
seconds.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from charrnn.config import ModelConfig, TrainConfig
from charrnn.hardware import autocast
from charrnn.loss import head_cross_entropy
from charrnn.model import CharRNN
from charrnn.training.loop import build_optimizer, clip_norm
from charrnn.training.sizing import PROBED_SHAPE, REFERENCE_SHAPE

# The first step of a model sets up kernels and memory (several times a later step's time); the
# rest are timed and their median taken. At the default 50-70 ms a step on two cores, the probe
# takes about half a second for the reference and a third of that for the small shape.
WARMUP_STEPS = 1
TIMED_STEPS = 5


@dataclass(frozen=True)
class MachineSpeed:
    """What the probe measured: the reference's speed, and other shapes' step costs relative to it."""

    reference_steps_per_second: float
    relative_costs: dict[tuple[int, int], float]


def measure_speed(
    train_config: TrainConfig,
    vocab_size: int,
    device: torch.device,
    precision: str,
    model_kind: str = "lstm",
    embedding_size: int = 64,
    time_source: Callable[[], float] = time.perf_counter,
) -> MachineSpeed:
    """Training steps a second of the reference shape (2 x 384) here, optimiser step included, and
    the step cost of the smallest shape relative to it. The two are timed in turn, so a change in
    the machine's load touches both alike.

    Leaves torch's global random generator as it found it, so the run that follows starts the
    same as without the probe.
    """
    saved_generator = torch.get_rng_state()
    try:
        shapes = (REFERENCE_SHAPE, PROBED_SHAPE)
        steps = {
            shape: _training_step(
                shape, train_config, vocab_size, device, precision, model_kind, embedding_size
            )
            for shape in shapes
        }
        for step in steps.values():
            for _ in range(WARMUP_STEPS):
                step()
        seconds: dict[tuple[int, int], list[float]] = {shape: [] for shape in shapes}
        for _ in range(TIMED_STEPS):
            for shape in shapes:
                started = time_source()
                steps[shape]()
                seconds[shape].append(time_source() - started)
        reference = max(statistics.median(seconds[REFERENCE_SHAPE]), 1e-6)
        return MachineSpeed(
            reference_steps_per_second=1.0 / reference,
            relative_costs={PROBED_SHAPE: statistics.median(seconds[PROBED_SHAPE]) / reference},
        )
    finally:
        torch.set_rng_state(saved_generator)


def _training_step(
    shape: tuple[int, int],
    train_config: TrainConfig,
    vocab_size: int,
    device: torch.device,
    precision: str,
    model_kind: str,
    embedding_size: int,
) -> Callable[[], None]:
    """One training step of a model of this shape on random tokens, as a function to time."""
    model = CharRNN(
        ModelConfig(
            model=model_kind,
            num_layers=shape[0],
            hidden_size=shape[1],
            embedding_size=embedding_size,
            vocab_size=vocab_size,
        )
    ).to(device)
    # The step `Trainer.train_step` takes: its optimiser (fused AdamW where the device has one,
    # which on a CPU is a measurable share of a small model's step) and its gradient clipping.
    # With PyTorch's per-tensor AdamW instead, the probe read 12-19% below the loop's speed
    # between evaluations; with this step, from 1% above to 17% below, median 6% below
    # (`python benchmarks/sizing_study.py probe-vs-loop CORPUS`;
    # docs/experiments/2026-12-05-sizing-eighth-round.md).
    optimizer = build_optimizer(model, train_config, device)
    max_norm = clip_norm(train_config)
    tokens = torch.Generator().manual_seed(0)
    batch = (train_config.batch_size, train_config.seq_len)
    inputs = torch.randint(0, vocab_size, batch, generator=tokens).to(device)
    targets = torch.randint(0, vocab_size, batch, generator=tokens).to(device)
    state = model.initial_state(train_config.batch_size, device)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast(precision, device):
            features, _ = model(inputs, state, features_only=True)
            loss = head_cross_entropy(features, model.head, targets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
        loss.item()  # the loop reads the loss every step, which waits for the step to finish
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    return step
