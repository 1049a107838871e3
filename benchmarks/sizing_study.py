"""The sizing study: which model and regularisation give the best validation loss for a corpus and a budget.

Every run is a real `charrnn train` in a subprocess; every result is appended to
benchmarks/results/sizing.jsonl (one JSON object a line, never rewritten), so the study grows
across sessions and machines. docs/experiments/ writes it up.

    # 1. What a step of each shape costs, relative to the default 2 x 384 (timed in turn, medians):
    python benchmarks/sizing_study.py costs --shapes 2x256,2x384,2x512,3x512,2x768
    # 2. How many steps a minute the default shape makes here (`charrnn train`, idle machine, 2 threads):
    python benchmarks/sizing_study.py speed CORPUS
    # 3. Runs of a budget, as steps (so two can share the machine, one thread each):
    python benchmarks/sizing_study.py run CORPUS --minutes 15 --jobs 2 \
        "--dropout 0.2" "--hidden-size 512 --dropout 0.25"
    # 4. The table of everything measured so far:
    python benchmarks/sizing_study.py table
    # 5. What the defaults choose at each budget (training/sizing.py), run where not on record,
    #    and whether more time ever gave a worse model:
    python benchmarks/sizing_study.py defaults CORPUS --budgets 2,5,15,30
    # 6. What sizing costs before the first step (the speed probe and the rule):
    python benchmarks/sizing_study.py choice-time
    # 7. How often the choice at each budget changes with the probe's reading (idle machine):
    python benchmarks/sizing_study.py choices CORPUS --rounds 20
    # 8. The speed probe's short reading against the training loop's sustained speed (idle machine):
    python benchmarks/sizing_study.py probe-vs-loop CORPUS

A budget of M minutes runs as `--max-steps` = M x (steps a minute of the default shape on an
idle machine) / (the shape's step cost relative to the default shape: the sizing rule's for a
shape of its ladder, so a grid run of that shape is the run the rule plans; else the latest
`costs` record). The loss after N steps
does not depend on how busy the machine is, so runs can go two at a time on one thread each,
and the result is the one a timed run of M minutes gives where the machine makes that many steps.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results" / "sizing.jsonl"
SPEED_PROBE_SECONDS = 60
DEFAULT_SHAPE = "2x384"
DEFAULT_BATCH = 8


def cpu_name() -> str:
    """The CPU's model name (lscpu's), which the figures depend on."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# The model options `charrnn train` starts from before sizing (ModelConfig's defaults).
DEFAULT_MODEL_OPTIONS = {"model": "lstm", "num_layers": 2, "hidden_size": 384, "embedding_size": 64}


def corpus_identity(corpus: Path) -> dict:
    """Name, size, SHA-256, characters and vocabulary (distinct characters) of a corpus file."""
    data = corpus.read_bytes()
    text = data.decode("utf-8")
    return {
        "corpus": corpus.stem,
        "corpus_bytes": len(data),
        "corpus_sha256": hashlib.sha256(data).hexdigest(),
        "corpus_chars": len(text),
        "vocab_size": len(set(text)),
    }


def commit() -> str:
    """The charrnn commit the runs are made with."""
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    return done.stdout.strip() or "unknown"


def append(record: dict) -> None:
    """Add one result to the results file (one line, appended: earlier results are never rewritten)."""
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with RESULTS.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(record, sort_keys=True) + "\n")


def read_results() -> list[dict]:
    """Every result so far."""
    if not RESULTS.exists():
        return []
    return [json.loads(line) for line in RESULTS.read_text(encoding="utf-8").splitlines() if line.strip()]


