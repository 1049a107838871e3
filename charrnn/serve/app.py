"""The Starlette application: routes, the API key, CORS, the body limit, and server-sent events.

Handlers run on the event loop and only check requests, hand streams to the `Engine` and turn
its updates into answers: no model step ever runs here, so `/health` and new requests are
answered while generation runs.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from charrnn.data.tokenizers import Tokenizer
from charrnn.errors import CharrnnError
from charrnn.generate.stream_batch import CANCELLED, Stream, StreamUpdate
from charrnn.model import CharRNN
from charrnn.serve.completions import (
    CompletionRequest,
    Limits,
    logprobs_object,
    parse_completion_request,
    prompt_token_count,
    usage,
)
from charrnn.serve.engine import Busy, Engine, Stopped
from charrnn.serve.errors import ApiError
from charrnn.serve.page import page_html

# A body past this is refused without being read further (it is discarded up to here, so a
# client that sends it all still gets the 413 instead of a broken pipe).
_DISCARD_LIMIT = 64 * 1024 * 1024
# How long a request lets steps gather between two writes: the loop's work per second grows with the
# requests open, so the spacing does too (10 ms alone, up to 50 ms with 5 or more), which keeps that
# work about constant. A reader sees no difference; a client stream alone is hardly delayed.
WRITE_INTERVAL_PER_REQUEST_SECONDS = 0.01
MAX_WRITE_INTERVAL_SECONDS = 0.05


@dataclass
class ServeSettings:
    """The server's limits and safety options."""

    api_key: str | None = None
    cors_origins: tuple[str, ...] = ()
    max_body_bytes: int = 1024 * 1024
    max_streams: int = 32  # streams stepped together
    max_queued: int = 64  # streams waiting for a slot before requests get 429
    limits: Limits = field(default_factory=Limits)


