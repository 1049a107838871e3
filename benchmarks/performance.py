"""Print the performance figures of the README in one run.

    python benchmarks/performance.py            # everything, including a 5-minute training run
    python benchmarks/performance.py --quick    # skip the 5-minute run

Figures: matrix-multiply peak (fp32, bf16); the bare fused-layer training
step and `charrnn train`'s own loop with the same shapes, their ratio and
model FLOPs utilisation (MFU) against the measured peak; sampling chars/s at
batch 1 and 64 (one thread, medians of 5); `charrnn --help` start-up and time to the first sampled
character; and the validation loss `charrnn train data/tinyshakespeare.txt
--max-time 5m` reaches with the defaults. Timings are medians; compare
figures from the same run, the machine is noisy.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from charrnn import events  # noqa: E402
from charrnn.config import ModelConfig, SampleConfig, TrainConfig  # noqa: E402
from charrnn.data.in_memory import Corpus, prepare_corpus, read_corpus  # noqa: E402
from charrnn.generate.sampler import generate_text  # noqa: E402
from charrnn.hardware import configure_threads, resolve_precision  # noqa: E402
from charrnn.model import CharRNN, detach_state  # noqa: E402
from charrnn.store.run_dir import RunDir  # noqa: E402
from charrnn.training.loop import Trainer, build_optimizer  # noqa: E402

CORPUS = REPO / "data" / "tinyshakespeare.txt"


# Steps timed for the bare step and for the training loop in each round. At the default batch of
# 8 a step takes about 0.07 s; with half these counts a median was at the mercy of a few slow steps.
BARE_STEPS = 24
LOOP_STEPS = 80
# The machine's speed drifts by a quarter within a minute (other guests on the same host), so one
# bare measurement followed by one of the loop compared two different machines. The two are timed
# in turn this many times, and the table shows medians and the median of each round's ratio.
ROUNDS = 3


def median_seconds(function, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        function()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def gemm_peak(dtype: torch.dtype) -> float:
    """The best GFLOP/s of large square matrix multiplies (the fastest of several runs and sizes)."""
    best = 0.0
    for size in (2048, 3072, 4096):
        a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
        torch.mm(a, b)
        for _ in range(5):
            started = time.perf_counter()
            torch.mm(a, b)
            best = max(best, 2 * size**3 / (time.perf_counter() - started) / 1e9)
    return best


def training_flops_per_token(config: ModelConfig) -> float:
    """Multiply-add FLOPs of forward + backward (3x forward) per token, matrix products only."""
    gates = {"lstm": 4, "gru": 3, "rnn": 1}[config.model] * config.hidden_size
    forward = 2 * gates * (config.embedding_size + config.hidden_size)
    forward += (config.num_layers - 1) * 2 * gates * 2 * config.hidden_size
    forward += 2 * config.hidden_size * config.vocab_size
    return 3 * forward


def bare_step_chars_per_second(
    model_config: ModelConfig, train_config: TrainConfig, precision: str, steps: int = BARE_STEPS
) -> float:
    """The fused layers' training step alone: random windows, no data pipeline, no logging."""
    torch.manual_seed(0)
    model = CharRNN(model_config)
    optimizer = build_optimizer(model, train_config, torch.device("cpu"))  # as `charrnn train` builds it
    batch, window = train_config.batch_size, train_config.seq_len
    inputs = torch.randint(model_config.vocab_size, (batch, window))
    targets = torch.randint(model_config.vocab_size, (batch, window))
    state = [model.initial_state(batch)]
    autocast = (
        (lambda: torch.autocast("cpu", dtype=torch.bfloat16))
        if precision == "bf16"
        else contextlib.nullcontext
    )

    def step() -> None:
        with autocast():
            logits, new_state = model(inputs, state[0])
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        state[0] = detach_state(new_state)

    return batch * window / median_seconds(step, repeats=steps, warmup=3)


