"""`charrnn --help` and every command's `--help` stay instant: they never import torch."""

from __future__ import annotations

import json
import subprocess
import sys

# In a fresh interpreter: the help of the group and of every registered command, then what got imported.
HELP_EVERYWHERE = """
import json, sys
from click.testing import CliRunner
from charrnn.cli import cli
runner = CliRunner()
names = ["", *sorted(cli.commands)]
codes = {name: runner.invoke(cli, [*name.split(), "--help"]).exit_code for name in names}
heavy = [name for name in ("torch", "numpy", "matplotlib", "sentencepiece") if name in sys.modules]
print(json.dumps({"codes": codes, "heavy": heavy}))
"""


def test_help_of_the_group_and_of_every_command_imports_no_heavy_module():
    result = subprocess.run(
        [sys.executable, "-c", HELP_EVERYWHERE], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert set(answer["codes"]) >= {"", "train", "sample", "eval", "score", "info", "runs", "plot", "explain"}
    assert set(answer["codes"].values()) == {0}, answer["codes"]
    assert answer["heavy"] == []
