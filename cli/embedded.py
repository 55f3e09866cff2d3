"""Embedded mode: serve the API on a free loopback port in a background thread of the CLI process.

The CLI then speaks real HTTP to it through the same SDK client as for a remote API, so there is
one code path; uploads stream over the socket and the app's lifespan (background tasks) runs.
The SDK serves it only when asked (``fastuner_sdk.connect(embedded=True)``); the CLI asks when no
API URL is configured.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import uvicorn

if TYPE_CHECKING:
    from api.settings import Settings

STARTUP_TIMEOUT_S = 60.0


@contextmanager
def serve_in_thread() -> Iterator[str]:
    """Start the app from the environment's settings; yields its base URL; stops it on exit."""
    from api.settings import get_settings

    settings = get_settings()
    if "FASTUNER_LOG_LEVEL" not in os.environ:  # keep the terminal for the command's own output
        settings = settings.model_copy(update={"log_level": "WARNING"})
    if "FASTUNER_RATE_LIMIT" not in os.environ:  # one CLI command talking to itself on loopback
        settings = settings.model_copy(update={"rate_limit": ""})
    started = start_in_thread(
        settings, "127.0.0.1", 0, "fastuner-embedded-api", access_log=False, lifespan="on"
    )
    if started is None:
        raise RuntimeError("the embedded Fastuner API failed to start")
    thread, server = started
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def start_in_thread(
    settings: Settings, host: str, port: int, name: str, **options: Any
) -> tuple[threading.Thread, uvicorn.Server] | None:
    """Serve the app made from ``settings`` on a daemon thread called ``name`` (``options`` go to
    ``uvicorn.Config``); its thread and server once it has started, None when it did not within
    ``STARTUP_TIMEOUT_S`` (port in use?)."""
    from api.app import create_app
    from api.server import uvicorn_options

    app = create_app(settings)
    config = uvicorn.Config(
        app, host=host, port=port, log_level="warning", **options, **uvicorn_options(settings)
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=name, daemon=True)
    thread.start()
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            return None
        time.sleep(0.01)
    return thread, server


def local_api_key() -> str | None:
    """The key the API wrote for this machine's default tenant (``{home}/api_key``), if any."""
    from api.services.auth import read_secret
    from api.settings import get_settings

    return read_secret(get_settings().api_key_file)
