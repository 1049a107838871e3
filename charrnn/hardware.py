"""Which device, how many threads, and whether bf16 pays off: the machine's facts in one place."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import torch

from charrnn.config import DEVICES
from charrnn.errors import UsageProblem

# More threads than the machine has CPUs never make torch faster (they take turns on the same
# cores), and thousands of them break the process: --threads 30000 ended in libgomp's "Thread
# creation failed" and 100000 in a segmentation fault. Four per logical CPU leaves room to
# experiment (and for a CPU count that a container understates) and refuses the absurd.
THREADS_PER_CPU = 4


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


def max_threads() -> int:
    """The most threads charrnn gives torch on this machine: `THREADS_PER_CPU` per logical CPU."""
    return THREADS_PER_CPU * (os.cpu_count() or 1)


def check_threads(threads: int, source: str = "--threads") -> int:
    """`threads` when it is 1..`max_threads()`, else one `UsageProblem` naming `source`."""
    limit = max_threads()
    if isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= limit:
        raise UsageProblem(
            f"{source} must be 1..{limit} on this machine ({THREADS_PER_CPU} per CPU), got {threads!r}"
        )
    return threads


def default_threads(processes_on_this_machine: int = 1) -> int:
    """Threads for one process: OMP_NUM_THREADS when set, else its share of the physical cores.

    torchrun sets OMP_NUM_THREADS=1 for its workers unless the user set it; without it,
    N processes on one machine each get cores // N, never more threads than cores in all.
    An OMP_NUM_THREADS beyond `max_threads()` is refused as --threads would be.
    """
    try:
        from_environment = int(os.environ.get("OMP_NUM_THREADS", ""))
    except ValueError:
        from_environment = 0
    if from_environment > 0:
        return check_threads(from_environment, "OMP_NUM_THREADS")
    return max(1, physical_cores() // max(1, processes_on_this_machine))


def configure_threads(threads: int | None, processes_on_this_machine: int = 1) -> int:
    """Set torch's intra-op threads (default: `default_threads`) and return the number used.

    More threads than physical cores, or a second thread pool fighting the
    first, slows recurrent training badly (a 2-process run on 2 cores with 2
    threads each ran at a fraction of its speed); so inter-op work stays on one thread.
    """
    count = default_threads(processes_on_this_machine) if threads is None else check_threads(threads)
    torch.set_num_threads(count)
    with contextlib.suppress(RuntimeError):  # can only be set once per process, before any parallel work
        torch.set_num_interop_threads(1)
    return count


def resolve_device(name: str) -> torch.device:
    """Turn --device auto|cpu|cuda|mps into a device this machine has."""
    if name not in DEVICES:
        raise UsageProblem(f"--device must be one of {', '.join(DEVICES)}, got {name!r}")
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


def autocast(precision: str, device: torch.device):
    """The context the forward pass runs in: bf16 autocast for "bf16", nothing for "fp32"."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
