"""Running the application on uvicorn: one process, one model, until Ctrl-C or SIGTERM."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from charrnn.data.tokenizers import Tokenizer
from charrnn.model import CharRNN
from charrnn.serve.app import ServeSettings, create_app

# On Ctrl-C or SIGTERM, streams in flight get this long to finish before they are closed.
SHUTDOWN_GRACE_SECONDS = 5


def build_server(
    model: CharRNN, tokenizer: Tokenizer, model_name: str, host: str, port: int, settings: ServeSettings
):
    """A `uvicorn.Server` for the model (call `.run()`; it handles Ctrl-C and SIGTERM itself when run
    in the main thread; set `.should_exit` to stop it from another thread)."""
    import uvicorn

    app = create_app(model, tokenizer, model_name, settings)
    engine = app.state.server.engine

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: object) -> None:
            # Ctrl-C or SIGTERM: the streams in flight end now (their connections close without
            # [DONE]) and new requests get 429, so the graceful shutdown does not wait them out.
            engine.stop()
            super().handle_exit(sig, frame)  # type: ignore[arg-type]

    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=SHUTDOWN_GRACE_SECONDS,
        # The body limit is checked by the app as the body arrives; h11 needs no other limit.
    )
    return Server(config)


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now (the system's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


@contextmanager
def server_in_thread(
    model: CharRNN,
    tokenizer: Tokenizer,
    model_name: str = "model",
    settings: ServeSettings | None = None,
    host: str = "127.0.0.1",
    start_timeout: float = 30.0,
) -> Iterator[tuple[str, object]]:
    """Serve on a free loopback port from a background thread (tests, benchmarks, notebooks).

    Yields (base URL, the uvicorn server); the server stops when the block ends.
    """
    port = free_port(host)
    server = build_server(model, tokenizer, model_name, host, port, settings or ServeSettings())
    thread = threading.Thread(target=server.run, name="charrnn-serve", daemon=True)
    thread.start()
    deadline = time.monotonic() + start_timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the server did not start on {host}:{port}")
        time.sleep(0.01)
    try:
        yield f"http://{host}:{port}", server
    finally:
        server.should_exit = True
        thread.join(start_timeout)
