"""Options shared by several commands: which model and where it runs (eval, score), and the cache
folder (train, novelty)."""

from __future__ import annotations

from collections.abc import Callable

import click

from charrnn.config import DEVICES

model_option = click.option(
    "--model",
    "-m",
    "model_path",
    default=None,
    help="The model (a .safetensors or exported .onnx file, or a run directory); default: the first argument "
    "when it is one, else the most recent run under runs/.",
)


def cache_dir_option(what_it_keeps: str) -> Callable[[Callable], Callable]:
    """--cache-dir (CHARRNN_CACHE_DIR): one folder for every cache charrnn keeps; `what_it_keeps`
    finishes the help."""
    return click.option(
        "--cache-dir",
        type=click.Path(file_okay=False),
        envvar="CHARRNN_CACHE_DIR",
        default=None,
        show_default="~/.cache/charrnn",
        help=f"Folder {what_it_keeps}.",
    )


def device_options(verb: str) -> Callable[[Callable], Callable]:
    """--device and --threads, worded for a command that `verb`s text (evaluate, score)."""

    def decorate(command: Callable) -> Callable:
        command = click.option(
            "--threads", type=int, default=None, show_default="physical cores", help="CPU threads for torch."
        )(command)
        return click.option(
            "--device",
            type=click.Choice(DEVICES),
            default="auto",
            show_default=True,
            help=f"Where to {verb}; auto picks a GPU when there is one.",
        )(command)

    return decorate


def load_model(model_argument: str | None, device: str, threads: int | None):
    """The `api.Model` of MODEL, after checking --threads (`hardware.check_threads`) and giving torch
    that many threads.

    torch is imported here, when a command runs, never at start-up.
    """
    from charrnn.api import load
    from charrnn.hardware import configure_threads

    configure_threads(threads)
    return load(model_argument, device=device)
