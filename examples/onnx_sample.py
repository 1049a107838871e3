"""Sample text from a model exported with `charrnn export`, with onnxruntime and NumPy only.

No PyTorch and no charrnn: the .onnx file holds the weights, the tokeniser and the model's shape.

    pip install onnxruntime numpy
    python onnx_sample.py shakespeare.onnx --prime "ROMEO:" --length 300 --temperature 0.8 --seed 1
    python onnx_sample.py shakespeare.onnx --greedy          # the most likely character every time

Character and byte models need nothing else; bpe and unigram models also need `sentencepiece`.
The random numbers are NumPy's, so a seed here writes other text than `charrnn sample --seed`;
`--greedy` writes the same text as `charrnn sample --greedy`.
"""

from __future__ import annotations

import argparse
import base64
import codecs
import json
import sys

import numpy as np
import onnxruntime

READ_WINDOW = 256  # prime tokens per call: memory does not grow with the prime's length


class Tokenizer:
    """Text <-> ids from the `charrnn.tokenizer` metadata of the file."""

    def __init__(self, stored: dict) -> None:
        self.kind = stored["kind"]
        if self.kind == "char":
            self.chars = stored["chars"]
            self.ids = {char: index for index, char in enumerate(self.chars)}
        elif self.kind in ("bpe", "unigram"):
            import sentencepiece  # only these kinds need it

            self.processor = sentencepiece.SentencePieceProcessor(
                model_proto=base64.b64decode(stored["model"])
            )
        elif self.kind != "byte":
            raise SystemExit(f"unknown tokeniser kind {self.kind!r}")
        self.utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def encode(self, text: str) -> list[int]:
        if self.kind == "char":
            missing = sorted(set(text) - set(self.ids))
            if missing:
                raise SystemExit(f"the model never saw these characters: {missing!r}")
            return [self.ids[char] for char in text]
        if self.kind == "byte":
            return list(text.encode("utf-8"))
        return list(self.processor.encode(text))

    def decode_one(self, token: int) -> str:
        """The text of one more sampled token (bytes of a character split over tokens wait)."""
        if self.kind == "char":
            return self.chars[token]
        if self.kind == "byte":
            return self.utf8.decode(bytes([token]))
        if self.processor.is_control(token) or self.processor.is_unknown(token):
            return ""
        if self.processor.is_byte(token):  # "<0x43>": a byte of a character the vocabulary lacks
            return self.utf8.decode(bytes([int(self.processor.id_to_piece(token)[3:5], 16)]))
        # A piece alone: its leading "\u2581" is the space before it, which decode() would drop.
        return self.processor.id_to_piece(token).replace("\u2581", " ")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="an .onnx file written by `charrnn export`")
    parser.add_argument("--prime", default="", help="text to start from (written first)")
    parser.add_argument("--length", type=int, default=500, help="tokens to write after the prime")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--greedy", action="store_true", help="always the most likely token")
    parser.add_argument("--seed", type=int, default=None)
    arguments = parser.parse_args()

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1  # one stream: a matrix-vector product per layer, one thread is fastest
    session = onnxruntime.InferenceSession(arguments.model, options, providers=["CPUExecutionProvider"])
    metadata = session.get_modelmeta().custom_metadata_map
    if metadata.get("charrnn.format") != "charrnn-onnx":
        raise SystemExit(f"{arguments.model} is not a charrnn export")
    config = json.loads(metadata["charrnn.model_config"])
    tokenizer = Tokenizer(json.loads(metadata["charrnn.tokenizer"]))
    lstm = config["model"] == "lstm"
    shape = (config["num_layers"], 1, config["hidden_size"])
    state = {"state_h": np.zeros(shape, np.float32)}
    if lstm:
        state["state_c"] = np.zeros(shape, np.float32)
    outputs = ["logits", "next_state_h"] + (["next_state_c"] if lstm else [])

    def read(ids: list[int]) -> np.ndarray:
        """Run `ids` through the model, carrying the state; the logits after the last one."""
        for start in range(0, len(ids), READ_WINDOW):
            window = np.array([ids[start : start + READ_WINDOW]], np.int64)
            logits, *new_state = session.run(outputs, {"tokens": window, **state})
            state.update(zip(state, new_state))
        return logits[0, -1].astype(np.float64)

    # As charrnn does: a prime, or else the start of a line (the first character for a model
    # that never saw a newline).
    start = arguments.prime or (
        "\n" if tokenizer.kind != "char" or "\n" in tokenizer.ids else tokenizer.chars[0]
    )
    logits = read(tokenizer.encode(start))
    sys.stdout.write(arguments.prime)
    rng = np.random.default_rng(arguments.seed)
    for _ in range(arguments.length):
        if arguments.greedy or arguments.temperature == 0:
            token = int(logits.argmax())
        else:
            scaled = logits / arguments.temperature
            probabilities = np.exp(scaled - scaled.max())
            token = int(rng.choice(len(probabilities), p=probabilities / probabilities.sum()))
        sys.stdout.write(tokenizer.decode_one(token))
        sys.stdout.flush()
        logits = read([token])
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
