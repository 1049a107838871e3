"""The run directory: where a training run keeps its files, and who may write there.

runs/<name>/
  best.safetensors      weights with the best validation loss (what `sample` reads)
  latest.safetensors    weights of the latest checkpoint
  step-0000400.safetensors ...  the last --keep step checkpoints
  state.pt              everything needed to resume exactly (torch.load weights_only)
  metrics.jsonl         one JSON line per evaluation, appended as they come
  .lock                 held (flock) by the one training writing here
  end.json              how the last training session ended (reason and step)
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from pathlib import Path
from typing import Any, TextIO

from charrnn.atomic import (
    atomic_write_bytes,
    create_temp_file,
    kind_of,
    remove_quietly,
    remove_stale_temp_files,
)
from charrnn.errors import CheckpointError, RunDirError, UsageProblem
from charrnn.events import StopReason
from charrnn.store.metrics_log import (
    MetricsReading,
    append_metrics_record,
    forget_records_after,
    read_metrics_file,
)

DEFAULT_RUNS_ROOT = Path("runs")
BEST_WEIGHTS = "best.safetensors"
LATEST_WEIGHTS = "latest.safetensors"
TRAINING_STATE = "state.pt"
METRICS = "metrics.jsonl"
LOCK = ".lock"
END_RECORD = "end.json"
STEP_WEIGHTS = re.compile(r"step-(\d+)\.safetensors")


class RunDirBusy(RunDirError):
    """Another live training holds the run directory's lock."""


class RunDir:
    """Paths and housekeeping of one run directory."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock_handle: TextIO | None = None

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

    def run_files(self) -> list[str]:
        """Names of the files a run writes that the folder holds: state, weights, metrics."""
        if not self.path.is_dir():
            return []
        names = sorted(path.name for path in self.path.glob("*.safetensors"))
        return names + [path.name for path in (self.state, self.metrics) if path.exists()]

    def refuse_to_start_over(self) -> None:
        """Raise unless a new run may start here: a run's files are never overwritten or appended to.

        Call it before taking the lock (it then changes nothing in the folder, not even `.lock`)
        and again once the lock is held (a run may have saved in between).
        """
        if self.state.exists():
            raise RunDirError(
                f"{self.path} already holds a run: add --resume to continue it, or choose another --out"
            )
        found = self.run_files()
        if not found:
            return
        holder = self.live_lock_holder() if self._lock_handle is None else None
        if holder is not None:  # a live training that has not saved its state yet
            raise RunDirBusy(_busy_message(self.path, holder))
        shown = ", ".join(found[:3]) + (f" and {len(found) - 3} more" if len(found) > 3 else "")
        raise RunDirError(
            f"{self.path} holds {shown} but no {TRAINING_STATE} to resume from, and a new run would "
            "overwrite them: choose another --out, or move those files away"
        )

    def live_lock_holder(self) -> str | None:
        """The pid of the live process holding the lock, or None; never changes the lock file."""
        if not self.is_locked():
            return None
        try:
            return (self.path / LOCK).read_text(encoding="utf-8").strip() or "unknown"
        except OSError:
            return "unknown"

    def prepare(self) -> None:
        """Create the folder and prove it is writable, before any training starts."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            # A temp file, so that if we are killed right here the next run removes it.
            descriptor, probe = create_temp_file(self.path, "write-probe")
            os.close(descriptor)
            remove_quietly(probe)
        except FileExistsError:
            raise RunDirError(
                f"cannot use {self.path} as the run directory: {_not_a_folder(self.path)}"
            ) from None
        except OSError as error:
            raise RunDirError(
                f"cannot write to run directory {self.path}: {error.strerror or error}"
            ) from None

    def lock(self) -> None:
        """Take the run's lock, or raise `RunDirBusy` if another live process holds it.

        The kernel frees the lock when its holder dies, however it dies. Once the lock is
        ours, temp files left by a killed run are removed: only the lock holder may do that,
        since another writer's temp files are live.
        """
        holder = self.try_lock()
        if holder is not None:
            raise RunDirBusy(_busy_message(self.path, holder))

    def try_lock(self) -> str | None:
        """Take the lock and return None, or return the pid of the live process that holds it."""
        try:
            # The handle outlives this call: it holds the flock until unlock() closes it.
            handle = open(self.path / LOCK, "a+", encoding="utf-8")  # noqa: SIM115
        except OSError as error:
            raise RunDirError(f"cannot lock run directory {self.path}: {error.strerror or error}") from None
        try:
            _flock_exclusive_soon(handle.fileno())
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            return holder
        except OSError as error:  # e.g. ENOLCK: a file system that refuses locks
            handle.close()
            raise RunDirError(f"cannot lock run directory {self.path}: {error.strerror or error}") from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        self._lock_handle = handle
        self.remove_stray_temp_files()
        return None

    def remove_stray_temp_files(self) -> None:
        """Delete temp files that interrupted writes left behind (called by the lock holder).

        Those of the run's own files go whoever made them (only the lock holder writes them);
        any other charrnn temp file goes once its process is gone.
        """
        remove_stale_temp_files(self.path, is_owned=_is_run_file_name)

    def unlock(self) -> None:
        """Release the lock (closing the file releases the flock)."""
        if self._lock_handle is not None:
            self._lock_handle.close()
            self._lock_handle = None

    def read_metrics(self) -> list[dict[str, Any]]:
        """The evaluation records so far; `read_metrics_reading` also tells which lines are damaged."""
        return read_metrics_file(self.metrics).records

    def read_metrics_reading(self) -> MetricsReading:
        """The evaluation records so far and the numbers of the lines that could not be read."""
        return read_metrics_file(self.metrics)

    def append_metrics(self, record: dict[str, Any]) -> None:
        """Append one evaluation record to metrics.jsonl (see `metrics_log.append_metrics_record`)."""
        append_metrics_record(self.metrics, record)

    def forget_metrics_after(self, step: int) -> None:
        """On resume: drop the records of steps after `step`, keep every other line as it is
        (damaged lines included; see `metrics_log.forget_records_after`)."""
        forget_records_after(self.metrics, step)

    def prune_step_weights(self, keep: int) -> None:
        """Delete all but the newest `keep` step checkpoints (best and latest are separate files).

        Newest by step number, not by name: `step-10000000` sorts before `step-9999999` as text.
        """
        numbered = []
        for path in self.path.glob("step-*.safetensors"):
            match = STEP_WEIGHTS.fullmatch(path.name)
            if match:
                numbered.append((int(match.group(1)), path))
        numbered.sort()
        for _, old in numbered[: max(0, len(numbered) - keep)]:
            with contextlib.suppress(OSError):
                old.unlink()

    def is_locked(self) -> bool:
        """True while a live process holds the run's lock (a training is writing here)."""
        return _flock_held(self.path / LOCK)

    def record_end(self, reason: StopReason, step: int) -> None:
        """Note how a training session ended, and at which step (the reason's plain string value)."""
        atomic_write_bytes(
            self.path / END_RECORD,
            json.dumps({"reason": StopReason(reason).value, "step": step}).encode("utf-8"),
        )

    def read_end(self) -> dict[str, Any] | None:
        """The last `record_end`, or None (none written, or unreadable)."""
        try:
            record = json.loads((self.path / END_RECORD).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return record if isinstance(record, dict) else None

    def weights_for_sampling(self) -> Path | None:
        """The best weights, else the latest, else None."""
        for candidate in (self.best, self.latest):
            if candidate.is_file():
                return candidate
        return None


def claim_default_run_dir(runs_root: Path, name: str) -> RunDir:
    """Prepare and lock runs/<name>, or the first of <name>-2, -3, ... that is free.

    Free means holding no run's files and not locked by a live training (one that has not
    saved yet holds only its lock). The look is repeated under the lock, so two trainings
    started together never share a folder.
    """
    number = 1
    while True:
        candidate = RunDir(runs_root / (name if number == 1 else f"{name}-{number}"))
        number += 1
        if candidate.run_files():
            continue
        candidate.prepare()
        if candidate.try_lock() is not None:
            continue
        if candidate.run_files():
            candidate.unlock()
            continue
        return candidate


def resolve_weights(given: str | None, runs_root: Path = DEFAULT_RUNS_ROOT) -> Path:
    """The weights file of MODEL: a file, a run directory, a bundled model's name, or else the most
    recent run under `runs/`, or else the bundled model. An existing path wins over a bundled name."""
    from charrnn.store.bundled import DEFAULT_BUNDLED_MODEL, bundled_weights

    if given is not None:
        if given == "":  # Path("") is the current folder, which the user did not name
            raise UsageProblem(
                'the model is an empty name (""): give a .safetensors file, a run directory or a '
                "bundled model"
            )
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
        if not path.is_file():  # reading a FIFO would wait for a writer forever, a device too
            raise CheckpointError(
                f"{path} is a {kind_of(path.stat().st_mode)}, not a checkpoint: give a .safetensors "
                "file or a run directory"
            )
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
            "`charrnn train data/tinyshakespeare.txt`, or name a checkpoint"
        )
    return max(candidates)[1]


