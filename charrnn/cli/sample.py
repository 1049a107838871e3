"""`charrnn sample`: write text from a trained model to stdout."""

from __future__ import annotations

from typing import Optional

import click

from ..config import SampleConfig
from ..errors import UsageProblem
from .group import cli
from .output import read_stdin_text, unescape, write_stream



_SAMPLE_DEFAULTS = SampleConfig()


@cli.command()
@click.argument("checkpoint", required=False)
@click.option("--temperature", "-t", type=float, default=_SAMPLE_DEFAULTS.temperature, show_default=True,
              help="Below 1: safer, more repetitive text; above 1: wilder text.")
@click.option("--top-k", type=int, default=None, help="Sample only from the k most likely tokens.")
@click.option("--top-p", type=float, default=None,
              help="Sample only from the most likely tokens whose probabilities sum to p.")
@click.option("--greedy", is_flag=True, help="Always take the most likely token.")
@click.option("--length", "-n", type=int, default=_SAMPLE_DEFAULTS.length, show_default=True,
              help="Characters to write after the prime; -1 writes until the reader closes the pipe.")
@click.option("--prime", type=str, default=None,
              help="Text to warm the model up with (written first); - reads it from stdin.")
@click.option("--seed", type=int, default=None, show_default="random", help="Same seed, same text.")
@click.option("--num-samples", type=int, default=_SAMPLE_DEFAULTS.num_samples, show_default=True,
              help="Samples to write (generated together as one batch).")
@click.option("--separator", type=str, default="\\n\\n", show_default=True,
              help="Written between samples (\\n and \\t are understood).")
@click.option("--threads", type=int, default=1, show_default=True, help="CPU threads for torch.")
def sample(checkpoint: Optional[str], temperature: float, top_k: Optional[int], top_p: Optional[float],
           greedy: bool, length: int, prime: Optional[str], seed: Optional[int], num_samples: int,
           separator: str, threads: int) -> None:
    """Write text from a trained model to stdout.

    CHECKPOINT is a .safetensors file or a run directory; by default, the most
    recently trained run under runs/. Only the text goes to stdout.

    \b
    Examples:
      charrnn sample --temperature 0.8 | head -40
      charrnn sample runs/tinyshakespeare --prime "ROMEO:" --length 500
      charrnn sample --length -1 | grep -m 5 "KING"
      echo "JULIET:" | charrnn sample --prime - --seed 7
    """
    if prime == "-":
        prime = read_stdin_text("the prime text on standard input")
    config = SampleConfig(temperature=temperature, top_k=top_k, top_p=top_p, greedy=greedy,
                          length=length, prime=prime, seed=seed, num_samples=num_samples,
                          separator=unescape(separator)).validate()
    if threads < 1:
        raise UsageProblem(f"--threads must be >= 1, got {threads}")

    import torch

    from ..checkpoint import load_weights
    from ..rundir import resolve_weights
    from ..sampling import generate_text

    torch.set_num_threads(threads)
    loaded = load_weights(resolve_weights(checkpoint))
    write_stream(generate_text(loaded.model, loaded.tokenizer, config))
