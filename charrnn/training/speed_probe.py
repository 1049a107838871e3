"""How fast this machine trains: a few timed steps of the reference shape, before a run is sized.

The sizing rule (`sizing.py`) turns a time budget into steps with this figure and each shape's
step cost relative to the reference shape. Timing every candidate shape would take seconds; one
shape at the run's own batch, window, device, precision and threads takes a fraction of one.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch

from charrnn.config import ModelConfig, TrainConfig
from charrnn.hardware import autocast
from charrnn.loss import head_cross_entropy
from charrnn.model import CharRNN
from charrnn.training.sizing import REFERENCE_SHAPE

# The first step of a model sets up kernels and memory (several times a later step's time); the
# rest are timed and their median taken. At the default 60-70 ms a step on two cores, the probe
# takes about half a second.
WARMUP_STEPS = 1
TIMED_STEPS = 5


def reference_steps_per_second(
    train_config: TrainConfig,
    vocab_size: int,
    device: torch.device,
    precision: str,
    model_kind: str = "lstm",
    embedding_size: int = 64,
    time_source: Callable[[], float] = time.perf_counter,
) -> float:
    """Training steps a second of the reference shape (2 x 384) here, optimiser step included.

    Leaves torch's global random generator as it found it, so the run that follows starts the
    same as without the probe.
    """
    saved_generator = torch.get_rng_state()
    try:
        model = CharRNN(
            ModelConfig(
                model=model_kind,
                num_layers=REFERENCE_SHAPE[0],
                hidden_size=REFERENCE_SHAPE[1],
                embedding_size=embedding_size,
                vocab_size=vocab_size,
            )
        ).to(device)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        tokens = torch.Generator().manual_seed(0)
        shape = (train_config.batch_size, train_config.seq_len)
        inputs = torch.randint(0, vocab_size, shape, generator=tokens).to(device)
        targets = torch.randint(0, vocab_size, shape, generator=tokens).to(device)
        state = model.initial_state(train_config.batch_size, device)

        def step() -> None:
            optimizer.zero_grad(set_to_none=True)
            with autocast(precision, device):
                features, _ = model(inputs, state, features_only=True)
                loss = head_cross_entropy(features, model.head, targets)
            loss.backward()
            optimizer.step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)

        for _ in range(WARMUP_STEPS):
            step()
        seconds = []
        for _ in range(TIMED_STEPS):
            started = time_source()
            step()
            seconds.append(time_source() - started)
        return 1.0 / max(statistics.median(seconds), 1e-6)
    finally:
        torch.set_rng_state(saved_generator)