def _error_response(error: ApiError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


async def _read_body(request: Request, limit: int) -> bytes:
    too_large = ApiError(
        413,
        f"the request body is larger than {limit} bytes; send a shorter prompt "
        "(or start the server with a larger --max-body)",
        code="body_too_large",
    )
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > _DISCARD_LIMIT:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size <= limit:
            chunks.append(chunk)
        elif size > _DISCARD_LIMIT:
            break
    if size > limit:
        raise too_large
    return b"".join(chunks)


async def _wait_for_disconnect(request: Request) -> None:
    # The body has been read, so the next message of the connection is its end.
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def _merged(updates: list[StreamUpdate]) -> list[StreamUpdate]:
    """Consecutive steps' updates of each stream as one (text, tokens and the last finish reason)."""
    by_stream: dict[int, StreamUpdate] = {}
    for update in updates:
        merged = by_stream.get(id(update.stream))
        if merged is None:
            by_stream[id(update.stream)] = StreamUpdate(
                update.stream, update.text, list(update.tokens), update.finish_reason
            )
        else:
            merged.text += update.text
            merged.tokens.extend(update.tokens)
            merged.finish_reason = update.finish_reason or merged.finish_reason
    return list(by_stream.values())


def _sse(data: dict | str) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n"


class _Mailbox:
    """One request's updates from the worker thread. The loop is woken once for however many
    arrived meanwhile, so a busy loop is not asked to wake for every step of every request."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._items: collections.deque[list[StreamUpdate] | BaseException] = collections.deque()
        self._ready = asyncio.Event()
        self._woken = False  # a wake-up is on its way (set by the worker, cleared by the loop)

    def put(self, item: list[StreamUpdate] | BaseException) -> None:
        """Called by the worker thread."""
        self._items.append(item)
        if not self._woken:
            self._woken = True
            with contextlib.suppress(RuntimeError):  # the loop has closed: nobody is listening
                self._loop.call_soon_threadsafe(self._ready.set)

    async def take(self) -> list[list[StreamUpdate] | BaseException]:
        """Everything that has arrived, waiting for at least one item."""
        while True:
            await self._ready.wait()
            self._ready.clear()
            self._woken = False
            items = []
            while self._items:
                items.append(self._items.popleft())
            if items:
                return items


class CompletionServer:
    """The state the routes share: the model, its engine and the settings."""

    def __init__(
        self, model: CharRNN, tokenizer: Tokenizer, model_name: str, settings: ServeSettings
    ) -> None:
        self.tokenizer, self.model_name, self.settings = tokenizer, model_name, settings
        self.engine = Engine(model, tokenizer, settings.max_streams, settings.max_queued)
        self.started = int(time.time())
        self.open_requests = 0  # completion requests being answered

    # -- routes --------------------------------------------------------------------------

    async def page(self, request: Request) -> Response:
        return HTMLResponse(page_html(self.model_name), headers={"Cache-Control": "no-store"})

    async def health(self, request: Request) -> Response:
        status = "failed" if self.engine.failed else "ok"
        return JSONResponse({"status": status, "model": self.model_name, **self.engine.stats()})

    async def models(self, request: Request) -> Response:
        entry = {"id": self.model_name, "object": "model", "created": self.started, "owned_by": "charrnn"}
        return JSONResponse({"object": "list", "data": [entry]})

    async def completions(self, request: Request) -> Response:
        raw = await _read_body(request, self.settings.max_body_bytes)
        parsed = parse_completion_request(raw, self.tokenizer, self.settings.limits)
        try:
            streams = parsed.make_streams(self.tokenizer)
        except CharrnnError as error:
            raise ApiError(400, str(error), param="prompt") from None
        updates = _Mailbox(asyncio.get_running_loop())
        try:
            self.engine.submit(streams, updates.put)
        except Stopped:
            message = self.engine.failure or "the server is shutting down: start it again"
            raise ApiError(503, message, type="server_error") from None
        except Busy:
            raise ApiError(
                429,
                f"the server is busy: {self.settings.max_streams} streams are being written and "
                f"{self.settings.max_queued} more are waiting; try again in a moment",
                type="rate_limit_exceeded",
                code="rate_limit_exceeded",
                headers={"Retry-After": "1"},
            ) from None
        answer = _Answer(self, parsed, streams, updates)
        if parsed.stream:
            return StreamingResponse(
                answer.events(request),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        return JSONResponse(await answer.whole(request))

    # -- around the routes ---------------------------------------------------------------

    def check_key(self, request: Request) -> None:
        """401 unless the request carries the API key (when the server has one)."""
        key = self.settings.api_key
        if key is None or not request.url.path.startswith("/v1"):
            return
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), key.encode()):
            raise ApiError(
                401,
                "missing or wrong API key: send the header 'Authorization: Bearer <key>' with the key "
                "the server was started with (--api-key or CHARRNN_API_KEY)",
                code="invalid_api_key",
            )


class _Answer:
    """One request's completions as they arrive from the engine."""

    def __init__(
        self,
        server: CompletionServer,
        request: CompletionRequest,
        streams: list[Stream],
        updates: _Mailbox,
    ) -> None:
        self.server, self.request, self.streams, self.updates = server, request, streams, updates
        self.id = f"cmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        # A streamed chunk is this, the text, then the rest of its choice: written out by hand, as
        # json.dumps of the whole envelope for every token of every stream is most of the loop's work.
        self._chunk_start = (
            f'data: {{"id": "{self.id}", "object": "text_completion", "created": {self.created}, '
            f'"model": {json.dumps(server.model_name)}, "choices": [{{"text": '
        )

    def _envelope(self, choices: list[dict]) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "text_completion",
            "created": self.created,
            "model": self.server.model_name,
            "choices": choices,
        }

    def _usage(self) -> dict[str, int]:
        return usage(
            prompt_token_count(self.server.tokenizer, self.request.prompts),
            sum(stream.tokens_written for stream in self.streams),
        )

    def _echo(self, stream: Stream) -> str:
        return stream.prompt if self.request.echo else ""

    async def _updates(self, request: Request) -> AsyncIterator[list[StreamUpdate]]:
        """Every stream's updates, as many as have arrived at a time, until all have ended; a client
        that goes away cancels them."""
        watcher = asyncio.ensure_future(_wait_for_disconnect(request))
        watcher.add_done_callback(lambda _: self.server.engine.cancel(self.streams))
        self.server.open_requests += 1
        try:
            remaining = len(self.streams)
            while remaining:
                items = await self.updates.take()  # a backlog goes out as one write
                arrived: list[StreamUpdate] = []
                for item in items:
                    if isinstance(item, BaseException):
                        raise item
                    arrived.extend(item)
                remaining -= sum(update.finish_reason is not None for update in arrived)
                yield arrived
                # Let the loop run other work (a disconnect, /health), and let a few steps gather
                # before the next write: one write of several tokens costs the loop (and the
                # client) about what one token costs.
                await asyncio.sleep(
                    min(
                        MAX_WRITE_INTERVAL_SECONDS,
                        WRITE_INTERVAL_PER_REQUEST_SECONDS * self.server.open_requests,
                    )
                )
        finally:
            self.server.open_requests -= 1
            watcher.cancel()
            unfinished = [stream for stream in self.streams if stream.finish_reason is None]
            if unfinished:
                self.server.engine.cancel(unfinished)

    async def whole(self, request: Request) -> dict[str, Any]:
        """The non-streamed answer."""
        texts = [[self._echo(stream)] for stream in self.streams]
        tokens: list[list] = [[] for _ in self.streams]
        try:
            async for arrived in self._updates(request):
                for update in arrived:
                    texts[update.stream.tag].append(update.text)
                    tokens[update.stream.tag].extend(update.tokens)
        except Exception as error:  # the model's (CharrnnError) or the worker's: the request is told
            raise ApiError(500, str(error), type="server_error") from None
        choices = []
        for stream in self.streams:
            choice: dict[str, Any] = {
                "text": "".join(texts[stream.tag]),
                "index": stream.tag,
                "logprobs": None,
                "finish_reason": stream.finish_reason,
                "seed": stream.seed,
            }
            if self.request.logprobs is not None:
                choice["logprobs"] = logprobs_object(tokens[stream.tag], len(self._echo(stream)))
            choices.append(choice)
        return {**self._envelope(choices), "usage": self._usage()}

    def _chunk(self, update: StreamUpdate) -> str:
        if not update.text and not update.tokens and update.finish_reason is None:
            return ""
        logprobs = None
        if self.request.logprobs is not None:
            logprobs = logprobs_object(update.tokens, len(self._echo(update.stream)))
        finish = json.dumps(update.finish_reason)
        return (
            f'{self._chunk_start}{json.dumps(update.text)}, "index": {update.stream.tag}, '
            f'"logprobs": {json.dumps(logprobs)}, "finish_reason": {finish}}}]}}\n\n'
        )

    async def events(self, request: Request) -> AsyncIterator[str]:
        """The streamed answer: server-sent events, then `data: [DONE]`."""
        for stream in self.streams:  # each choice opens with its seed (and its prompt, with echo)
            opening = {
                "text": self._echo(stream),
                "index": stream.tag,
                "logprobs": None,
                "finish_reason": None,
            }
            yield _sse(self._envelope([{**opening, "seed": stream.seed}]))
        try:
            async for arrived in self._updates(request):
                if any(update.finish_reason == CANCELLED for update in arrived):
                    return  # the server is stopping: the stream closes without [DONE]
                events = [self._chunk(update) for update in _merged(arrived)]
                text = "".join(event for event in events if event)
                if text:
                    yield text
        except Exception as error:  # the answer has begun: the error is its last event
            yield _sse(ApiError(500, str(error), type="server_error").body())
            return
        if self.request.include_usage:
            yield _sse({**self._envelope([]), "usage": self._usage()})
        yield _sse("[DONE]")