def train(corpus: Path, options: list[str], out: Path, threads: int | None) -> list[dict]:
    """Run `charrnn train` and return its metrics records."""
    command = [sys.executable, "-m", "charrnn", "train", str(corpus), "--out", str(out), *options]
    if threads:
        command += ["--threads", str(threads)]
    env = {**os.environ, "CHARRNN_CACHE_DIR": str(out.parent / "cache")}
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    lines = (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def shape_options(shape: str) -> list[str]:
    """`2x384` -> --num-layers 2 --hidden-size 384."""
    layers, hidden = shape.lower().split("x")
    return ["--num-layers", layers, "--hidden-size", hidden]


def measure_speed(args: argparse.Namespace) -> None:
    """`charrnn train CORPUS --max-time 60s`, the default shape: its steps a minute, evaluation included."""
    identity = corpus_identity(args.corpus)
    # The shape is given: left open, sizing would choose the smallest shape for a minute's budget.
    options = ["--max-time", f"{SPEED_PROBE_SECONDS}s", *shape_options(DEFAULT_SHAPE), "--dropout", "0"]
    with tempfile.TemporaryDirectory() as folder:
        records = train(args.corpus, options, Path(folder) / "run", None)
    last = records[-1]
    record = {
        "kind": "speed",
        "shape": DEFAULT_SHAPE,
        "steps_per_minute": round(last["step"] / last["elapsed"] * 60, 1),
        "chars_per_second": last["chars_per_second"],
        "cpu": cpu_name(),
        "commit": commit(),
        "date": datetime.date.today().isoformat(),
        **identity,
    }
    append(record)
    print(json.dumps(record), flush=True)


def measure_costs(args: argparse.Namespace) -> None:
    """Time one training step of each shape and batch in turn, several rounds; record each median
    over the default shape at the default batch."""
    import torch

    from charrnn.config import ModelConfig, TrainConfig
    from charrnn.model import CharRNN
    from charrnn.training.loop import build_optimizer

    torch.set_num_threads(args.threads)
    shapes = args.shapes.split(",")
    batches = [int(batch) for batch in args.batches.split(",")]
    points = [(shape, batch) for shape in shapes for batch in batches]
    reference_point = (DEFAULT_SHAPE, DEFAULT_BATCH)
    if reference_point not in points:
        points.append(reference_point)
    vocab, seq_len = args.vocab, 128
    built = {}
    for shape, batch in points:
        layers, hidden = (int(part) for part in shape.split("x"))
        model = CharRNN(ModelConfig(num_layers=layers, hidden_size=hidden, vocab_size=vocab))
        data = (torch.randint(0, vocab, (batch, seq_len)), torch.randint(0, vocab, (batch, seq_len)))
        built[(shape, batch)] = (model, build_optimizer(model, TrainConfig(), torch.device("cpu")), *data)

    def step(model, optimizer, inputs, targets) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.precision == "bf16"):
            logits, _ = model(inputs, model.initial_state(inputs.shape[0]))
        loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, vocab), targets.reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    seconds: dict[tuple[str, int], list[float]] = {point: [] for point in points}
    for _ in range(args.rounds):  # in turn, so the machine's drift touches every point alike
        for point in points:
            step(*built[point])
            started = time.perf_counter()
            for _ in range(3):
                step(*built[point])
            seconds[point].append((time.perf_counter() - started) / 3)
    reference = statistics.median(seconds[reference_point])
    for shape, batch in points:
        record = {
            "kind": "step-cost",
            "shape": shape,
            "batch_size": batch,
            "relative_cost": round(statistics.median(seconds[(shape, batch)]) / reference, 3),
            "parameters": sum(p.numel() for p in built[(shape, batch)][0].parameters()),
            "vocab_size": vocab,
            "threads": args.threads,
            "precision": args.precision,
            "cpu": cpu_name(),
            "commit": commit(),
            "date": datetime.date.today().isoformat(),
        }
        append(record)
        print(json.dumps(record), flush=True)


def parameters(shape: str, vocab_size: int = 65, embedding_size: int = 64) -> int:
    """Weights of an LSTM of this shape (layers x hidden) with charrnn's embedding and output layer."""
    layers, hidden = (int(part) for part in shape.split("x"))
    recurrent = sum(
        4 * hidden * ((embedding_size if layer == 0 else hidden) + hidden + 2) for layer in range(layers)
    )
    return vocab_size * embedding_size + recurrent + hidden * vocab_size + vocab_size


def latest(
    kind: str, shape: str, batch_size: int = DEFAULT_BATCH, vocab_size: int = 65, threads: int | None = None
) -> dict | None:
    """The latest record of a kind for a shape (and batch, vocabulary and, if given, threads) on
    this CPU, else on any CPU. Records written before batches or vocabularies were measured are of
    the default batch and tinyshakespeare's 65 tokens."""
    records = [
        r
        for r in read_results()
        if r["kind"] == kind
        and r["shape"] == shape
        and r.get("batch_size", DEFAULT_BATCH) == batch_size
        and r.get("vocab_size", 65) == vocab_size
        and (threads is None or r.get("threads") == threads)
    ]
    here = [r for r in records if r["cpu"] == cpu_name()]
    chosen = here or records
    return chosen[-1] if chosen else None


