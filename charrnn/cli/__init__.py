"""The command line: parse options into configs, call the library, report errors as one line.

One module per command; importing it registers the command on the group.
torch is imported inside the commands, so `charrnn --help` stays instant.
"""

from charrnn.cli import evaluate, explain, export, info, novelty, plot, runs, sample, score, serve, train  # noqa: E402,F401  (registers the commands)
from charrnn.cli.group import cli, main

__all__ = ["cli", "main"]
