"""charrnn: learn to write like any text corpus, one character at a time.

The Python API (the commands are clients of it):

    import charrnn
    model = charrnn.load("runs/tinyshakespeare")        # a run, a .safetensors file, or None: the latest run
    print(model.generate_text(prime="ROMEO:", length=200, temperature=0.8, seed=1))
    for chunk in model.generate(length=-1): ...          # text as it is written
    model.score("a line\\nanother line")                  # [LineScore(bits_per_char, total_bits, ...)]
    model.evaluate(pathlib.Path("held-out.txt"))          # TextEvaluation(bits_per_char, loss, ...)
    model.info                                           # what the checkpoint holds
    charrnn.train("corpus.txt", max_steps=500, out="runs/mine")   # returns the trained Model

Importing the package is cheap: torch is imported on first use of the API.
"""

__version__ = "0.1.0"

_LAZY = {
    "load": "api",
    "train": "api",
    "Model": "api",
    "LineScore": "inspect.scoring",
    "TextEvaluation": "inspect.eval_text",
    "SampleConfig": "config",
    "ModelConfig": "config",
    "TrainConfig": "config",
    "CharrnnError": "errors",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    """Import the API's names on first use, so `import charrnn` does not import torch."""
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module 'charrnn' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{module_name}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