def steps_for(
    minutes: float,
    shape: str,
    reference_steps_per_minute: float | None,
    batch_size: int = DEFAULT_BATCH,
    vocab_size: int = 65,
) -> tuple[int, dict]:
    """The steps an M-minute run of a shape (at a batch) makes, and where the figures came from."""
    speed = latest("speed", DEFAULT_SHAPE)
    per_minute = reference_steps_per_minute or (speed["steps_per_minute"] if speed else None)
    if per_minute is None:
        raise SystemExit("no speed measured: run `speed` on an idle machine, or pass --steps-per-minute")
    from charrnn.training.sizing import PROBED_SHAPE, ladder_cost

    is_reference = shape == DEFAULT_SHAPE and batch_size == DEFAULT_BATCH
    layers, hidden = (int(part) for part in shape.split("x"))
    is_probed = (layers, hidden) == PROBED_SHAPE and batch_size == DEFAULT_BATCH
    rule_cost = ladder_cost(layers, hidden) if batch_size == DEFAULT_BATCH else None
    # Read only when needed: the rule's ladder covers every shape the study runs at batch 8.
    measured = None if is_reference or rule_cost is not None else latest("step-cost", shape, batch_size)
    if is_reference:
        cost, cost_source = 1.0, "default shape"
    elif is_probed:
        # The rule takes this shape's cost from the speed probe, which times it at the run's
        # threads and vocabulary: the study takes it from a `costs` record measured so (and only
        # for this shape, so another shape's run needs no such record).
        cost = probed_costs(vocab_size)[PROBED_SHAPE]
        cost_source = f"step-cost record at {run_threads()} threads and {vocab_size} tokens (as the probe)"
    elif rule_cost is not None:
        # A shape of the rule's ladder runs the steps the rule plans for it (`defaults` does the
        # same), so a grid run and the rule's choice of one shape are the same run.
        cost, cost_source = rule_cost, "the sizing rule's step cost"
    elif measured is not None:
        cost, cost_source = measured["relative_cost"], f"step-cost record of {measured['date']}"
    elif batch_size != DEFAULT_BATCH:
        raise SystemExit(f"no step cost of {shape} at batch {batch_size}: run `costs --batches {batch_size}`")
    else:
        # No timing yet: a step's work grows with the weights it multiplies (measured costs have
        # run 0.9-1.15 times this ratio), so the parameter ratio stands in until `costs` has run.
        cost, cost_source = parameters(shape) / parameters(DEFAULT_SHAPE), "parameter ratio"
    source = {
        "default_steps_per_minute": per_minute,
        "relative_cost": round(cost, 3),
        "cost_source": cost_source,
    }
    return max(1, round(minutes * per_minute / cost)), source


def run_threads() -> int:
    """The threads a real `charrnn train` uses here (every physical core), which `speed` measured."""
    from charrnn.hardware import default_threads

    return default_threads()


def probed_costs(vocab_size: int) -> dict[tuple[int, int], float]:
    """The step costs the speed probe measures for a run here (the rule's PROBED_SHAPE), from the
    latest `costs` record at this machine's threads and this vocabulary, as the rule's
    `SizingInputs.measured_costs`."""
    from charrnn.training.sizing import PROBED_SHAPE

    shape, threads = f"{PROBED_SHAPE[0]}x{PROBED_SHAPE[1]}", run_threads()
    record = latest("step-cost", shape, DEFAULT_BATCH, vocab_size, threads)
    if record is None:
        raise SystemExit(
            f"no step cost of {shape} at {threads} threads and {vocab_size} tokens: run "
            f"`costs --shapes {shape} --threads {threads} --vocab {vocab_size}` on an idle machine"
        )
    return {PROBED_SHAPE: record["relative_cost"]}


