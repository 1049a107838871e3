"""Models that ship with charrnn as package data, named by a short word (see README.md here)."""

from __future__ import annotations

from pathlib import Path

FOLDER = Path(__file__).resolve().parent
DEFAULT_BUNDLED_MODEL = "shakespeare"
BUNDLED_MODELS = {"shakespeare": FOLDER / "shakespeare.safetensors"}


def bundled_weights(name: str) -> Path | None:
    """The weights file of the bundled model called `name`, or None when there is no such model."""
    path = BUNDLED_MODELS.get(name)
    return path if path is not None and path.is_file() else None


def is_bundled(path: Path) -> bool:
    """Whether `path` is one of the bundled models' files."""
    return Path(path).resolve() in {bundled.resolve() for bundled in BUNDLED_MODELS.values()}
