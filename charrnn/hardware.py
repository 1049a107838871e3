"""Which device, how many threads, and whether bf16 pays off: the machine's facts in one place."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .errors import UsageProblem


def physical_cores() -> int:
    """Physical cores this process may run on (hyperthread siblings counted once)."""
    try:
        allowed = sorted(os.sched_getaffinity(0))
    except AttributeError:
        return max(1, (os.cpu_count() or 2) // 2)
    cores = set()
    for cpu in allowed:
        siblings = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list")
        try:
            cores.add(siblings.read_text().strip())
        except OSError:
            cores.add(str(cpu))
    return max(1, len(cores))


def configure_threads(threads: int | None) -> int:
    """Set torch's intra-op threads (default: physical cores) and return the number used.

    More threads than physical cores, or a second thread pool fighting the
    first, slows recurrent training badly; so inter-op work stays on one thread.
    """
    count = threads or physical_cores()
    torch.set_num_threads(count)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass  # can only be set once per process, before any parallel work
    return count


def resolve_device(name: str) -> torch.device:
    """Turn --device auto|cpu|cuda|mps into a device this machine has."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageProblem("--device cuda: no CUDA GPU is available here (try --device cpu)")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UsageProblem("--device mps: Apple's MPS backend is not available here (try --device cpu)")
    return torch.device(name)


def cpu_has_fast_bf16() -> bool:
    """True when the CPU multiplies bf16 in hardware (AMX or AVX512-BF16), where autocast pays off."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(flag in flags for flag in (" amx_bf16", " avx512_bf16"))


def resolve_precision(precision: str, device: torch.device) -> str:
    """Turn --precision auto|fp32|bf16 into fp32 or bf16 for this device."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if device.type == "cpu" and cpu_has_fast_bf16():
        return "bf16"
    return "fp32"
