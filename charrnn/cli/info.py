"""`charrnn info`: what a checkpoint holds, readable at a glance."""

from __future__ import annotations

from typing import Any

import click

from charrnn.cli.answer import (
    closed_pipe_ends_quietly,
    human_bytes,
    human_duration,
    print_json,
    stdout_console,
)
from charrnn.cli.console import terminal_safe
from charrnn.cli.group import cli


@cli.command("info")
@click.argument("model", required=False)
@click.option("--json", "as_json", is_flag=True, help="Answer as JSON.")
def info_command(model: str | None, as_json: bool) -> None:
    """What MODEL holds: model and shape, tokeniser and vocabulary, the training run, the run's files.

    MODEL is a .safetensors file or a run directory; by default, the most recent run
    under runs/. Only the checkpoint's header is read.

    \b
    Examples:
      charrnn info
      charrnn info runs/tinyshakespeare --json
    """
    from charrnn.store.describe import describe
    from charrnn.store.run_dir import resolve_weights

    summary = describe(resolve_weights(model))
    if as_json:
        print_json(summary)
        return
    _print(summary)


def _value(value: Any, fmt: str = "{}") -> str:
    return "-" if value is None else fmt.format(value)


def _print(summary: dict[str, Any]) -> None:
    from rich.table import Table

    model, tokenizer, training = summary["model"], summary["tokenizer"], summary["training"]
    table = Table(box=None, show_header=False, pad_edge=False)
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    rows = [
        ("checkpoint", summary["path"]),
        (
            "model",
            f"{model['kind']}, {model['num_layers']} layers x {model['hidden_size']} units, "
            f"embedding {model['embedding_size']}, dropout {model['dropout']}",
        ),
        ("parameters", f"{model['parameters']:,}"),
        ("tokeniser", f"{tokenizer['kind']}, vocabulary {tokenizer['vocab_size']:,}"),
    ]
    if tokenizer["chars"]:
        rows.append(("characters", tokenizer["chars"]))
    rows += [
        *(
            [
                (
                    "started from",
                    f"{_value(training['parent']['name'])} (weights sha256 "
                    f"{_value(training['parent']['weights_sha256'])[:16]}…)",
                )
            ]
            if training.get("parent")
            else []
        ),
        *(
            [("sized", _value(training["sizing"]["reason"]))]
            if training.get("sizing") and training["sizing"].get("reason")
            else []
        ),
        ("corpus", _value(training["corpus"])),
        ("corpus sha256", _value(training["corpus_fingerprint"])),
        ("steps", _value(training["step"], "{:,}")),
        ("training time", human_duration(training["elapsed"])),
        ("best val loss", _value(training["best_val_loss"], "{:.4f} nats/token")),
        ("best val bits/char", _value(training["best_val_bpc"], "{:.4f}")),
        ("precision", _value(training["precision"])),
        ("saved", _value(training["saved_at"])),
        (
            "charrnn version",
            _value(training["charrnn_version"], "{}") if training["charrnn_version"] else "not recorded",
        ),
    ]
    if summary["run_dir"]:
        rows.append(("run directory", summary["run_dir"]))
        for entry in summary["files"]:
            rows.append(("", f"{entry['name']}  {human_bytes(entry['bytes'])}"))
    for label, value in rows:
        table.add_row(label, terminal_safe(value))  # the checkpoint's metadata and the run's file names
    with closed_pipe_ends_quietly():
        stdout_console().print(table)
