"""The console's browser tests: a real server (local backend, tiny model) on a free loopback port
and one Chromium (Debian's package) per module."""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@dataclass
class LiveServer:
    base: str
    key: str  # the bootstrap key of the default tenant
    other_key: str  # a key of another tenant
    tiny_model: Path
    app: Any


@pytest.fixture(scope="module")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    pytest.importorskip("torch")
    import uvicorn
    from scu.tiny import build_tiny_model

    from api.app import create_app
    from api.server import uvicorn_options
    from api.settings import Settings

    root = tmp_path_factory.mktemp("console")
    models = root / "models"
    build_tiny_model(models / "tiny-llama")
    settings = Settings(
        home=root / "home",
        log_json=False,
        log_level="WARNING",
        reconcile_interval_seconds=0.5,
        janitor_interval_seconds=3600,
        model_roots=[models],
        rate_limit="",
    )
    app = create_app(settings)
    other = app.state.ctx.auth.create_key("tenant-b").secret
    config = uvicorn.Config(
        app, host="127.0.0.1", port=0, log_level="warning", lifespan="on", **uvicorn_options(settings)
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="console-test-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the test server did not start"
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield LiveServer(
            f"http://127.0.0.1:{port}", app.state.local_api_key, other, models / "tiny-llama", app
        )
    finally:
        _stop_everything(app.state.ctx)  # a failed test must not leave a job training or a server up
        server.should_exit = True
        thread.join(timeout=60)


def _stop_everything(ctx: Any) -> None:
    for tenant in ("default", "tenant-b"):
        jobs, _ = ctx.finetune.list_page(tenant, limit=200)
        for job in jobs:
            if not job.status.terminal and job.status.value != "cancelling":
                ctx.finetune.cancel(tenant, job.id)
        live, _ = ctx.deployments.list_page(tenant, limit=200, live_only=True)
        for dep in live:
            ctx.deployments.delete(tenant, dep.id)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    sync_api = pytest.importorskip("playwright.sync_api")
    executable = shutil.which("chromium")
    if executable is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing (scripts/test.sh installs Debian's package)")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()
