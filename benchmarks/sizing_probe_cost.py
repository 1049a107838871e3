"""What sizing adds before a run's first step, in fresh processes (docs/training.md, issue 23).

The speed probe's first step in a process pays for torch's first-use set-up (about a second
here), which the run's own first step pays when there is no probe: so the cost that counts is the
probe and the first step together, against the first step alone, each in a new process.

    python benchmarks/sizing_probe_cost.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
from pathlib import Path

ONE_PROCESS = """
import sys, time
import torch
from charrnn.config import ModelConfig, TrainConfig
from charrnn.hardware import autocast, configure_threads, resolve_precision
from charrnn.loss import head_cross_entropy
from charrnn.model import CharRNN
from charrnn.training.sizing import SizingInputs, choose_size
from charrnn.training.speed_probe import measure_speed

configure_threads(None)
device = torch.device("cpu")
precision = resolve_precision("auto", device)
started = time.perf_counter()
if sys.argv[1] == "sized":
    speed = measure_speed(TrainConfig(), 65, device, precision)
    choose_size(SizingInputs(train_tokens=1_000_000, chars_per_token=1.0, vocab_size=65, budget_seconds=300,
                             max_steps=None, reference_steps_per_second=speed.reference_steps_per_second,
                             batch_size=8, seq_len=128, measured_costs=speed.relative_costs))
model = CharRNN(ModelConfig(vocab_size=65))
optimizer = torch.optim.AdamW(model.parameters())
inputs, targets = torch.randint(0, 65, (8, 128)), torch.randint(0, 65, (8, 128))
with autocast(precision, device):
    features, _ = model(inputs, model.initial_state(8, device), features_only=True)
    loss = head_cross_entropy(features, model.head, targets)
loss.backward()
optimizer.step()
print(time.perf_counter() - started)
"""


def seconds(mode: str) -> float:
    done = subprocess.run(
        [sys.executable, "-c", ONE_PROCESS, mode], capture_output=True, text=True, check=True
    )
    return float(done.stdout.strip())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    plain, sized = [], []
    for _ in range(args.rounds):  # in turn, so the machine's drift touches both alike
        plain.append(seconds("plain"))
        sized.append(seconds("sized"))
    added = [s - p for s, p in zip(sized, plain)]
    cpu_lines = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next((line.split(":", 1)[1].strip() for line in cpu_lines if line.startswith("model name")), "?")
    print(
        f"to the end of the first step: {statistics.median(plain):.3f} s without sizing, "
        f"{statistics.median(sized):.3f} s with it; sizing adds a median {statistics.median(added):.3f} s "
        f"(range {min(added):.3f}-{max(added):.3f}; {args.rounds} fresh processes each; {cpu})"
    )


if __name__ == "__main__":
    main()
