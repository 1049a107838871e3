"""The run state: the one list of what a run saves in `state.pt` and restores on resume.

`RunState` is that list. `to_dict` gives the plain dict `torch.save` writes (tensors,
numbers, strings, lists and dicts only, so `torch.load(weights_only=True)` reads it);
`from_dict` reads one back, filling fields that older files lack with the value that
reproduces how those runs trained. The checkpoint's field check (`required_fields`)
is derived from the same dataclass, so nothing is listed twice. `checkpoint.read_saved_state` /
`parse_saved_state` are the one place a loaded state is read: they give a `SavedState`
whose configs and tokeniser are parsed objects, not the JSON strings the file holds.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict

import torch

from charrnn.config import ModelConfig, TrainConfig
from charrnn.data.tokenizers import Tokenizer, tokenizer_from_dict
from charrnn.distributed import World
from charrnn.errors import CharrnnError, CheckpointError


@dataclass
class IntervalStats:
    """Sums over the steps since the last evaluation; saved with the state so a resume reports the same."""

    loss_sum: float = 0.0
    good_steps: int = 0
    grad_norm_sum: float = 0.0  # pre-clip global gradient norms
    grad_norm_max: float = 0.0

    def add(self, loss: float, grad_norm: float) -> None:
        """Count one step whose loss and gradient were finite."""
        self.loss_sum += loss
        self.good_steps += 1
        self.grad_norm_sum += grad_norm
        self.grad_norm_max = max(self.grad_norm_max, grad_norm)

    def mean_loss(self) -> float:
        """Mean training loss of the interval (NaN when no step was finite)."""
        return self.loss_sum / self.good_steps if self.good_steps else math.nan

    def mean_grad_norm(self) -> float:
        """Mean pre-clip gradient norm of the interval (NaN when no step was finite)."""
        return self.grad_norm_sum / self.good_steps if self.good_steps else math.nan


REQUIRED = {"required": True}


@dataclass
class Counters:
    """The bookkeeping of a run that the loop updates as it goes (saved flat in the state)."""

    # REQUIRED: in every state file since format 1 (the others were added later).
    step: int = field(default=0, metadata=REQUIRED)
    best_val_loss: float = field(default=math.inf, metadata=REQUIRED)
    best_val_bpc: float = field(default=math.inf, metadata=REQUIRED)
    last_eval_step: int = -1
    skipped_steps: int = 0  # non-finite steps, over the whole run
    bad_steps_in_a_row: int = 0
    evals_without_improvement: int = 0  # for --early-stop
    # What an evaluation (on the shared clock) and a step cost: a resumed run keeps its
    # budget's reserve for them, so resuming a run whose budget is spent stays done.
    eval_clock_seconds: float = 0.0
    step_seconds: float = 0.0
    interval: IntervalStats = field(default_factory=IntervalStats)


@dataclass
class RunState:
    """Everything needed to continue a run exactly from `counters.step`.

    Fields without a default must be in every state file; the others were added
    later and get their default when an older file lacks them.
    """

    counters: Counters
    elapsed: float  # training seconds of all sessions so far
    model_config: str  # JSON of ModelConfig
    train_config: str  # JSON of TrainConfig
    tokenizer: str  # JSON of the tokeniser
    corpus_fingerprint: str
    corpus_source: str  # absolute path, or "-" for stdin
    model: dict  # state_dict, CPU tensors
    optimizer: dict
    # The carried state: each part (an LSTM's h and c, or one tensor) holds every group's streams
    # side by side, group after group, each group every rank's streams side by side (see
    # `hidden_for_saving`); with one group, the layout of states saved before groups existed.
    hidden: list
    torch_rng: torch.Tensor
    batch_size: int | None = None  # streams per process
    torch_rng_by_rank: torch.Tensor | None = None
    world_size: int = 1
    cuda_rng: torch.Tensor | None = None
    mps_rng: torch.Tensor | None = None
    # Where the cosine of the learning rate starts (see schedule.LearningRateAnchor); states
    # without it trained on the plain schedule over their saved budget.
    lr_anchor: dict | None = None
    # Passes after the first start at a random offset (windows.ShiftedPasses); off in states
    # written before it existed, so they continue over the same windows.
    shift_passes: bool = False
    # Stream groups trained in turns, each with its own carried state (windows.BatchStream), as
    # fitted to the corpus; states written before groups existed had one.
    stream_groups: int = 1
    # The model a fine-tuning run started from (`--init-from`): its name and weights hash.
    parent: dict | None = None
    # What the sizing rule chose for the run and why (training/sizing.py), None when nothing was.
    sizing: dict | None = None

    def to_dict(self, format_name: str, format_version: int) -> dict[str, Any]:
        """The plain dict saved in state.pt (counters flattened to top-level keys, as in format 1)."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "counters"}
        counters = dataclasses.asdict(self.counters)
        return {"format": format_name, "format_version": format_version, **counters, **values}

    @classmethod
    def from_dict(cls, state: dict[str, Any], path: object) -> RunState:
        """The record of a loaded state dict; a value of the wrong kind is a `CheckpointError`."""
        try:
            counter_names = {f.name for f in dataclasses.fields(Counters)}
            counters = Counters(**{name: state[name] for name in counter_names if name in state})
            counters.interval = IntervalStats(**state.get("interval", {}))
            counters.step = int(counters.step)
            if "last_eval_step" not in state:
                counters.last_eval_step = counters.step
            for name in ("best_val_loss", "best_val_bpc", "eval_clock_seconds", "step_seconds"):
                setattr(counters, name, float(getattr(counters, name)))
            for name in (
                "last_eval_step",
                "skipped_steps",
                "bad_steps_in_a_row",
                "evals_without_improvement",
            ):
                setattr(counters, name, int(getattr(counters, name)))
            values = {
                f.name: state[f.name]
                for f in dataclasses.fields(cls)
                if f.name != "counters" and f.name in state and state[f.name] is not None
            }
            record = cls(counters=counters, **values)
            record.elapsed = float(record.elapsed)
            record.world_size = int(record.world_size)
            record.shift_passes = bool(record.shift_passes)
            record.stream_groups = int(record.stream_groups)
        except (KeyError, ValueError, TypeError) as error:
            raise CheckpointError(f"{path} is corrupted ({str(error).splitlines()[0][:200]})") from None
        return record


