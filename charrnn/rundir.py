"""The run directory: where a training run keeps its files, and who may write there.

    runs/<name>/
      best.safetensors      weights with the best validation loss (what `sample` reads)
      latest.safetensors    weights of the latest checkpoint
      step-000400.safetensors ...  the last --keep step checkpoints
      state.pt              everything needed to resume exactly (torch.load weights_only)
      metrics.jsonl         one JSON line per evaluation
      .lock                 held (flock) by the one training writing here
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Optional

from .atomic import TEMP_MARKER, atomic_write_bytes, is_temp_file
from .errors import CheckpointError, RunDirError

DEFAULT_RUNS_ROOT = Path("runs")
BEST_WEIGHTS = "best.safetensors"
LATEST_WEIGHTS = "latest.safetensors"
TRAINING_STATE = "state.pt"
METRICS = "metrics.jsonl"
LOCK = ".lock"


class RunDir:
    """Paths and housekeeping of one run directory."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock_handle = None

    @property
    def best(self) -> Path:
        return self.path / BEST_WEIGHTS

    @property
    def latest(self) -> Path:
        return self.path / LATEST_WEIGHTS

    @property
    def state(self) -> Path:
        return self.path / TRAINING_STATE

    @property
    def metrics(self) -> Path:
        return self.path / METRICS

    def step_weights(self, step: int) -> Path:
        """The weights file kept for one step."""
        return self.path / f"step-{step:07d}.safetensors"

    def prepare(self) -> None:
        """Create the folder and prove it is writable, before any training starts."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            # Named like a temp file, so that if we are killed right here the next run removes it.
            probe = self.path / f".write-probe{TEMP_MARKER}{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as error:
            raise RunDirError(
                f"cannot write to run directory {self.path}: {error.strerror or error}") from None

    def lock(self) -> None:
        """Take the run's lock, or raise if another live process holds it (the kernel frees it on death).

        Once the lock is ours, temp files left by a killed run are removed: only
        the lock holder may do that, since another writer's temp files are live.
        """
        import fcntl  # POSIX only; imported here so the module loads everywhere

        try:
            handle = open(self.path / LOCK, "a+", encoding="utf-8")
        except OSError as error:
            raise RunDirError(f"cannot lock run directory {self.path}: {error.strerror or error}") from None
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise RunDirError(
                f"another training is already writing to {self.path} (pid {holder}); "
                "wait for it to finish or choose another --out") from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        self._lock_handle = handle
        self.remove_stray_temp_files()

    def remove_stray_temp_files(self) -> None:
        """Delete temp files that an interrupted atomic write left behind."""
        for leftover in self.path.iterdir():
            if is_temp_file(leftover):
                try:
                    leftover.unlink()
                except OSError:
                    pass

    def unlock(self) -> None:
        """Release the lock (closing the file releases the flock)."""
        if self._lock_handle is not None:
            self._lock_handle.close()
            self._lock_handle = None

    def read_metrics(self) -> list[dict[str, Any]]:
        """The evaluation records so far (a damaged line is skipped, not fatal)."""
        try:
            text = self.metrics.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return []
        except OSError as error:
            raise RunDirError(f"cannot read {self.metrics}: {error.strerror or error}") from None
        records = []
        for line in text.splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                records.append(record)
        return records

    def append_metrics(self, record: dict[str, Any]) -> None:
        """Add one evaluation record as a JSON line (the file is rewritten atomically)."""
        self._write_metrics(self.read_metrics() + [record])

    def forget_metrics_after(self, step: int) -> None:
        """Drop records of steps after `step`: a resumed run will evaluate them again."""
        records = self.read_metrics()
        kept = [r for r in records if isinstance(r.get("step"), int) and r["step"] <= step]
        if len(kept) != len(records):
            self._write_metrics(kept)

    def _write_metrics(self, records: list[dict[str, Any]]) -> None:
        # Strict JSON, so that jq, pandas and browsers read it: a value that is not a finite
        # number (the train loss of an interval whose every step was skipped) becomes null.
        text = "".join(json.dumps(_finite_or_null(record), allow_nan=False) + "\n" for record in records)
        atomic_write_bytes(self.metrics, text.encode("utf-8"))

    def prune_step_weights(self, keep: int) -> None:
        """Delete all but the newest `keep` step checkpoints (best and latest are separate files)."""
        kept = sorted(self.path.glob("step-*.safetensors"))
        for old in kept[:max(0, len(kept) - keep)]:
            try:
                old.unlink()
            except OSError:
                pass

    def weights_for_sampling(self) -> Optional[Path]:
        """The best weights, else the latest, else None."""
        for candidate in (self.best, self.latest):
            if candidate.is_file():
                return candidate
        return None


def resolve_weights(given: Optional[str], runs_root: Path = DEFAULT_RUNS_ROOT) -> Path:
    """The weights file of MODEL: a file, a run directory, a bundled model's name, or else the most
    recent run under `runs/`, or else the bundled model. An existing path wins over a bundled name."""
    from .pretrained import DEFAULT_BUNDLED_MODEL, bundled_weights

    if given is not None:
        path = Path(given)
        if not path.exists() and bundled_weights(given) is not None:
            return bundled_weights(given)  # type: ignore[return-value]
        if path.is_dir():
            weights = RunDir(path).weights_for_sampling()
            if weights is None:
                raise CheckpointError(f"no checkpoint in {path} (expected {BEST_WEIGHTS})")
            return weights
        if not path.exists():
            raise CheckpointError(f"checkpoint not found: {path}")
        return path
    candidates = []
    if runs_root.is_dir():
        for run in runs_root.iterdir():
            weights = RunDir(run).weights_for_sampling() if run.is_dir() else None
            if weights is not None:
                candidates.append((weights.stat().st_mtime, weights))
    if not candidates and bundled_weights(DEFAULT_BUNDLED_MODEL) is not None:
        return bundled_weights(DEFAULT_BUNDLED_MODEL)  # type: ignore[return-value]
    if not candidates:
        raise CheckpointError(
            f"no trained model under {runs_root}/: train one first, e.g. "
            "`charrnn train data/tinyshakespeare.txt`, or name a checkpoint")
    return max(candidates)[1]


def _finite_or_null(record: dict[str, Any]) -> dict[str, Any]:
    return {key: None if isinstance(value, float) and not math.isfinite(value) else value
            for key, value in record.items()}
