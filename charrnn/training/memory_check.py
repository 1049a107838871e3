"""Will the model fit? Refuse sizes that pass validation but cannot be allocated, before allocating.

`--num-layers 16 --hidden-size 16384` is a valid config that asks for hundreds of GB: without this
check, training dies deep inside PyTorch's allocator (or the kernel's OOM killer ends it). The
estimate counts what AdamW training holds for certain: the weights, their gradients and AdamW's
two moments, all fp32 (16 bytes a parameter). Activations come on top, so the figure is a floor.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from charrnn.config import DEFAULT_SUBWORD_VOCAB_SIZE, SENTENCEPIECE_KINDS, ModelConfig, TrainConfig
from charrnn.errors import CharrnnError

# fp32 weights + fp32 gradients + AdamW's exp_avg and exp_avg_sq (fp32 each).
BYTES_PER_PARAMETER = 4 * 4


class NotEnoughMemory(CharrnnError):
    """The model and its optimiser would need more memory than the machine has available."""


def count_parameters_of(model_config: ModelConfig, vocab_size: int) -> int:
    """Parameters of a model of this shape and vocabulary, counted without building it."""
    from charrnn.store.checkpoint import parameter_count  # imports torch: only when training anyway

    return parameter_count(dataclasses.replace(model_config, vocab_size=vocab_size))


def training_memory_bytes(model_config: ModelConfig, vocab_size: int) -> int:
    """Bytes the weights, gradients and AdamW moments of this model need (fp32), activations not counted."""
    return count_parameters_of(model_config, vocab_size) * BYTES_PER_PARAMETER


def smallest_vocab_size(train_config: TrainConfig) -> int:
    """A vocabulary size the tokeniser will reach at least, known before the corpus is read."""
    if train_config.tokenizer == "byte":
        return 256
    if train_config.tokenizer in SENTENCEPIECE_KINDS:
        return train_config.vocab_size or DEFAULT_SUBWORD_VOCAB_SIZE
    return 1  # char: the corpus decides


def available_memory_bytes(device_type: str = "cpu", device=None) -> int | None:
    """Memory free for a new allocation on this device, or None when it cannot be told.

    CPU (and Apple's MPS, which shares it): MemAvailable of /proc/meminfo (what the kernel can
    give without swapping), else the free physical pages from os.sysconf. CUDA: free bytes on the GPU.
    """
    if device_type == "cuda":
        try:
            import torch

            free, _total = torch.cuda.mem_get_info(device)
            return int(free)
        except Exception:  # no driver, no device: the allocator will tell later
            return None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):
        return None


def check_training_fits(
    model_config: ModelConfig, vocab_size: int, device_type: str = "cpu", device=None, replicas: int = 1
) -> None:
    """Raise `NotEnoughMemory` when the model and optimiser (times `replicas` sharing this memory)
    cannot fit in what is available; do nothing when the available memory is unknown."""
    needed = training_memory_bytes(model_config, vocab_size) * max(1, replicas)
    available = available_memory_bytes(device_type, device)
    if available is None or needed <= available:
        return
    where = "on the GPU" if device_type == "cuda" else "here"
    copies = f" for {replicas} processes" if replicas > 1 else ""
    parameters = count_parameters_of(model_config, vocab_size)
    raise NotEnoughMemory(
        f"this model is too big: its {format_count(parameters)} parameters need at least "
        f"{format_bytes(needed)}{copies} (weights, gradients and AdamW's two moments in fp32) but "
        f"{format_bytes(available)} is available {where}; choose a smaller --hidden-size or --num-layers"
    )


def format_bytes(count: int) -> str:
    """A byte count for people: 512 MB, 3.2 GB, 1.1 TB (powers of 1000)."""
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{count} bytes"


def format_count(count: int) -> str:
    """A parameter count for people: 1.2 M, 34.4 G."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return str(count)
