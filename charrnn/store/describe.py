"""What a checkpoint holds, read from its header alone: `charrnn info` and `charrnn runs`.

Only the safetensors header (the metadata) is read, never the tensors, so describing a
run costs the same whatever the model's size; `load_weights` checks the tensors when a
model is actually used.
"""

from __future__ import annotations

import datetime
import json
import math
import struct
from pathlib import Path
from typing import Any

from charrnn.data.tokenizers import Tokenizer
from charrnn.errors import CharrnnError, CheckpointError
from charrnn.store.checkpoint import (
    MAX_HEADER_BYTES,
    parameter_count,
    parse_metadata,
    read_metadata,
    reading,
)
from charrnn.store.run_dir import RunDir

CHAR_SAMPLE = 64


def read_header(path: Path) -> dict[str, str]:
    """The charrnn metadata of a weights file, reading only its header."""
    path = Path(path)
    with reading(path, "checkpoint"), open(path, "rb") as handle:
        start = handle.read(8)
        if len(start) == 8:
            (length,) = struct.unpack("<Q", start)
            if length <= MAX_HEADER_BYTES:  # a longer one is refused below, without reading it
                start += handle.read(length)
    metadata = read_metadata(start, path)
    _check_length(start, path)
    return metadata


def _check_length(start: bytes, path: Path) -> None:
    """A file cut short (or padded) is damaged: its size must be where the last tensor ends."""
    header = json.loads(start[8:])
    ends = [
        entry["data_offsets"][1]
        for name, entry in header.items()
        if name != "__metadata__" and isinstance(entry, dict) and "data_offsets" in entry
    ]
    expected = len(start) + max(ends, default=0)
    try:
        size = path.stat().st_size
    except OSError as error:
        raise CheckpointError(f"cannot read {path}: {error.strerror or error}") from None
    if size != expected:
        raise CheckpointError(
            f"{path} is corrupted (it holds {size} bytes where its header describes {expected})"
        )


def _char_sample(tokenizer: Tokenizer) -> str | None:
    chars = getattr(tokenizer, "chars", None)
    if not chars:
        return None
    shown = "".join(
        c if c.isprintable() and c != " " else {" ": "␠", "\n": "⏎", "\t": "⇥"}.get(c, "·")
        for c in chars[:CHAR_SAMPLE]
    )
    return shown + ("…" if len(chars) > CHAR_SAMPLE else "")


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        number = float(value)  # an integer too large for a float (10**400) overflows
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


# The training summary is what the file says, so each value is taken only when it has the type
# it is written with (None otherwise): a step of "many" or a corpus name that is a list would
# otherwise stop `info` and `runs` halfway, and their readers expect these types.
def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _parent(value: Any) -> dict[str, str | None] | None:
    if not isinstance(value, dict):
        return None
    return {"name": _text(value.get("name")), "weights_sha256": _text(value.get("weights_sha256"))}


def _sizing(value: Any) -> dict[str, Any] | None:
    """What the sizing rule chose and why: {"reason", "chosen", "steps", "passes", "measured"},
    each as written ("measured": the speed probe's figures the plan was made from, when it ran)."""
    if not isinstance(value, dict):
        return None
    described: dict[str, Any] = {
        "reason": _text(value.get("reason")),
        "chosen": _numbers(value.get("chosen")),
        "steps": _count(value.get("steps")),
        "passes": _finite(value.get("passes")),
    }
    measured = value.get("measured")
    if isinstance(measured, dict):
        described["measured"] = {
            "reference_steps_per_second": _finite(measured.get("reference_steps_per_second")),
            "step_costs": _numbers(measured.get("step_costs")),
        }
    return described


def _numbers(value: Any) -> dict[str, int | float]:
    """The entries of a saved {name: number} map that are numbers (not flags), names as text."""
    return {
        str(name): number
        for name, number in (value.items() if isinstance(value, dict) else [])
        if isinstance(number, (int, float)) and not isinstance(number, bool)
    }


def describe_weights(path: Path) -> dict[str, Any]:
    """A JSON-safe summary of a weights file: model, tokeniser, training (from its metadata)."""
    path = Path(path)
    model_config, tokenizer, info = parse_metadata(read_header(path), path)
    saved_train_config = info.get("train_config")
    train_config = saved_train_config if isinstance(saved_train_config, dict) else {}
    saved_at = _text(info.get("saved_at"))
    if saved_at is None:
        try:
            saved_at = datetime.datetime.fromtimestamp(path.stat().st_mtime, datetime.timezone.utc).isoformat(
                timespec="seconds"
            )
        except OSError:
            saved_at = None
    return {
        "path": str(path),
        "model": {
            "kind": model_config.model,
            "num_layers": model_config.num_layers,
            "hidden_size": model_config.hidden_size,
            "embedding_size": model_config.embedding_size,
            "dropout": model_config.dropout,
            "parameters": parameter_count(model_config),
        },
        "tokenizer": {
            "kind": tokenizer.kind,
            "vocab_size": tokenizer.vocab_size,
            "chars": _char_sample(tokenizer),
        },
        "training": {
            "corpus": _text(info.get("corpus")),
            "corpus_fingerprint": _text(info.get("corpus_fingerprint")),
            "step": _count(info.get("step")),
            "elapsed": _finite(info.get("elapsed")),
            "best_val_loss": _finite(info.get("best_val_loss")),
            "best_val_bpc": _finite(info.get("best_val_bpc")),
            "precision": _text(info.get("precision")) or _text(train_config.get("precision")),
            "saved_at": saved_at,
            "charrnn_version": _text(info.get("charrnn_version")),
            # A fine-tuning run's starting model: {"name", "weights_sha256"} (None for a fresh run).
            "parent": _parent(info.get("parent")),
            # What the sizing rule chose for a new run and why (None: nothing was chosen).
            "sizing": _sizing(info.get("sizing")),
            "train_config": train_config,
        },
    }


def run_files(run_dir: Path) -> list[dict[str, Any]]:
    """The files of a run directory with their sizes, by name."""
    files = []
    try:
        entries = sorted(Path(run_dir).iterdir())
    except OSError:
        return []
    for entry in entries:
        try:
            if entry.is_file():
                files.append({"name": entry.name, "bytes": entry.stat().st_size})
        except OSError:
            continue
    return files


def corpus_fingerprint_of_run(run_dir: Path) -> str | None:
    """The corpus hash saved in the run's training state, if there is a readable one."""
    state_path = RunDir(run_dir).state
    if not state_path.is_file():
        return None
    from charrnn.store.checkpoint import load_training_state

    try:
        return _text(load_training_state(state_path).get("corpus_fingerprint"))
    except CharrnnError:
        return None


def describe(path: Path) -> dict[str, Any]:
    """`charrnn info`: the weights file's summary, and the run directory's files when it is in one."""
    summary = describe_weights(path)
    folder = Path(path).parent
    in_run = (folder / "metrics.jsonl").exists() or RunDir(folder).state.exists()
    summary["run_dir"] = str(folder) if in_run else None
    summary["files"] = run_files(folder) if in_run else []
    if in_run and not summary["training"]["corpus_fingerprint"]:
        summary["training"]["corpus_fingerprint"] = corpus_fingerprint_of_run(folder)
    return summary
