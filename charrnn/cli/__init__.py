"""The command line: parse options into configs, call the library, report errors as one line.

One module per command; importing it registers the command on the group.
torch is imported inside the commands, so `charrnn --help` stays instant.
"""

from .group import cli, main
from . import train, sample, evaluate, score, info, runs, plot, explain  # noqa: E402,F401  (registers the commands)

__all__ = ["cli", "main"]
