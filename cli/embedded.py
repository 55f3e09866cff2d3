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

import uvicorn

STARTUP_TIMEOUT_S = 60.0


@contextmanager
def serve_in_thread() -> Iterator[str]:
    """Start the app from the environment's settings; yields its base URL; stops it on exit."""
    from api.app import create_app
    from api.server import uvicorn_options
    from api.settings import get_settings

    settings = get_settings()
    if "FASTUNER_LOG_LEVEL" not in os.environ:  # keep the terminal for the command's own output
        settings = settings.model_copy(update={"log_level": "WARNING"})
    if "FASTUNER_RATE_LIMIT" not in os.environ:  # one CLI command talking to itself on loopback
        settings = settings.model_copy(update={"rate_limit": ""})
    config = uvicorn.Config(
        create_app(settings), host="127.0.0.1", port=0, log_level="warning", access_log=False, lifespan="on",
        **uvicorn_options(settings),
    )  # fmt: skip
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="fastuner-embedded-api", daemon=True)
    thread.start()
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the embedded Fastuner API failed to start")
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def local_api_key() -> str | None:
    """The key the API wrote for this machine's default tenant (``{home}/api_key``), if any."""
    from api.services.auth import read_secret
    from api.settings import get_settings

    return read_secret(get_settings().api_key_file)