def optimizer_step_milliseconds(model_config: ModelConfig, train_config: TrainConfig) -> dict:
    """One AdamW step over the default model's weights: PyTorch's CPU default against `charrnn train`'s."""
    model = CharRNN(model_config)
    for parameter in model.parameters():
        parameter.grad = torch.randn_like(parameter)
    builders = {
        "per-tensor loop (PyTorch's CPU default)": lambda: torch.optim.AdamW(
            model.parameters(), lr=train_config.lr, weight_decay=train_config.weight_decay
        ),
        "fused (charrnn train)": lambda: build_optimizer(model, train_config, torch.device("cpu")),
    }
    return {
        name: median_seconds(build().step, repeats=30, warmup=3) * 1e3 for name, build in builders.items()
    }


def trainer_chars_per_second(
    model_config: ModelConfig, train_config: TrainConfig, steps: int = LOOP_STEPS
) -> dict:
    """`charrnn train`'s loop on the bundled corpus: data, events, a checkpoint; evaluation timed apart."""
    prepared = prepare_corpus(read_corpus(str(CORPUS)), "char", train_config.val_fraction)
    step_times: list[float] = []
    eval_seconds: list[float] = []
    last = [None]

    def on_event(event: object) -> None:
        now = time.perf_counter()
        if isinstance(event, events.StepDone):
            if last[0] is not None:
                step_times.append(now - last[0])
            last[0] = now
        elif isinstance(event, events.EvaluationDone):
            eval_seconds.append(event.eval_seconds)
            last[0] = None  # the evaluation is timed on its own, not as a step

    with tempfile.TemporaryDirectory() as folder:
        config = TrainConfig(**{**train_config.to_dict(), "max_steps": steps, "eval_every": steps // 2})
        run_dir = RunDir(Path(folder) / "run")
        run_dir.prepare()
        Trainer(prepared, model_config, config, run_dir, on_event=on_event).run()
    chars_per_step = train_config.batch_size * train_config.seq_len
    return {
        "chars_per_second": chars_per_step / statistics.median(step_times[3:]),
        "eval_seconds": statistics.median(eval_seconds),
    }


def bare_against_loop(
    model_config: ModelConfig, train_config: TrainConfig, precision: str, rounds: int = ROUNDS
) -> tuple[float, float, list[float], float]:
    """Median chars/s of the bare step and of the loop (timed in turn), each round's ratio, median eval s."""
    bare, loop, ratios, eval_seconds = [], [], [], []
    for _ in range(rounds):
        bare.append(bare_step_chars_per_second(model_config, train_config, precision))
        measured = trainer_chars_per_second(model_config, train_config)
        loop.append(measured["chars_per_second"])
        eval_seconds.append(measured["eval_seconds"])
        ratios.append(loop[-1] / bare[-1])
    return statistics.median(bare), statistics.median(loop), ratios, statistics.median(eval_seconds)


def sampling_chars_per_second(model_config: ModelConfig, batch: int, length: int, repeats: int = 5) -> float:
    """Median chars/s of `generate_text` on one thread (`benchmarks/sampling_speed.py` compares checkouts)."""
    tokenizer = prepare_corpus(
        Corpus("".join(chr(32 + i) for i in range(model_config.vocab_size)) * 3, "v", "v"), "char", 0.3
    ).tokenizer
    model = CharRNN(ModelConfig(**{**model_config.to_dict(), "vocab_size": tokenizer.vocab_size})).eval()
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rates = []
        for _ in range(repeats):
            started = time.perf_counter()
            written = sum(
                len(chunk)
                for chunk in generate_text(
                    model, tokenizer, SampleConfig(length=length, num_samples=batch, seed=1, separator="")
                )
            )
            rates.append(written / (time.perf_counter() - started))
        return statistics.median(rates)
    finally:
        torch.set_num_threads(previous)


def command_seconds(arguments: list[str], repeats: int = 5) -> float:
    def run() -> None:
        subprocess.run(
            [sys.executable, "-m", "charrnn", *arguments],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    return median_seconds(run, repeats=repeats, warmup=1)


def first_character_seconds(checkpoint: Path, repeats: int = 5) -> float:
    def run() -> None:
        process = subprocess.Popen(
            [sys.executable, "-m", "charrnn", "sample", str(checkpoint), "--length", "-1", "--prime", "A"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        process.stdout.read(2)  # the echoed prime and the first sampled character
        process.kill()
        process.wait()

    return median_seconds(run, repeats=repeats, warmup=1)


def five_minute_loss(budget: str) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "run"
        subprocess.run(
            [sys.executable, "-m", "charrnn", "train", str(CORPUS), "--max-time", budget, "--out", str(out)],
            check=True,
            stderr=subprocess.DEVNULL,
        )
        records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    best = min(records, key=lambda record: record["val_loss"])
    return {
        "val_loss": best["val_loss"],
        "val_bpc": best["val_bpc"],
        "elapsed": records[-1]["elapsed"],
        "steps": records[-1]["step"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="skip the 5-minute training run")
    parser.add_argument("--budget", default="5m", help="budget of the training run (default 5m)")
    args = parser.parse_args()

    threads = configure_threads(None)
    model_config, train_config = ModelConfig(vocab_size=65), TrainConfig()
    auto_precision = resolve_precision("auto", torch.device("cpu"))
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"torch {torch.__version__}, {threads} threads; default model {model_config.num_layers} x "
        f"{model_config.hidden_size} {model_config.model}, batch {train_config.batch_size} x "
        f"{train_config.seq_len}; --precision auto = {auto_precision}"
    )
    peaks = {"fp32": gemm_peak(torch.float32), "bf16": gemm_peak(torch.bfloat16)}
    print(f"matrix multiply peak: fp32 {peaks['fp32']:.0f} GFLOP/s, bf16 {peaks['bf16']:.0f} GFLOP/s")
    flops = training_flops_per_token(model_config)
    print(
        "\n| precision | bare step chars/s | charrnn train chars/s | ratio (range) | MFU (train) "
        "| eval seconds |"
    )
    print("|---|---|---|---|---|---|")
    for precision in ("fp32", "bf16"):
        config = TrainConfig(**{**train_config.to_dict(), "precision": precision})
        bare, loop, ratios, eval_seconds = bare_against_loop(model_config, config, precision)
        mfu = loop * flops / 1e9 / peaks[precision]
        ratio = f"{statistics.median(ratios):.1%} ({min(ratios):.0%}-{max(ratios):.0%})"
        print(
            f"| {precision} | {bare:,.0f} | {loop:,.0f} | {ratio} | {mfu:.1%} | {eval_seconds:.1f} |",
            flush=True,
        )

    steps = optimizer_step_milliseconds(model_config, train_config)
    print("\n" + "; ".join(f"AdamW step, {name}: {ms:.2f} ms" for name, ms in steps.items()))

    print("\n| sampling | chars/s |")
    print("|---|---|")
    for batch, length in ((1, 20000), (64, 300)):  # batch 1: long enough that set-up is under 1%
        print(
            f"| batch {batch} | {sampling_chars_per_second(model_config, batch, length):,.0f} |", flush=True
        )

    with tempfile.TemporaryDirectory() as folder:
        tiny = Path(folder) / "tiny.txt"
        tiny.write_text(CORPUS.read_text(encoding="utf-8")[:200_000], encoding="utf-8")
        out = Path(folder) / "run"
        subprocess.run(
            [sys.executable, "-m", "charrnn", "train", str(tiny), "--max-steps", "2", "--out", str(out)],
            check=True,
            stderr=subprocess.DEVNULL,
        )
        print(
            f"\n`charrnn --help`: {command_seconds(['--help']):.2f} s; first sampled character: "
            f"{first_character_seconds(out / 'best.safetensors'):.2f} s after start",
            flush=True,
        )

    if not args.quick:
        result = five_minute_loss(args.budget)
        print(
            f"\n`charrnn train data/tinyshakespeare.txt --max-time {args.budget}`: best val loss "
            f"{result['val_loss']:.4f} nats/char ({result['val_bpc']:.4f} bits/char) after "
            f"{result['steps']} steps, {result['elapsed']:.0f} s including evaluation"
        )


if __name__ == "__main__":
    main()
