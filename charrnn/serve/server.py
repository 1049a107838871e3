"""Running the application on uvicorn: one process, one model, until Ctrl-C or SIGTERM."""

from __future__ import annotations

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
    return uvicorn.Server(config)
