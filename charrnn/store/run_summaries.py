"""Every run under a folder, summarised and ranked: what `charrnn runs` shows.

A run's state:
- "in progress": a live process holds the run's lock (a training is writing there);
- "finished": the last session ended on its own (its step or time budget was spent, or
  --early-stop ended it), as recorded in `end.json`;
- "stopped": it was interrupted (Ctrl-C, SIGTERM) or died, so `train --resume` can continue it.
Runs written before `end.json` existed are judged by their budget: step >= --max-steps, or at
least 3/4 of the time budget used, counts as finished.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from charrnn.config import TrainConfig
from charrnn.errors import CharrnnError, RunDirError
from charrnn.events import StopReason
from charrnn.store.run_dir import DEFAULT_RUNS_ROOT, RunDir

FINISHED, STOPPED, IN_PROGRESS = "finished", "stopped", "in progress"
STOPPING_REASONS = (StopReason.INTERRUPTED,)


@dataclass
class RunSummary:
    """One row of `charrnn runs`."""

    name: str
    path: str
    model: str  # e.g. "lstm 2x384", "lstm 3x512 dropout 0.25"
    tokenizer: str  # e.g. "char (65)"
    steps: int | None
    elapsed: float | None  # training seconds
    best_val_bpc: float | None
    best_val_loss: float | None
    state: str
    # Why the sizing rule chose this model (None when the user or --no-auto-size fixed it).
    sizing: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe."""
        return asdict(self)


def _judge_state(run_dir: RunDir, step: int | None, info: dict[str, Any]) -> str:
    if run_dir.is_locked():
        return IN_PROGRESS
    end = run_dir.read_end()
    if end is not None and end.get("step") == step:
        return STOPPED if end.get("reason") in STOPPING_REASONS else FINISHED
    saved_config = info.get("train_config")
    config = saved_config if isinstance(saved_config, dict) else {}
    try:
        # Validated: the file's values are only what it says (a max_time of "soon" must not
        # reach the arithmetic below).
        train_config = TrainConfig.from_dict(config).validate()
    except (CharrnnError, TypeError, ValueError):
        return STOPPED
    if train_config.max_steps is not None and isinstance(step, int) and step >= train_config.max_steps:
        return FINISHED
    budget = train_config.budget_seconds()
    elapsed = info.get("elapsed")
    if (
        train_config.max_steps is None
        and budget
        and isinstance(elapsed, (int, float))
        and elapsed >= 0.75 * budget
    ):
        return FINISHED
    return STOPPED


def summarise_run(folder: Path) -> RunSummary | None:
    """The row of one run directory, or None when it holds no weights (not a run)."""
    from charrnn.store.describe import describe_weights

    run_dir = RunDir(folder)
    latest = run_dir.latest if run_dir.latest.is_file() else run_dir.weights_for_sampling()
    if latest is None:
        if run_dir.is_locked():
            return RunSummary(
                name=folder.name,
                path=str(folder),
                model="",
                tokenizer="",
                steps=None,
                elapsed=None,
                best_val_bpc=None,
                best_val_loss=None,
                state=IN_PROGRESS,
            )
        return None
    try:
        summary = describe_weights(latest)
    except CharrnnError:
        return RunSummary(
            name=folder.name,
            path=str(folder),
            model="damaged",
            tokenizer="",
            steps=None,
            elapsed=None,
            best_val_bpc=None,
            best_val_loss=None,
            state=STOPPED,
        )
    model, tokenizer, training = summary["model"], summary["tokenizer"], summary["training"]
    return RunSummary(
        name=folder.name,
        path=str(folder),
        model=f"{model['kind']} {model['num_layers']}x{model['hidden_size']}"
        + (f" dropout {model['dropout']:g}" if model["dropout"] else "")
        + (" (sized)" if training.get("sizing") and training["sizing"]["chosen"] else ""),
        tokenizer=f"{tokenizer['kind']} ({tokenizer['vocab_size']})",
        steps=training["step"],
        elapsed=training["elapsed"],
        best_val_bpc=training["best_val_bpc"],
        best_val_loss=training["best_val_loss"],
        state=_judge_state(
            run_dir,
            training["step"],
            {"train_config": training["train_config"], "elapsed": training["elapsed"]},
        ),
        sizing=training["sizing"]["reason"] if training.get("sizing") else None,
    )


def list_runs(root: Path = DEFAULT_RUNS_ROOT) -> list[RunSummary]:
    """Every run directly under `root`, best validation bits/char first (runs without one last)."""
    root = Path(root)
    if not root.exists():
        raise RunDirError(f"no runs folder {root}: train a model first, or name the folder")
    if not root.is_dir():
        raise RunDirError(f"{root} is not a folder")
    summaries = []
    for folder in sorted(root.iterdir()):
        if folder.is_dir():
            row = summarise_run(folder)
            if row is not None:
                summaries.append(row)
    return sorted(
        summaries,
        key=lambda row: (
            row.best_val_bpc is None,
            row.best_val_bpc if row.best_val_bpc is not None else math.inf,
            row.name,
        ),
    )
