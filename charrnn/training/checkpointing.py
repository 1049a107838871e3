"""Writing a run's checkpoints and metrics (whether a resume fits the run is `resume.py`'s).

Only the writer (rank 0) touches files. The weights go first and the state last,
so a resume never starts from weights newer than its state; non-finite weights are
never saved over the last good checkpoint.
"""

from __future__ import annotations

from typing import Any

import torch

from charrnn.data.encoding import PreparedCorpus
from charrnn.distributed import World
from charrnn.errors import CharrnnError
from charrnn.model import CharRNN
from charrnn.store.checkpoint import FORMAT_NAME, FORMAT_VERSION, save_training_state, save_weights
from charrnn.store.run_dir import RunDir
from charrnn.store.run_state import RunState


class TrainingDiverged(CharrnnError):
    """Loss or gradients stayed non-finite for several steps in a row."""


class Checkpointer:
    """Saves one run's weights, state and metrics into its run directory (writer rank only)."""

    def __init__(self, run_dir: RunDir, corpus: PreparedCorpus, world: World, keep: int) -> None:
        self.run_dir = run_dir
        self.corpus = corpus
        self.world = world
        self.keep = keep

    def forget_metrics_after(self, step: int) -> None:
        """On resume: drop the records of work after the saved step, which will be redone."""
        if self.world.is_writer:
            self.run_dir.forget_metrics_after(step)

    def append_metrics(self, record: dict[str, Any]) -> None:
        """Add one evaluation record to metrics.jsonl."""
        if self.world.is_writer:
            self.run_dir.append_metrics(record)

    def check_finite(self, model: CharRNN, step: int) -> None:
        """Raise `TrainingDiverged` when a weight is not finite (nothing is saved from such weights)."""
        if not all(torch.isfinite(p).all() for p in model.parameters()):
            raise TrainingDiverged(
                f"the weights became non-finite at step {step}; nothing was saved over "
                f"the last good checkpoint in {self.run_dir.path}"
            )

    def save(self, model: CharRNN, state: RunState, info: dict[str, Any], is_best: bool) -> None:
        """Save the weights (latest, best when `is_best`, a step file with --keep), then the state.

        Raises `TrainingDiverged`, saving nothing, when a weight is not finite.
        """
        self.check_finite(model, state.counters.step)
        if not self.world.is_writer:
            return
        tokenizer = self.corpus.tokenizer
        save_weights(self.run_dir.latest, model, tokenizer, info)
        if is_best:
            save_weights(self.run_dir.best, model, tokenizer, info)
        if self.keep > 0:
            save_weights(self.run_dir.step_weights(state.counters.step), model, tokenizer, info)
            self.run_dir.prune_step_weights(self.keep)
        # The state goes last: a resume never starts from weights newer than its state.
        save_training_state(self.run_dir.state, state.to_dict(FORMAT_NAME, FORMAT_VERSION))
