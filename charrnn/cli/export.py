"""`charrnn export`: a trained model as one .onnx file, for onnxruntime anywhere (and sample/eval/score)."""

from __future__ import annotations

from pathlib import Path

import click

from charrnn.cli.answer import human_bytes, print_json
from charrnn.cli.console import stderr_console, terminal_safe
from charrnn.cli.group import cli


@cli.command("export")
@click.argument("model", required=False, metavar="[MODEL]")
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(dir_okay=False),
    help="The .onnx file to write (one file: every weight, the tokeniser and the model's settings).",
)
@click.option(
    "--int8",
    is_flag=True,
    help="Quantise the LSTM layers' weights to int8: a quarter of the size, faster on a CPU "
    "(onnxruntime's dynamic quantisation; LSTM models only).",
)
@click.option("--json", "as_json", is_flag=True, help="Answer as JSON (sizes and checks).")
def export_command(model: str | None, output: str, int8: bool, as_json: bool) -> None:
    """Write MODEL as an ONNX file that onnxruntime runs anywhere, without PyTorch.

    MODEL is a .safetensors file, a run directory or a bundled model's name; by default,
    the most recent run under runs/, else the bundled model. The file is checked before
    and after it is written: the same logits as the PyTorch model to 1e-4 (with --int8,
    bits per character within 0.05 of float32's on a text the model writes). Needs
    pip install "charrnn[onnx]". The file's path is printed on stdout.

    \b
    Examples:
      charrnn export runs/tinyshakespeare -o shakespeare.onnx
      charrnn export -o small.onnx --int8
      charrnn sample small.onnx --seed 1      # sample, eval and score read it as a MODEL
    """
    from charrnn.export.exporter import export_model
    from charrnn.store.run_dir import resolve_weights

    report = export_model(resolve_weights(model), Path(output), int8=int8)
    if as_json:
        print_json(report.to_dict())
        return
    check = f"logits within {report.max_logit_difference:.1e} of PyTorch"
    if report.bits_per_char_int8 is not None and report.bits_per_char_fp32 is not None:
        check += f"; int8 {report.bits_per_char_int8:.4f} bits/char, float32 {report.bits_per_char_fp32:.4f}"
    stderr_console().print(
        f"wrote {terminal_safe(output)}: {report.weights}, {human_bytes(report.file_bytes)} "
        f"(weights in float32: {human_bytes(report.weights_bytes)}), {check}, {report.seconds:.1f} s",
        markup=False,
        highlight=False,
    )
    click.echo(output)