@dataclass
class SavedState:
    """A run's state.pt, read once: the record, with its settings and tokeniser parsed."""

    path: Path  # the state file, for error messages
    record: RunState
    model_config: ModelConfig
    train_config: TrainConfig
    tokenizer: Tokenizer

    @property
    def corpus_source(self) -> str:
        """The corpus the run trained on: an absolute path, or "-" for standard input."""
        return self.record.corpus_source

    @property
    def corpus_fingerprint(self) -> str:
        """The fingerprint of the corpus the run trained on (a resume must find the same one)."""
        return self.record.corpus_fingerprint


def parse_saved_state(state: dict[str, Any], path: Path) -> SavedState:
    """The typed reading of a loaded state dict; anything unreadable is a `CheckpointError`."""
    record = RunState.from_dict(state, path)
    try:
        # Settings saved before stream groups existed trained one group: the config default is not theirs.
        train_config = TrainConfig.from_dict(
            {"stream_groups": 1, **json.loads(record.train_config)}
        ).validate()
        model_config = ModelConfig.from_dict(json.loads(record.model_config)).validate()
        tokenizer = tokenizer_from_dict(json.loads(record.tokenizer))
    except (ValueError, TypeError, CharrnnError) as error:
        raise CheckpointError(f"{path} is corrupted (bad settings: {error})") from None
    return SavedState(Path(path), record, model_config, train_config, tokenizer)


_KINDS: dict[str, tuple[type, ...]] = {
    "int": (int,),
    "float": (int, float),
    "str": (str,),
    "dict": (dict,),
    "list": (list,),
    "torch.Tensor": (torch.Tensor,),
}


def required_fields() -> dict[str, tuple[type, ...]]:
    """The keys every state file must hold, with their allowed types (what `load_training_state` checks)."""
    required = {
        item.name: _KINDS[str(item.type)]
        for item in dataclasses.fields(Counters)
        if item.metadata.get("required")
    }
    for item in dataclasses.fields(RunState):
        if item.name != "counters" and item.default is dataclasses.MISSING:
            required[item.name] = _KINDS[str(item.type)]
    return required


# -- the parts of the state that live in torch, not in the counters --------------------------------


def hidden_for_saving(groups: list[Any], world: World) -> list[torch.Tensor]:
    """The carried states of every stream group as CPU tensors, in the layout of `RunState.hidden`
    (all ranks must call it: it gathers the ranks' streams).

    A group with no state yet (None: it has not started, or a non-finite step dropped it) is saved
    as zeros, the state it will start from; no state at all is saved as an empty list.
    """
    present = [_parts(state) for state in groups if state is not None]
    if not present:
        return []
    blank = [torch.zeros_like(part) for part in present[0]]
    saved = []
    for index in range(len(blank)):
        by_group = [
            world.gather_along((blank if state is None else _parts(state))[index].detach().cpu().clone(), 1)
            for state in groups
        ]
        saved.append(torch.cat(by_group, 1))
    return saved


def hidden_from_saved(
    parts: list[torch.Tensor], world: World, batch_size: int, device: torch.device, stream_groups: int = 1
) -> list[Any]:
    """This rank's carried state of each stream group (an LSTM's (h, c), or one tensor, or None)."""
    if not parts:
        return [None] * stream_groups
    group_width = batch_size * world.world_size
    states = []
    for group in range(stream_groups):
        first = group * group_width + world.rank * batch_size
        own = [part[:, first : first + batch_size].to(device) for part in parts]
        states.append(tuple(own) if len(own) == 2 else own[0])
    return states


def _parts(state: Any) -> list[torch.Tensor]:
    return list(state if isinstance(state, tuple) else (state,))


class GeneratorStates(TypedDict):
    """The random generators' fields of a `RunState`, by name."""

    torch_rng: torch.Tensor
    torch_rng_by_rank: torch.Tensor | None
    cuda_rng: torch.Tensor | None
    mps_rng: torch.Tensor | None


def generator_states(world: World, device: torch.device) -> GeneratorStates:
    """The random generators' states (all ranks must call it: it gathers each rank's)."""
    return {
        "torch_rng": torch.get_rng_state(),
        "torch_rng_by_rank": world.gather_along(torch.get_rng_state()[None], 0)
        if world.is_distributed
        else None,
        "cuda_rng": torch.cuda.get_rng_state() if device.type == "cuda" else None,
        "mps_rng": torch.mps.get_rng_state() if device.type == "mps" else None,
    }


def restore_generators(record: RunState, world: World, device: torch.device) -> None:
    """Put the random generators back where `record` has them (this rank's own, when saved by rank)."""
    # clone(): a row of the saved matrix is a view with an offset, which set_rng_state misreads.
    torch.set_rng_state(
        record.torch_rng_by_rank[world.rank].clone()
        if record.torch_rng_by_rank is not None
        else record.torch_rng
    )
    if device.type == "cuda" and record.cuda_rng is not None:
        torch.cuda.set_rng_state(record.cuda_rng)
    if device.type == "mps" and record.mps_rng is not None:
        torch.mps.set_rng_state(record.mps_rng)