# Records of runs whose validation was at most --eval-tokens (250,000) in pieces spread over the
# split, as charrnn evaluates since 2026-12-05, say so. Before, a bigger split was evaluated on its
# first 250,000 tokens, a different measure: on 100 MB of code it swung by 0.42 nats between
# evaluations. Up to a split of 250,000 tokens (a corpus of about 2.5 MB) both are the whole split.
SPREAD_VALIDATION = "spread"
WHOLE_SPLIT_UP_TO_BYTES = 2_500_000


def measured_alike(record: dict) -> bool:
    """Whether a run's validation figure is the measure of today's charrnn."""
    return record.get("validation") == SPREAD_VALIDATION or record["corpus_bytes"] <= WHOLE_SPLIT_UP_TO_BYTES


def option_value(options: list[str], name: str, default: str) -> str:
    return options[options.index(name) + 1] if name in options else default


def run_setting(
    args: argparse.Namespace,
    setting: str,
    seed: int,
    folder: Path,
    identity: dict,
    steps: int | None = None,
    stops_early: bool = False,
) -> dict:
    """Train one setting for the steps of its budget, or for `steps` (the steps the sizing rule
    planned; `stops_early`: a run it ends before the budget)."""
    options = shlex.split(setting)
    shape = f"{option_value(options, '--num-layers', '2')}x{option_value(options, '--hidden-size', '384')}"
    batch_size = int(option_value(options, "--batch-size", str(DEFAULT_BATCH)))
    budget_steps, source = steps_for(
        args.minutes, shape, args.steps_per_minute, batch_size, identity["vocab_size"]
    )
    if steps is None:
        steps = budget_steps
    else:
        source["steps_source"] = "planned (the sizing rule or --stop-after)"
        if stops_early:
            source["stops_before_budget"] = True
    out = folder / f"run-{abs(hash((setting, seed)))}"
    # Validation: 250,000 tokens of the split (the default), which is all of it up to a 2.5 MB
    # corpus; on 100 MB, twenty evaluations of the whole 10 MB split would take hours. Runs before
    # 2026-12-05 evaluated the split's first 250,000 tokens, later ones pieces spread over it.
    budget = ["--max-steps", str(steps), "--seed", str(seed)]
    budget += ["--eval-every", str(max(1, steps // args.evaluations))]
    records = train(args.corpus, [*options, *budget], out, threads=1 if args.jobs > 1 else None)
    best = min(records, key=lambda r: r["val_loss"])
    tokens_seen = steps * batch_size * int(option_value(options, "--seq-len", "128"))
    record = {
        "kind": "run",
        "options": setting,
        "shape": shape,
        "batch_size": batch_size,
        "minutes": args.minutes,
        "steps": steps,
        "tokens_seen": tokens_seen,
        "seed": seed,
        "best_val_loss": best["val_loss"],
        "best_val_bpc": best["val_bpc"],
        "best_step": best["step"],
        "final_val_loss": records[-1]["val_loss"],
        "validation": SPREAD_VALIDATION,
        "curve": [[r["step"], round(r["val_loss"], 4)] for r in records],
        "cpu": cpu_name(),
        "commit": commit(),
        "date": datetime.date.today().isoformat(),
        **source,
        **identity,
    }
    append(record)
    return record


def run(args: argparse.Namespace) -> None:
    identity = corpus_identity(args.corpus)
    seeds = [int(seed) for seed in args.seeds.split(",")]
    with tempfile.TemporaryDirectory() as folder, ThreadPoolExecutor(args.jobs) as pool:
        jobs = [
            pool.submit(
                run_setting,
                args,
                setting,
                seed,
                Path(folder),
                identity,
                args.stop_after,
                bool(args.stop_after),
            )
            for seed in seeds
            for setting in args.settings
        ]
        for job in jobs:
            record = job.result()
            print(
                f"{record['corpus']} {record['minutes']} min  {record['options'] or '(defaults)'}  "
                f"seed {record['seed']}: best {record['best_val_loss']:.4f} at step {record['best_step']} "
                f"of {record['steps']}",
                flush=True,
            )


def sizing_inputs(
    identity: dict, minutes: float, reference_steps_per_second: float, measured_costs: dict
) -> Any:
    """What `charrnn train CORPUS --max-time M` gives the sizing rule (CORPUS as `corpus_identity`
    describes it) at this speed of the reference shape and these probed step costs."""
    from charrnn.config import TrainConfig
    from charrnn.training.sizing import SizingInputs

    config = TrainConfig()
    chars = identity["corpus_chars"]
    return SizingInputs(
        train_tokens=chars - int(chars * config.val_fraction),
        chars_per_token=1.0,
        vocab_size=identity["vocab_size"],
        measured_costs=measured_costs,
        budget_seconds=minutes * 60,
        max_steps=None,
        reference_steps_per_second=reference_steps_per_second,
        batch_size=config.batch_size,
        seq_len=config.seq_len,
        model_options=DEFAULT_MODEL_OPTIONS,
    )


def chosen_setting(identity: dict, minutes: float, steps_per_minute: float) -> tuple[str, str, int, bool]:
    """The options `charrnn train CORPUS --max-time M` chooses (CORPUS as `corpus_identity`
    describes it, so the text is not read again for each budget) on a machine that makes
    `steps_per_minute` steps of the default shape (evaluation included), its reason, the steps
    the rule expects the run to make (from the rule's own step costs, so the stand-in is the run
    the rule planned), and whether the run stops before its budget."""
    from charrnn.training.sizing import STEP_SHARE_OF_BUDGET, choose_size

    # The probe measures steps alone; the budget's steps include evaluation.
    reference_steps_per_second = steps_per_minute / 60 / STEP_SHARE_OF_BUDGET
    costs = probed_costs(identity["vocab_size"])
    choice = choose_size(sizing_inputs(identity, minutes, reference_steps_per_second, costs))
    names = {
        "num_layers": "--num-layers",
        "hidden_size": "--hidden-size",
        "dropout": "--dropout",
        "lr": "--lr",
    }
    options = " ".join(f"{names[name]} {value:g}" for name, value in choice.chosen.items() if name in names)
    return options, choice.reason, choice.steps, "max_steps" in choice.chosen


def defaults(args: argparse.Namespace) -> None:
    """Run (or look up) what the defaults choose at each budget; print the best losses in order."""
    identity = corpus_identity(args.corpus)
    per_minute = args.steps_per_minute or (latest("speed", DEFAULT_SHAPE) or {}).get("steps_per_minute")
    if per_minute is None:
        raise SystemExit("no speed measured: run `speed` on an idle machine, or pass --steps-per-minute")
    rows = []
    for minutes in (float(text) for text in args.budgets.split(",")):
        options, reason, steps, stops_early = chosen_setting(identity, minutes, per_minute)
        # A run that ends before its budget is the same run whatever the budget: any record of
        # its options with those steps is its result.
        runs = [
            r
            for r in read_results()
            # A run of a patched charrnn (a trial of a change the package does not have) is not the rule's.
            if r["kind"] == "run"
            and r["corpus_sha256"] == identity["corpus_sha256"]
            and "patched" not in r
            and measured_alike(r)
        ]
        done = [
            r
            for r in runs
            if abs(r["steps"] - steps) <= max(2, steps // 200) and _same_options(r["options"], options)
        ]
        # Else, with --nearest, a run of the same shape within 6% of the steps and 0.02 of the
        # dropout (the rule's constants moved a little after it was made): the table says which.
        stand_in = ""
        if not done and args.nearest:
            near = [
                r
                for r in runs
                if abs(r["steps"] - steps) <= steps * 0.06 and _near_options(r["options"], options)
            ]
            if near:
                done = [min(near, key=lambda r: abs(r["steps"] - steps))]
                stand_in = f" (nearest run: `{done[0]['options']}`, {done[0]['steps']:,} steps)"
        if not done and not args.dry_run:
            run_args = argparse.Namespace(
                **{**vars(args), "minutes": minutes, "steps_per_minute": per_minute}
            )
            with tempfile.TemporaryDirectory() as folder:
                done = [run_setting(run_args, options, 1, Path(folder), identity, steps, stops_early)]
        best = statistics.median(r["best_val_loss"] for r in done) if done else None
        rows.append((minutes, options, steps, best, stand_in))
        print(f"{minutes:g} min: {reason}", file=sys.stderr, flush=True)
    print("| budget | chosen | steps | median best val loss (nats/char) |")
    print("|---|---|---|---|")
    for minutes, options, steps, best, stand_in in rows:
        loss = "not run" if best is None else f"{best:.4f}{stand_in}"
        print(f"| {minutes:g} min | `{options}` | {steps:,} | {loss} |")
    measured = [best for *_, best, _ in rows if best is not None]
    in_order = all(later <= earlier for earlier, later in zip(measured, measured[1:]))
    print(f"more time never worse: {'yes' if in_order else 'NO'} ({len(measured)} budgets measured)")
    if args.fit:
        points = [(minutes, best) for minutes, _, _, best, _ in rows if best is not None]
        print(fitted_budget_curve(points))


def fitted_budget_curve(points: list[tuple[float, float]]) -> str:
    """The defaults' best loss against the budget, fitted as L(t) = floor + a * t^-alpha (least
    squares for floor and a, alpha by a grid search), with what it predicts: the floor is the loss
    the defaults would approach given unlimited time on this machine."""
    import numpy as np

    if len(points) < 3:
        return "fit: needs 3 measured budgets or more"
    minutes = np.array([t for t, _ in points], dtype=float)
    losses = np.array([loss for _, loss in points], dtype=float)
    best: tuple[float, float, np.ndarray] | None = None
    for alpha in np.linspace(0.05, 3.0, 591):
        design = np.vstack([np.ones_like(minutes), minutes**-alpha]).T
        coefficients = np.linalg.lstsq(design, losses, rcond=None)[0]
        error = float(((design @ coefficients - losses) ** 2).mean() ** 0.5)
        if best is None or error < best[0]:
            best = (error, float(alpha), coefficients)
    assert best is not None
    error, alpha, (floor, scale) = best
    predictions = ", ".join(f"{t:g} min {floor + scale * t**-alpha:.4f}" for t in (15, 30, 60, 120))
    return (
        f"fit: L(t) = {floor:.4f} + {scale:.4f} * t^-{alpha:.2f} (t in minutes; rms error {error:.4f}); "
        f"predicts {predictions}"
    )


def _parsed_options(text: str) -> dict[str, float]:
    words = shlex.split(text)
    # An option left out is at the fixed default it had when the run was made.
    values = {"--num-layers": 2.0, "--hidden-size": 384.0, "--dropout": 0.0, "--batch-size": 8.0}
    return values | {words[i]: float(words[i + 1]) for i in range(0, len(words) - 1, 2)}


def _same_options(recorded: str, wanted: str) -> bool:
    """The same options, in any order and number format."""
    return _parsed_options(recorded) == _parsed_options(wanted)


def _near_options(recorded: str, wanted: str) -> bool:
    """The same options but for a dropout at most 0.02 away."""
    have, want = _parsed_options(recorded), _parsed_options(wanted)
    dropout_close = abs(have.pop("--dropout") - want.pop("--dropout")) <= 0.02 + 1e-9
    return dropout_close and have == want


def choice_time(args: argparse.Namespace) -> None:
    """Time what sizing adds before the first step (the speed probe and the rule), medians of runs."""
    import torch

    from charrnn.config import TrainConfig
    from charrnn.hardware import configure_threads, resolve_precision
    from charrnn.training.sizing import SizingInputs, choose_size
    from charrnn.training.speed_probe import measure_speed

    threads = configure_threads(None)
    device = torch.device("cpu")
    seconds = []
    for _ in range(args.rounds):
        started = time.perf_counter()
        speed = measure_speed(TrainConfig(), 65, device, resolve_precision("auto", device))
        choose_size(
            SizingInputs(
                train_tokens=1_000_000, chars_per_token=1.0, vocab_size=65, budget_seconds=900,
                max_steps=None, reference_steps_per_second=speed.reference_steps_per_second,
                batch_size=8, seq_len=128, measured_costs=speed.relative_costs,
            )
        )  # fmt: skip
        seconds.append(time.perf_counter() - started)
    print(
        f"sizing before the first step: median {statistics.median(seconds):.3f} s "
        f"(min {min(seconds):.3f}, max {max(seconds):.3f}; {args.rounds} runs, {threads} threads, "
        f"{cpu_name()})"
    )


def probe_against_loop(args: argparse.Namespace) -> None:
    """The speed probe's raw reading of the reference shape against the steps a second `charrnn
    train` makes with it between evaluations, in turn, several rounds. The sizing rule plans with
    the probe's reading; its thresholds come from the study's runs, which make the loop's steps."""
    import torch

    from charrnn.config import TrainConfig
    from charrnn.hardware import configure_threads, resolve_precision
    from charrnn.training.speed_probe import measure_speed

    threads = configure_threads(None)
    identity = corpus_identity(args.corpus)
    device = torch.device("cpu")
    ratios = []
    for round_number in range(args.rounds):
        readings = [
            measure_speed(
                TrainConfig(), identity["vocab_size"], device, resolve_precision("auto", device)
            ).reference_steps_per_second
            for _ in range(args.probes)
        ]
        with tempfile.TemporaryDirectory() as folder:
            # Evaluations of a few tokens, so the time between them is training steps.
            options = [*shape_options(DEFAULT_SHAPE), "--dropout", "0", "--max-steps", str(args.steps)]
            options += ["--eval-every", str(args.steps // 4), "--eval-tokens", "2000", "--seed", "1"]
            records = train(args.corpus, options, Path(folder) / "run", None)
        first, last = records[0], records[-1]
        loop = (last["step"] - first["step"]) / (last["elapsed"] - first["elapsed"])
        ratios.append(loop / statistics.median(readings))
        print(
            f"round {round_number + 1}: probe median {statistics.median(readings):.2f} steps/s "
            f"({min(readings):.2f}-{max(readings):.2f}), loop {loop:.2f} steps/s, ratio {ratios[-1]:.3f}",
            flush=True,
        )
    print(
        f"loop / probe: median {statistics.median(ratios):.3f} over {args.rounds} rounds "
        f"({threads} threads, {cpu_name()})"
    )


def choices(args: argparse.Namespace) -> None:
    """Probe this machine's speed several times, as `charrnn train` does, and show what the rule
    chooses for CORPUS at each budget with each reading: a choice that changes between readings
    of the same idle machine sits on one of the rule's thresholds."""
    import collections

    import torch

    from charrnn.config import TrainConfig
    from charrnn.hardware import configure_threads, resolve_precision
    from charrnn.training.sizing import choose_size
    from charrnn.training.speed_probe import measure_speed

    threads = configure_threads(None)
    identity = corpus_identity(args.corpus)
    config = TrainConfig()
    vocab_size = identity["vocab_size"]
    device = torch.device("cpu")
    budgets = [float(text) for text in args.budgets.split(",")]
    seen: dict[float, collections.Counter] = {minutes: collections.Counter() for minutes in budgets}
    readings = []
    for _ in range(args.rounds):
        speed = measure_speed(config, vocab_size, device, resolve_precision("auto", device))
        readings.append(speed.reference_steps_per_second)
        for minutes in budgets:
            choice = choose_size(
                sizing_inputs(identity, minutes, speed.reference_steps_per_second, speed.relative_costs)
            )
            chosen = choice.chosen
            words = f"{chosen['num_layers']} x {chosen['hidden_size']}, dropout {chosen['dropout']:g}"
            seen[minutes][words + (f", lr {chosen['lr']:g}" if "lr" in chosen else "")] += 1
    print(
        f"{identity['corpus']}: {args.rounds} readings of the probe, {threads} threads, {cpu_name()}: "
        f"reference steps a second median {statistics.median(readings):.2f} "
        f"(min {min(readings):.2f}, max {max(readings):.2f})"
    )
    print("| budget (minutes) | chosen (readings) |")
    print("|---|---|")
    for minutes in budgets:
        counted = "; ".join(f"{words} ({count})" for words, count in seen[minutes].most_common())
        print(f"| {minutes:g} | {counted} |")


def table(args: argparse.Namespace) -> None:
    runs = [r for r in read_results() if r["kind"] == "run"]
    groups: dict[tuple, list[dict]] = {}
    for record in runs:
        options = record["options"]
        if "patched" in record:  # a trial of a change the package does not have: say which
            settings = " ".join(f"{k}={v}" for k, v in sorted(record["patched"]["settings"].items()))
            options = f"{options} (patched: {settings})"
        if not measured_alike(record):
            options = f"{options} (validation: the split's first 250,000 tokens)"
        groups.setdefault((record["corpus"], record["minutes"], options), []).append(record)
    print("| corpus | minutes | options | median best val loss | seeds | steps |")
    print("|---|---|---|---|---|---|")
    for (corpus, minutes, options), records in sorted(groups.items()):
        losses = [r["best_val_loss"] for r in records]
        print(
            f"| {corpus} | {minutes:g} | `{options or '(defaults)'}` | {statistics.median(losses):.4f} "
            f"| {len(records)} | {records[-1]['steps']} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    speed = commands.add_parser("speed", help="steps a minute of the defaults (idle machine, all cores)")
    speed.add_argument("corpus", type=Path)
    costs = commands.add_parser("costs", help="each shape's step cost relative to the default shape")
    costs.add_argument("--shapes", default="2x256,2x384,2x512,3x512,2x768")
    costs.add_argument("--batches", default=str(DEFAULT_BATCH), help="batch sizes, comma-separated")
    costs.add_argument("--threads", type=int, default=1)
    costs.add_argument("--precision", choices=["fp32", "bf16"], default="bf16")
    costs.add_argument("--rounds", type=int, default=5)
    costs.add_argument(
        "--vocab",
        type=int,
        default=65,
        help="distinct tokens (65: tinyshakespeare; the output layer grows with it)",
    )
    runs = commands.add_parser("run", help="train each setting for a budget, record the best val loss")
    runs.add_argument("corpus", type=Path)
    runs.add_argument("settings", nargs="+", help="train options of each setting, quoted ('' = defaults)")
    runs.add_argument("--minutes", type=float, required=True)
    runs.add_argument("--seeds", default="1")
    runs.add_argument("--jobs", type=int, default=2)
    runs.add_argument("--evaluations", type=int, default=20, help="evaluations per run (default 20)")
    runs.add_argument(
        "--stop-after",
        type=int,
        default=None,
        # As sizing ends a run that would read the text too often.
        help="steps of a run that ends before its budget",
    )
    runs.add_argument(
        "--steps-per-minute",
        type=float,
        default=None,
        help="steps a minute of the default shape (default: the latest `speed` record)",
    )
    chosen = commands.add_parser("defaults", help="what the defaults choose at each budget, run and compared")
    chosen.add_argument("corpus", type=Path)
    chosen.add_argument("--budgets", default="2,5,15,30", help="minutes, comma-separated")
    chosen.add_argument("--jobs", type=int, default=2, help="above 1: one thread (as the study's runs)")
    chosen.add_argument(
        "--nearest",
        action="store_true",
        help="where the exact choice has no record, show the nearest run (6%% of the steps, 0.02 of dropout)",
    )
    chosen.add_argument("--evaluations", type=int, default=20)
    chosen.add_argument("--steps-per-minute", type=float, default=None)
    chosen.add_argument("--dry-run", action="store_true", help="print the choices and what is on record")
    chosen.add_argument(
        "--fit", action="store_true", help="fit the best losses against the budget and print the floor"
    )
    timing = commands.add_parser("choice-time", help="the time sizing adds before training (idle machine)")
    timing.add_argument("--rounds", type=int, default=5)
    against = commands.add_parser(
        "probe-vs-loop", help="the speed probe's reading against the training loop's speed (idle machine)"
    )
    against.add_argument("corpus", type=Path)
    against.add_argument("--rounds", type=int, default=3)
    against.add_argument("--probes", type=int, default=5, help="probe readings per round")
    against.add_argument("--steps", type=int, default=1200, help="training steps per round")
    spread = commands.add_parser(
        "choices", help="what the rule chooses with each of several speed readings (idle machine)"
    )
    spread.add_argument("corpus", type=Path)
    spread.add_argument("--budgets", default="2,5,15,30", help="minutes, comma-separated")
    spread.add_argument("--rounds", type=int, default=20)
    commands.add_parser("table", help="print every result so far")
    args = parser.parse_args()
    handlers = {"speed": measure_speed, "costs": measure_costs, "run": run, "table": table}
    handlers.update({"defaults": defaults, "choice-time": choice_time, "choices": choices})
    handlers["probe-vs-loop"] = probe_against_loop
    handlers[args.command](args)


if __name__ == "__main__":
    main()
