"""Store a trained model as the bundled model, in 16-bit floats, and measure what that costs.

    python tools/build_pretrained.py RUN_DIR/best.safetensors CORPUS OUT.safetensors

Evaluates the validation part of CORPUS (its last 10%, as `charrnn train` splits it)
with the float32 weights and with the float16 copy, prints both bits/char and writes
the float16 copy (same metadata, plus its own figures) to OUT. `make pretrained` runs it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save as save_safetensors_bytes

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from charrnn.atomic import atomic_write_bytes  # noqa: E402
from charrnn.data.encoding import count_chars  # noqa: E402
from charrnn.inspect.evaluation import evaluate  # noqa: E402
from charrnn.store.checkpoint import load_weights, read_metadata  # noqa: E402

VAL_FRACTION = 0.1


def validation_bits_per_char(weights: Path, text: str) -> float:
    """Bits per character of the model in `weights` on the last tenth of `text`."""
    loaded = load_weights(weights)
    val_text = text[int(len(text) * (1.0 - VAL_FRACTION)) :]
    tokens = loaded.tokenizer.encode(val_text)
    return evaluate(
        loaded.model, tokens, count_chars(loaded.tokenizer, tokens[1:]), torch.device("cpu")
    ).bits_per_char


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("weights", type=Path)
    parser.add_argument("corpus", type=Path)
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)
    text = args.corpus.read_text(encoding="utf-8")
    data = args.weights.read_bytes()
    metadata = dict(read_metadata(data, args.weights))
    loaded = load_weights(args.weights)
    half = {
        name: tensor.detach().to(torch.float16).contiguous()
        for name, tensor in loaded.model.state_dict().items()
    }
    full_bpc = validation_bits_per_char(args.weights, text)
    info = json.loads(metadata.get("info", "{}"))
    info.update({"stored_dtype": "float16", "val_bits_per_char_float32": round(full_bpc, 5)})
    metadata["info"] = json.dumps(info)
    atomic_write_bytes(args.out, save_safetensors_bytes(half, metadata=metadata))
    half_bpc = validation_bits_per_char(args.out, text)
    info["val_bits_per_char_float16"] = round(half_bpc, 5)
    metadata["info"] = json.dumps(info)
    atomic_write_bytes(args.out, save_safetensors_bytes(half, metadata=metadata))
    print(
        f"validation bits/char: float32 {full_bpc:.5f}, float16 {half_bpc:.5f}; "
        f"{args.weights.stat().st_size / 1e6:.2f} MB -> {args.out.stat().st_size / 1e6:.2f} MB ({args.out})"
    )


if __name__ == "__main__":
    main()
