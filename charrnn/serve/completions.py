"""`POST /v1/completions`: the request checked field by field, and the answers in OpenAI's shapes.

Checking is strict, as OpenAI's own API is: a field of the wrong type, out of range or unknown
is one 400 naming the field, so a client's mistake is never silently ignored. Fields of
OpenAI's API that only make sense for other models (penalties, logit_bias, best_of, suffix)
are accepted at their neutral value and refused otherwise.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from charrnn.config import SampleConfig
from charrnn.data.tokenizers import Tokenizer
from charrnn.errors import CharrnnError
from charrnn.generate.sampler import draw_seed, sample_seed
from charrnn.generate.stream_batch import Stream, TokenLogprob
from charrnn.serve.errors import bad_request

MAX_STOPS = 4
MAX_LOGPROBS = 5
MAX_SEED = 2**63 - 1
DEFAULT_MAX_TOKENS = 16  # OpenAI's default
_NEUTRAL = {"presence_penalty": 0, "frequency_penalty": 0, "logit_bias": None, "suffix": None}
_FIELDS = {
    "model",
    "prompt",
    "max_tokens",
    "temperature",
    "top_p",
    "top_k",
    "n",
    "stop",
    "seed",
    "stream",
    "stream_options",
    "logprobs",
    "echo",
    "user",
    "best_of",
    *_NEUTRAL,
}


@dataclass
class Limits:
    """What one request may ask for."""

    max_tokens: int = 4096
    max_n: int = 16  # completions per request: prompts x n


@dataclass
class CompletionRequest:
    """A checked completion request."""

    prompts: list[str]
    max_tokens: int
    config: SampleConfig  # temperature, top_k, top_p, greedy, stop
    n: int
    seed: int
    seed_given: bool
    stream: bool
    include_usage: bool
    logprobs: int | None
    echo: bool
    streams: list[Stream] = field(default_factory=list)

    def make_streams(self, tokenizer: Tokenizer) -> list[Stream]:
        """One `Stream` per choice: prompt p's j-th completion is choice p * n + j, with seed
        `sample_seed(seed, choice)` (choice 0 uses the seed itself, as `charrnn sample --seed` does)."""
        self.streams = [
            Stream(
                tokenizer,
                prompt,
                self.config,
                sample_seed(self.seed, index * self.n + copy),
                self.max_tokens,
                self.logprobs,
                tag=index * self.n + copy,
            )
            for index, prompt in enumerate(self.prompts)
            for copy in range(self.n)
        ]
        return self.streams


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)) and math.isfinite(value)


def _integer(body: dict, name: str, low: int, high: int, default: int | None) -> int | None:
    value = body.get(name)
    if value is None:
        return default
    if not _is_int(value) or not low <= value <= high:
        raise bad_request(f"{name} must be an integer from {low} to {high}, got {json.dumps(value)}", name)
    return int(value)


def _number(body: dict, name: str, low: float, high: float, default: float | None) -> float | None:
    value = body.get(name)
    if value is None:
        return default
    if not _is_number(value) or not low <= value <= high:
        raise bad_request(f"{name} must be a number from {low:g} to {high:g}, got {json.dumps(value)}", name)
    return float(value)


def _flag(body: dict, name: str) -> bool:
    value = body.get(name, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise bad_request(f"{name} must be true or false, got {json.dumps(value)}", name)
    return value


def _checked_text(tokenizer: Tokenizer, text: str, what: str, param: str) -> None:
    try:
        tokenizer.check_encodable(text, what)
    except CharrnnError as error:
        message = f"{error}; the model can only read and write the characters of its corpus"
        raise bad_request(message, param) from None


def _prompts(body: dict, tokenizer: Tokenizer) -> list[str]:
    if "prompt" not in body:
        raise bad_request("prompt is missing: give the text to complete", "prompt")
    prompt = body["prompt"]
    prompts = [prompt] if isinstance(prompt, str) else prompt
    if not isinstance(prompts, list) or not prompts or not all(isinstance(item, str) for item in prompts):
        if isinstance(prompts, list) and prompts and all(_is_int(item) for item in prompts):
            raise bad_request("prompt as token ids is not supported: send the text", "prompt")
        raise bad_request("prompt must be a string or a non-empty list of strings", "prompt")
    for index, text in enumerate(prompts):
        where = "prompt" if isinstance(prompt, str) else f"prompt[{index}]"
        if text == "":
            raise bad_request(f"{where} is empty: give at least one character to start from", "prompt")
        _checked_text(tokenizer, text, where, "prompt")
    return prompts


def _stops(body: dict, tokenizer: Tokenizer) -> tuple[str, ...]:
    stop = body.get("stop")
    if stop is None:
        return ()
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not all(isinstance(item, str) and item for item in stops):
        raise bad_request("stop must be a non-empty string or a list of up to 4 of them", "stop")
    if len(stops) > MAX_STOPS:
        raise bad_request(f"stop takes up to {MAX_STOPS} strings, got {len(stops)}", "stop")
    for text in stops:
        _checked_text(tokenizer, text, f"stop string {text!r}", "stop")
    return tuple(stops)


def parse_completion_request(raw: bytes, tokenizer: Tokenizer, limits: Limits) -> CompletionRequest:
    """Check a request body; raise `ApiError` (400) naming the first field that is wrong."""
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise bad_request(f"the body is not valid JSON: {error}") from None
    if not isinstance(body, dict):
        raise bad_request("the body must be a JSON object")
    unknown = sorted(set(body) - _FIELDS)
    if unknown:
        raise bad_request(
            f"unknown field {unknown[0]!r}; the fields are: {', '.join(sorted(_FIELDS))}", unknown[0]
        )
    for name, neutral in _NEUTRAL.items():
        if body.get(name) not in (None, neutral) and body.get(name) != {}:
            raise bad_request(f"{name} is not supported by a character model server; leave it out", name)
    for name in ("model", "user"):
        if body.get(name) is not None and not isinstance(body[name], str):
            raise bad_request(f"{name} must be a string", name)
    prompts = _prompts(body, tokenizer)
    max_tokens = _integer(body, "max_tokens", 1, limits.max_tokens, DEFAULT_MAX_TOKENS)
    n = _integer(body, "n", 1, limits.max_n, 1)
    best_of = _integer(body, "best_of", 1, limits.max_n, n)
    if best_of != n:
        raise bad_request("best_of is not supported (it would need scoring every completion); leave it out")
    assert max_tokens is not None and n is not None
    if len(prompts) * n > limits.max_n:
        raise bad_request(
            f"a request asks for at most {limits.max_n} completions (prompts x n), got {len(prompts)} x {n}",
            "n",
        )
    temperature = _number(body, "temperature", 0.0, 100.0, 1.0)
    top_p = _number(body, "top_p", 0.0, 1.0, None)
    if top_p == 0.0:
        raise bad_request("top_p must be above 0 and at most 1, got 0", "top_p")
    top_k = _integer(body, "top_k", 0, 1_000_000, 0)
    seed = _integer(body, "seed", 0, MAX_SEED, None)
    logprobs = _integer(body, "logprobs", 0, MAX_LOGPROBS, None)
    stream = _flag(body, "stream")
    options = body.get("stream_options")
    include_usage = False
    if options is not None:
        if not stream:
            raise bad_request("stream_options is only allowed with stream: true", "stream_options")
        if not isinstance(options, dict) or set(options) - {"include_usage"}:
            raise bad_request('stream_options must be {"include_usage": true|false}', "stream_options")
        include_usage = _flag(options, "include_usage")
    assert temperature is not None
    config = SampleConfig(
        temperature=temperature if temperature > 0 else 1.0,
        greedy=temperature == 0,  # OpenAI's temperature 0: always the most likely token
        top_k=top_k or None,
        top_p=top_p,
        stop=_stops(body, tokenizer),
    )
    return CompletionRequest(
        prompts=prompts,
        max_tokens=max_tokens,
        config=config,
        n=n,
        seed=draw_seed() if seed is None else seed,
        seed_given=seed is not None,
        stream=stream,
        include_usage=include_usage,
        logprobs=logprobs,
        echo=_flag(body, "echo"),
    )


def logprobs_object(tokens: list[TokenLogprob], offset: int) -> dict[str, Any]:
    """OpenAI's `logprobs` of a choice (or a chunk of one): tokens, their log-probabilities, the most
    likely alternatives and where each token starts in the text (`offset` = characters before it)."""
    return {
        "tokens": [token.text for token in tokens],
        "token_logprobs": [token.logprob for token in tokens],
        "top_logprobs": [token.top for token in tokens],
        "text_offset": [offset + token.offset for token in tokens],
    }


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    """OpenAI's `usage` object."""
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def prompt_token_count(tokenizer: Tokenizer, prompts: list[str]) -> int:
    """Tokens of the prompts (each counted once, whatever `n`, as OpenAI counts them)."""
    return sum(sum(len(piece) for piece in tokenizer.encode_pieces(prompt)) for prompt in prompts)
