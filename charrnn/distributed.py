"""Training across processes and machines with PyTorch's own engine (DistributedDataParallel).

`torchrun` starts one process per worker and tells each who it is through
environment variables (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, ...).
`World.from_env()` reads them; without them charrnn runs as one process and
nothing here does anything. The trainer asks this module for the few
collective operations it needs, so the training loop reads the same in both cases:

- the process group (gloo on CPU, nccl on CUDA) with a timeout, so a lost peer
  ends the job with an error instead of hanging it;
- `agree`: every rank takes the same stop decision at the same step (a rank that
  stopped alone would leave the others waiting in a collective forever);
- sums for evaluation, and gathers of per-rank state for the checkpoint.

The engine has no authentication: run it on trusted networks only.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import signal
import socket
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from charrnn.errors import CharrnnError

DEFAULT_TIMEOUT_SECONDS = 600.0
# After SIGTERM, how long a worker may take to stop and save before it exits anyway.
# torchrun kills the survivors of a failed worker with SIGKILL 30 s after its SIGTERM.
TERMINATION_GRACE_SECONDS = 20.0


class DistributedError(CharrnnError):
    """Another process of a distributed run failed, or the process group could not form."""


@dataclass(frozen=True)
class World:
    """Who this process is among the processes of one training run."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    local_world_size: int = 1  # processes of this run on this machine (they share its cores)

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_writer(self) -> bool:
        """Only rank 0 writes files, metrics and the progress display."""
        return self.rank == 0

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> World:
        """The world torchrun describes in the environment, or a world of one."""
        env = os.environ if environ is None else environ
        if "RANK" not in env or "WORLD_SIZE" not in env:
            return cls()
        try:
            world = cls(
                rank=int(env["RANK"]),
                local_rank=int(env.get("LOCAL_RANK", "0")),
                world_size=int(env["WORLD_SIZE"]),
                local_world_size=max(1, int(env.get("LOCAL_WORLD_SIZE", "1"))),
            )
        except ValueError:
            raise DistributedError(
                "RANK, LOCAL_RANK, WORLD_SIZE and LOCAL_WORLD_SIZE must be integers "
                "(they are set by torchrun)"
            ) from None
        if world.world_size < 1 or not 0 <= world.rank < world.world_size:
            raise DistributedError(f"RANK {world.rank} is outside WORLD_SIZE {world.world_size}")
        return world

    # -- the process group ---------------------------------------------------------------

    def device_for(self, device: torch.device) -> torch.device:
        """The device this rank trains on: its own GPU (LOCAL_RANK) on a multi-GPU machine."""
        if self.is_distributed and device.type == "cuda":
            return torch.device("cuda", self.local_rank % max(1, torch.cuda.device_count()))
        return device

    @contextlib.contextmanager
    def process_group(self, device: torch.device) -> Iterator[None]:
        """Join the process group (gloo on CPU, nccl on CUDA) for the duration of the block."""
        if not self.is_distributed:
            yield
            return
        import torch.distributed as dist

        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        seconds = float(os.environ.get("CHARRNN_DIST_TIMEOUT", DEFAULT_TIMEOUT_SECONDS))
        timeout = datetime.timedelta(seconds=seconds)
        try:
            store, rank, world_size = next(dist.rendezvous("env://", timeout=timeout))
            # torchrun keeps one key-value store across restarts: without a prefix per attempt,
            # a restarted worker would read the dead workers' addresses and fail to connect.
            attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
            store = dist.PrefixStore(f"charrnn/attempt-{attempt}", store)
            dist.init_process_group(
                backend=backend, store=store, rank=rank, world_size=world_size, timeout=timeout
            )
        except (RuntimeError, ValueError) as error:
            raise DistributedError(f"cannot join the distributed run: {_first_line(error)}") from None
        try:
            yield
        except RuntimeError as error:
            if not _is_communication_error(error):
                raise
            raise DistributedError(
                f"lost contact with another training process: {_first_line(error)}"
            ) from None
        finally:
            with contextlib.suppress(Exception):  # tearing down after a failure must not hide the failure
                dist.destroy_process_group()

    # -- collectives ---------------------------------------------------------------------

    def agree(self, *flags: float) -> list[float]:
        """Every rank gets the maximum of each value over all ranks (one small all-reduce)."""
        return self._all_reduce(flags, "MAX")

    def sum(self, *values: float) -> list[float]:
        """Every rank gets the sum of each value over all ranks."""
        return self._all_reduce(values, "SUM")

    def _all_reduce(self, values: tuple[float, ...], operation: str) -> list[float]:
        if not self.is_distributed:
            return list(values)
        import torch.distributed as dist

        reduced = torch.tensor(values, dtype=torch.float64, device=self._collective_device())
        dist.all_reduce(reduced, op=getattr(dist.ReduceOp, operation))
        return reduced.tolist()

    def gather_along(self, tensor: torch.Tensor, dim: int) -> torch.Tensor:
        """The ranks' tensors (same shape) concatenated along `dim`, in rank order, on every rank."""
        if not self.is_distributed:
            return tensor
        import torch.distributed as dist

        device = self._collective_device()
        local = tensor.detach().to(device).contiguous()
        parts = [torch.empty_like(local) for _ in range(self.world_size)]
        dist.all_gather(parts, local)
        return torch.cat(parts, dim=dim).cpu()

    def _collective_device(self) -> torch.device:
        import torch.distributed as dist

        if dist.get_backend() == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")


