"""The one family of errors the library raises on bad input.

`cli.py` turns each of these into a single `Error: ...` line on stderr: a
`UsageProblem` exits with code 2 (the command line was wrong), every other
`CharrnnError` with code 1 (the input or the environment was wrong).
"""


class CharrnnError(Exception):
    """Base of every error that charrnn reports to the user as one line."""


class UsageProblem(CharrnnError):
    """A setting the user gave is out of range or contradicts another one."""


class ConfigError(UsageProblem):
    """A config field failed validation (raised by `config.py`)."""


class CorpusError(CharrnnError):
    """The corpus is missing, unreadable, empty, not UTF-8 or too short."""


class TokenizerError(CharrnnError):
    """Text cannot be encoded by this tokeniser (e.g. unseen characters)."""


class CheckpointError(CharrnnError):
    """A checkpoint is missing, corrupted, foreign or from a newer charrnn."""


class RunDirError(CharrnnError):
    """The run directory cannot be used (not writable, locked, mismatched)."""