def create_app(model: CharRNN, tokenizer: Tokenizer, model_name: str, settings: ServeSettings) -> Starlette:
    """The ASGI application of `charrnn serve` (its engine starts and stops with the app's lifespan)."""
    server = CompletionServer(model, tokenizer, model_name, settings)

    def guarded(handler):
        async def endpoint(request: Request) -> Response:
            try:
                server.check_key(request)
                return await handler(request)
            except ApiError as error:
                return _error_response(error)

        return endpoint

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        server.engine.start()
        try:
            yield
        finally:
            server.engine.close()

    async def http_error(request: Request, error: Exception) -> Response:
        assert isinstance(error, HTTPException)
        message = {404: f"no such path: {request.url.path}", 405: f"{request.method} is not allowed here"}
        text = message.get(error.status_code, str(error.detail))
        return _error_response(ApiError(error.status_code, text, code=None))

    async def server_error(request: Request, error: Exception) -> Response:
        return _error_response(ApiError(500, f"internal error: {error}", type="server_error"))

    middleware = []
    if settings.cors_origins:
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=list(settings.cors_origins),
                allow_methods=["GET", "POST", "OPTIONS"],
                allow_headers=["Authorization", "Content-Type"],
            )
        )
    app = Starlette(
        routes=[
            Route("/", guarded(server.page), methods=["GET"]),
            Route("/health", guarded(server.health), methods=["GET"]),
            Route("/v1/models", guarded(server.models), methods=["GET"]),
            Route("/v1/completions", guarded(server.completions), methods=["POST"]),
        ],
        middleware=middleware,
        lifespan=lifespan,
        exception_handlers={HTTPException: http_error, Exception: server_error},
    )
    app.state.server = server
    return app
