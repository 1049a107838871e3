"""`charrnn serve`: an OpenAI-compatible HTTP API and a page to write with, for one model."""

from __future__ import annotations

import contextlib
import ipaddress
import sys

import click

from charrnn.cli.group import Terminated, cli
from charrnn.errors import UsageProblem

SWITCH_INTERVAL_SECONDS = 0.0005
_LOOPBACK_NAMES = {"localhost", "localhost.localdomain"}


def _is_loopback(host: str) -> bool:
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_can_listen(host: str, port: int) -> None:
    # uvicorn reports a port it cannot bind with a log line and sys.exit: say it as one Error line first.
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        with socket.socket(infos[0][0], socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(infos[0][4])
    except OSError as error:
        raise UsageProblem(
            f"cannot listen on {host}:{port}: {error.strerror or error} (try another --port)"
        ) from None


def _model_name(weights_path) -> str:
    # A run's weights are named after their role (best, latest): the run directory names the model.
    return weights_path.parent.name if weights_path.stem in ("best", "latest") else weights_path.stem


@cli.command()
@click.argument("checkpoint", metavar="[MODEL]", required=False)
@click.option(
    "--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0: every one)."
)
@click.option(
    "--port", type=click.IntRange(0, 65535), default=8000, show_default=True, help="Port to listen on."
)
@click.option(
    "--api-key",
    envvar="CHARRNN_API_KEY",
    default=None,
    show_envvar=True,
    help="Answer /v1 only with 'Authorization: Bearer KEY'.",
)
@click.option(
    "--cors-origin",
    "cors_origins",
    multiple=True,
    metavar="ORIGIN",
    help="Let pages from ORIGIN (e.g. http://localhost:3000, or *) call the API; repeatable. Default: none.",
)
@click.option(
    "--max-tokens",
    type=click.IntRange(1),
    default=4096,
    show_default=True,
    help="Largest max_tokens a request may ask.",
)
@click.option(
    "--max-n", type=click.IntRange(1), default=16, show_default=True, help="Most completions in one request."
)
@click.option(
    "--max-streams",
    type=click.IntRange(1),
    default=32,
    show_default=True,
    help="Streams written side by side (the batch).",
)
@click.option(
    "--max-queued",
    type=click.IntRange(0),
    default=64,
    show_default=True,
    help="Streams waiting for a slot; beyond them requests get 429.",
)
@click.option(
    "--max-body",
    type=click.IntRange(1),
    default=1024 * 1024,
    show_default=True,
    help="Largest request body, bytes.",
)
@click.option("--threads", type=int, default=1, show_default=True, help="CPU threads for torch.")
def serve(
    checkpoint: str | None,
    host: str,
    port: int,
    api_key: str | None,
    cors_origins: tuple[str, ...],
    max_tokens: int,
    max_n: int,
    max_streams: int,
    max_queued: int,
    max_body: int,
    threads: int,
) -> None:
    """Serve MODEL over HTTP: OpenAI's /v1/completions (streamed, batched) and a page at /.

    MODEL is a run directory, a .safetensors file, an .onnx export or a bundled model's name;
    default: the most recent run under runs/, else the bundled model.
    """
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise UsageProblem(
            "charrnn serve needs the serve extra: pip install 'charrnn[serve]' (Starlette and uvicorn)"
        ) from None
    if api_key == "":
        raise UsageProblem("--api-key is empty: give a key, or leave the option out")
    from charrnn.cli.model_options import load_model
    from charrnn.serve.app import ServeSettings
    from charrnn.serve.completions import Limits
    from charrnn.serve.server import build_server

    model = load_model(checkpoint, "cpu", threads)
    name = _model_name(model.path)
    settings = ServeSettings(
        api_key=api_key,
        cors_origins=cors_origins,
        max_body_bytes=max_body,
        max_streams=max_streams,
        max_queued=max_queued,
        limits=Limits(max_tokens=max_tokens, max_n=max_n),
    )
    server = build_server(model.module, model.tokenizer, name, host, port, settings)
    _check_can_listen(host, port)
    shown_host = f"[{host}]" if ":" in host else host
    print(f"Serving {name} at http://{shown_host}:{port}/ (the API under /v1; Ctrl-C stops)", file=sys.stderr)
    if not _is_loopback(host) and api_key is None:
        print(
            f"Note: {host} is reachable from other machines and there is no --api-key: anyone who can "
            "reach it can use the model.",
            file=sys.stderr,
        )
    # The worker thread releases the GIL inside each matrix product and needs it back a few
    # microseconds later; with the default 5 ms switch interval a busy event loop thread kept it
    # that long each time, and 32 streams ran at half the engine's speed.
    sys.setswitchinterval(SWITCH_INTERVAL_SECONDS)
    # uvicorn handles Ctrl-C and SIGTERM itself; once it has shut down it passes the signal on.
    with contextlib.suppress(KeyboardInterrupt, Terminated):
        server.run()
    print("Stopped.", file=sys.stderr)