# A process that only looks (`is_locked`) holds a shared lock for microseconds: a lock
# still refused after this long belongs to a training.
def _not_a_folder(path: Path) -> str:
    """Why `path`, which exists, cannot hold a run (it is left as it is)."""
    try:
        found = os.stat(path)
    except FileNotFoundError:
        return f"it is a symlink to {os.readlink(path)}, which does not exist"
    except OSError as error:  # e.g. ELOOP
        return error.strerror or str(error)
    return f"it is a {kind_of(found.st_mode)}, not a folder"


def _is_run_file_name(name: str) -> bool:
    return name in (BEST_WEIGHTS, LATEST_WEIGHTS, TRAINING_STATE, METRICS, END_RECORD) or bool(
        STEP_WEIGHTS.fullmatch(name)
    )


LOCK_PATIENCE_SECONDS = 0.2


def _flock_exclusive_soon(descriptor: int) -> None:
    """Take an exclusive flock, retrying briefly; raise BlockingIOError if it stays held."""
    import fcntl

    deadline = time.monotonic() + LOCK_PATIENCE_SECONDS
    while True:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.01)


def _busy_message(path: Path, holder: str) -> str:
    return (
        f"another training is already writing to {path} (pid {holder}); "
        "wait for it to finish or choose another --out"
    )


def _flock_held(path: Path) -> bool:
    """True while some live process holds a flock on `path`.

    Looking takes a shared lock for an instant; `try_lock` waits out such an instant,
    so `charrnn runs` looking never makes a training that starts at that moment fail.
    """
    import fcntl

    try:
        with open(path, "rb") as handle:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            return False
    except OSError:
        return False