def wrap_model(model: torch.nn.Module, world: World, device: torch.device) -> torch.nn.Module:
    """The model DistributedDataParallel-wrapped for training (the model itself when alone)."""
    if not world.is_distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [device.index] if device.type == "cuda" else None
    # DDP copies rank 0's weights to every rank here, so all start identical.
    return DistributedDataParallel(model, device_ids=device_ids)


class TerminationWatchdog:
    """Makes sure a worker told to stop (SIGTERM) exits within a grace period.

    torchrun sends SIGTERM to the survivors when a worker dies. A survivor may be
    blocked inside a collective with the dead peer, where Python signal handlers
    cannot run; Python's C-level handler still writes the signal number to the
    wakeup fd at once, and this thread, reading that fd, ends the process if the
    orderly stop has not happened in `grace` seconds. The last checkpoint is intact.
    """

    def __init__(self, grace: float = TERMINATION_GRACE_SECONDS) -> None:
        self.grace = grace
        self._reader: socket.socket | None = None
        self._writer: socket.socket | None = None
        self._previous_fd = -1

    def install(self) -> None:
        """Start watching (call from the main thread, after the signal handlers are installed)."""
        self._reader, self._writer = socket.socketpair()
        self._writer.setblocking(False)
        self._previous_fd = signal.set_wakeup_fd(self._writer.fileno(), warn_on_full_buffer=False)
        threading.Thread(target=self._watch, name="charrnn-sigterm-watchdog", daemon=True).start()

    def uninstall(self) -> None:
        """Stop watching."""
        if self._writer is not None:
            signal.set_wakeup_fd(self._previous_fd)
            self._writer.close()
            self._writer = None

    def _watch(self) -> None:
        assert self._reader is not None
        while True:
            try:
                data = self._reader.recv(64)
            except OSError:
                return
            if not data:
                return
            if signal.SIGTERM in data:
                timer = threading.Timer(self.grace, self._give_up)
                timer.daemon = True
                timer.start()
                return

    def _give_up(self) -> None:
        """End the process, saying why: without a line, a survivor killed here left no word of it."""
        # os.write, not print: the main thread may hold sys.stderr's lock, blocked mid-write.
        message = (
            f"Error: still running {self.grace:g} s after SIGTERM (waiting for another training "
            "process?): stopped without saving; the last checkpoint is intact\n"
        )
        with contextlib.suppress(OSError):
            os.write(2, message.encode())
        os._exit(128 + signal.SIGTERM)


def end_worker_process(code: object) -> None:
    """End a torchrun worker with `code` (a SystemExit code) without Python's interpreter shutdown.

    Gloo's worker threads free each finished collective a moment after it returns,
    and freeing one releases Python tensors, which takes the GIL. If that happens
    while the interpreter is shutting down, the thread is torn down inside a C++
    destructor and the process aborts ("terminate called without an active exception",
    SIGABRT), which torchrun reports as a failed run. It happened in about 1 run in 10
    of a 2-process test on this machine. Every file of the run is complete and
    synced by now, so skipping the shutdown loses nothing: flush the output and exit.
    (So `atexit` handlers do not run in torchrun workers: clean up before returning.)
    """
    try:
        if not World.from_env().is_distributed:
            return
    except DistributedError:  # bad variables: the error was already reported
        return
    if code is None:
        status = 0
    elif isinstance(code, int):
        status = code
    else:  # sys.exit("message") prints it and exits 1
        print(code, file=sys.stderr)
        status = 1
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe must not stop the exit
            stream.flush()
    os._exit(status)


def _is_communication_error(error: RuntimeError) -> bool:
    """True for the errors a collective raises when a peer died or the network failed."""
    import torch.distributed as dist

    if isinstance(error, (dist.DistError, dist.DistBackendError)):
        return True
    text = str(error).lower()
    return any(word in text for word in ("gloo", "nccl", "connection", "timed out", "peer"))


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0][:300] if text else type(error).__name__
