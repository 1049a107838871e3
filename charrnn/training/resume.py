"""Whether a run may be resumed with these options, decided in one place.

A resume continues the same run, so everything that fixes the split, the tokens, the data
windows, the model's shape or the random streams must stay as the run has it. Every refusal
is one line naming the difference (a `RunDirError`, or a `DistributedError` for the number
of processes), and `resumed_configs` is the only function that raises them before training;
`check_streams` is the one check that needs the prepared corpus, so the Trainer calls it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from charrnn.config import ModelConfig, TrainConfig
from charrnn.distributed import DistributedError, World
from charrnn.errors import RunDirError
from charrnn.store.run_state import SavedState

# Train options that cannot change on resume: they fix the split, the tokens, the data
# windows or the random streams, so a different value would not continue the same run.
FIXED_ON_RESUME = (
    "val_fraction",
    "eval_tokens",
    "tokenizer",
    "vocab_size",
    "seq_len",
    "batch_size",
    "stream_groups",
    "seed",
)


def resumed_configs(
    saved: SavedState,
    model_options: dict[str, Any],
    train_options: dict[str, Any],
    given: set[str],
    world: World,
    corpus_fingerprint: Callable[[], str],
) -> tuple[ModelConfig, TrainConfig]:
    """The model and train settings a resume continues with, or the one error that refuses it.

    `given` names the options the user set (the others are defaults and do not count);
    options that may change (the budget, the learning rate, ...) override the run's own.
    `corpus_fingerprint` is called only once the options passed, since finding it may mean
    reading the whole corpus.
    """
    _check_world_size(saved.record.world_size, world)
    for name in FIXED_ON_RESUME:
        if name in given and train_options[name] != getattr(saved.train_config, name):
            raise RunDirError(
                f"cannot resume: --{name.replace('_', '-')} is {train_options[name]!r} but the run "
                f"was trained with {getattr(saved.train_config, name)!r}"
            )
    # The run's own record decides (states from before shifted passes continue unshifted), so a
    # contradicting flag is refused rather than silently ignored.
    saved_shift = saved.record.shift_passes
    if "shift_passes" in given and bool(train_options["shift_passes"]) != saved_shift:
        flag = {True: "--shift-passes", False: "--no-shift-passes"}
        raise RunDirError(
            f"cannot resume: {flag[not saved_shift]} was given but the run was trained "
            f"with {flag[saved_shift]}"
        )
    if corpus_fingerprint() != saved.corpus_fingerprint:
        raise RunDirError(
            f"cannot resume: the corpus differs from the one this run was trained on ({saved.corpus_source})"
        )
    for name, value in model_options.items():
        if name in given and name != "vocab_size" and getattr(saved.model_config, name) != value:
            raise RunDirError(
                f"cannot resume: --{name.replace('_', '-')} is {value!r} but the run was "
                f"trained with {getattr(saved.model_config, name)!r}"
            )
    train_config = TrainConfig.from_dict(
        {**saved.train_config.to_dict(), **{k: v for k, v in train_options.items() if k in given}}
    ).validate()
    return saved.model_config, train_config


def check_streams(
    saved_batch_size: int | None, batch_size: int, saved_stream_groups: int = 1, stream_groups: int = 1
) -> None:
    """Refuse to resume when the corpus now fits another number of streams than the run trained."""
    if saved_batch_size is not None and saved_batch_size != batch_size:
        raise RunDirError(
            f"cannot resume: the run trained {saved_batch_size} streams side by side, "
            f"this one would train {batch_size} (keep --batch-size and --seq-len)"
        )
    if saved_stream_groups != stream_groups:
        raise RunDirError(
            f"cannot resume: the run trained {saved_stream_groups} stream groups, "
            f"this one would train {stream_groups} (keep --stream-groups, --batch-size and --seq-len)"
        )


def _check_world_size(saved: int, world: World) -> None:
    """Refuse to resume a run with another number of processes.

    Each process owns a fixed block of the data streams and its own hidden state;
    with another count the streams would be cut differently and the state would
    not map onto them.
    """
    if saved == world.world_size:
        return

    def processes(count: int) -> str:
        return "1 process" if count == 1 else f"{count} processes"

    how = f"torchrun --nproc-per-node ... with {saved} in total" if saved > 1 else "without torchrun"
    raise DistributedError(
        f"cannot resume: this run was trained with {processes(saved)} but this launch has "
        f"{processes(world.world_size)}; resume it with the same number ({how})"
    )
