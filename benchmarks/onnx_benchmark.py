"""The figures of issue 26 (ONNX export, int8 sampling), in one run: export time, file sizes, batch-1
sampling speed of today's fast path (the NumPy stepper) against the float32 and int8 exports, and
bits/char on tinyshakespeare's validation split.

    python benchmarks/onnx_benchmark.py                        # the bundled model
    python benchmarks/onnx_benchmark.py runs/tinyshakespeare   # a model of the default size

Everything runs on one thread (torch and onnxruntime). Sampling speeds are medians of `--rounds`
runs of `--length` characters each, the three paths taking turns in every round, so a change in
the machine's load hits all of them alike: compare the ratios, not absolute figures across runs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
VAL_FRACTION = 0.1  # training's default: the validation split is the corpus's last 10%


def cpu_name() -> str:
    """The CPU's model name as lscpu gives it."""
    try:
        output = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    except OSError:
        return "unknown CPU"
    for line in output.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def sampling_speed(model, tokenizer, length: int) -> float:
    """Characters per second of one batch-1 sample of `length` characters."""
    from charrnn.config import SampleConfig
    from charrnn.generate.sampler import generate_text

    config = SampleConfig(length=length, seed=1, separator="", temperature=0.8)
    started = time.perf_counter()
    chars = sum(len(piece) for piece in generate_text(model, tokenizer, config))
    return chars / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "model", nargs="?", default="shakespeare", help="a checkpoint, run directory or bundled name"
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--length", type=int, default=3000, help="characters per sampling run")
    parser.add_argument("--corpus", default=str(REPO / "data" / "tinyshakespeare.txt"))
    arguments = parser.parse_args()

    torch.set_num_threads(1)
    from charrnn.api import load
    from charrnn.export.exporter import export_model
    from charrnn.store.run_dir import resolve_weights

    load_before = os.getloadavg()
    source = resolve_weights(arguments.model)
    with tempfile.TemporaryDirectory(prefix="onnx-benchmark-") as folder:
        paths = {"fp32": Path(folder) / "fp32.onnx", "int8": Path(folder) / "int8.onnx"}
        reports = {}
        for weights, path in paths.items():
            reports[weights] = export_model(source, path, int8=weights == "int8")
        models = {"PyTorch (NumPy stepper)": load(source, device="cpu")}
        models.update({f"ONNX {weights}": load(path) for weights, path in paths.items()})
        config = models["PyTorch (NumPy stepper)"]._loaded.model_config

        speeds: dict[str, list[float]] = {name: [] for name in models}
        for _ in range(arguments.rounds):
            for name, model in models.items():
                speeds[name].append(sampling_speed(model.module, model.tokenizer, arguments.length))
        text = Path(arguments.corpus).read_text(encoding="utf-8")
        validation = text[int(len(text) * (1 - VAL_FRACTION)) :]
        bits = {name: model.evaluate(validation).bits_per_char for name, model in models.items()}
    load_after = os.getloadavg()

    print(
        f"model: {source} ({config.model}, {config.num_layers} x {config.hidden_size}, "
        f"vocabulary {config.vocab_size})"
    )
    print(f"CPU: {cpu_name()}, 1 thread; load average {load_before[0]:.1f} before, {load_after[0]:.1f} after")
    print()
    print("export                     seconds   file bytes   / float32 weights")
    for weights, report in reports.items():
        print(
            f"  {weights:24} {report.seconds:7.2f}   {report.file_bytes:10,}   "
            f"{report.file_bytes / report.weights_bytes:.3f}"
        )
    print()
    baseline = statistics.median(speeds["PyTorch (NumPy stepper)"])
    print(f"batch-1 sampling, {arguments.rounds} rounds x {arguments.length} chars (median, min-max)   ratio")
    for name, values in speeds.items():
        median = statistics.median(values)
        print(
            f"  {name:24} {median:8,.0f} chars/s ({min(values):,.0f}-{max(values):,.0f})   "
            f"{median / baseline:.2f}x"
        )
    print()
    print(f"bits/char on the validation split of {Path(arguments.corpus).name} ({len(validation):,} chars)")
    reference = bits["PyTorch (NumPy stepper)"]
    for name, value in bits.items():
        print(f"  {name:24} {value:.4f}   {value - reference:+.4f}")


if __name__ == "__main__":
    main()
