"""``fastuner ui``: open the web console, signed in, without the API key ever leaving this machine's
CLI (the browser gets a single-use, 60-second sign-in link instead).

With no ``--api-url`` (the embedded default) the server at ``--host``/``--port`` is used when one
answers there, else one is started in this process and runs until Ctrl-C.
"""

from __future__ import annotations

import threading
import webbrowser
from typing import TYPE_CHECKING

import click
import httpx

from cli.output import console, err_console
from cli.state import State, pass_state

if TYPE_CHECKING:
    import uvicorn


def _answers(base: str, patience_s: float = 30.0) -> bool:
    """Whether a Fastuner server answers at ``base``. Nothing listening is a quick no; a server that
    is there but busy (a slow answer) is waited for, not taken as absent (starting a second one on
    its port would fail)."""
    try:
        return httpx.get(f"{base}/healthz", timeout=httpx.Timeout(patience_s, connect=2.0)).status_code == 200
    except httpx.HTTPError:
        return False


def _serve(host: str, port: int) -> tuple[threading.Thread, uvicorn.Server]:
    from api.settings import get_settings
    from cli.embedded import start_in_thread

    started = start_in_thread(get_settings(), host, port, "fastuner-console")
    if started is None:
        raise click.ClickException(f"the server failed to start on {host}:{port} (port in use?)")
    return started


def signin_url(base: str, api_key: str | None) -> str:
    """A one-time sign-in link for ``api_key``; without a key, the sign-in form."""
    if not api_key:
        return f"{base}/ui/signin"
    resp = httpx.post(
        f"{base}/v0/console/signin-token", headers={"Authorization": f"Bearer {api_key}"}, timeout=30.0
    )
    if resp.status_code != 200:
        raise click.ClickException(
            f"the API refused a console sign-in link ({resp.status_code}): {resp.text}"
        )
    path = resp.json()["path"]
    return f"{base}{path}"


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="embedded default: where to serve")
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--no-browser", is_flag=True, help="print the sign-in link instead of opening a browser")
@pass_state
def ui(state: State, host: str, port: int, no_browser: bool) -> None:
    """Open the web console signed in with your key (a one-time link; the key stays here)."""
    from cli.client import local_api_key

    server: uvicorn.Server | None = None
    thread: threading.Thread | None = None
    if state.api_url:
        base = state.api_url.rstrip("/")
    else:
        base = f"http://{host}:{port}"
        if not _answers(base):
            thread, server = _serve(host, port)
    url = signin_url(base, state.api_key or local_api_key())
    console.print(f"Fastuner console: {url}", highlight=False, soft_wrap=True)
    console.file.flush()  # before serving: whoever reads a pipe gets the link now
    if "/ui/signin/token" in url:
        err_console.print("[dim]the link signs in once, within 60 s[/]")
    if not no_browser:
        webbrowser.open(url)
    if server is None or thread is None:
        return
    err_console.print(f"[dim]serving {base} — Ctrl-C to stop[/]")
    try:
        while thread.is_alive():
            thread.join(timeout=0.5)
    except KeyboardInterrupt:
        server.should_exit = True
        thread.join(timeout=30)
