"""``fastuner ui``: a single-use sign-in link for the local key (never the key itself), from a
server it starts for the embedded default or one already running."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from cli.main import cli
from tests.support.servers import free_port

LINK = re.compile(r"Fastuner console: (http://127\.0\.0\.1:\d+/ui/signin/token\?t=\S+)")


def _start_ui(home: Path, port: int) -> subprocess.Popen[str]:
    """``fastuner ui`` for the embedded default in ``home`` (no API URL or key from the shell)."""
    env = {**os.environ, "FASTUNER_HOME": str(home), "FASTUNER_BACKGROUND_TASKS": "false"}
    env.pop("FASTUNER_API_URL", None)
    env.pop("FASTUNER_API_KEY", None)
    argv = [sys.executable, "-m", "cli.main", "ui", "--port", str(port), "--no-browser"]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def _first_link_line(proc: subprocess.Popen[str]) -> str:
    """The output line holding the sign-in link (or the last line, if the process ended first)."""
    assert proc.stdout is not None
    line = ""
    for line in proc.stdout:
        if LINK.search(line):
            break
    return line


def _check_link(url: str, key: str) -> None:
    assert key not in url
    with httpx.Client() as browser:
        first = browser.get(url, follow_redirects=False)
        assert first.status_code == 303 and first.headers["location"] == "/ui/jobs"
        assert "httponly" in first.headers["set-cookie"].lower()
        jobs = browser.get(url.split("/ui/")[0] + "/ui/jobs")
        assert jobs.status_code == 200 and "Fine-tune jobs" in jobs.text and key not in jobs.text
    assert httpx.get(url, follow_redirects=False).status_code == 401  # single use


@pytest.mark.slow
def test_ui_starts_the_embedded_server_then_reuses_it(tmp_path: Path) -> None:
    home = tmp_path / "home"
    port = free_port()
    proc = _start_ui(home, port)
    try:
        line = _first_link_line(proc)  # the server starts, then the link is printed
        match = LINK.search(line)
        assert match, line
        key = (home / "api_key").read_text().strip()
        _check_link(match.group(1), key)
        # A second `fastuner ui` finds the server running: it prints a fresh link and returns.
        res = CliRunner(env={"FASTUNER_HOME": str(home), "FASTUNER_API_URL": None}).invoke(
            cli, ["ui", "--port", str(port), "--no-browser"]
        )
        assert res.exit_code == 0, res.output
        again = LINK.search(res.output)
        assert again and again.group(1) != match.group(1)
        _check_link(again.group(1), key)
        assert proc.poll() is None  # still serving until Ctrl-C
    finally:
        proc.terminate()
        proc.wait(timeout=60)


@pytest.mark.slow
def test_ui_with_a_wrong_key_fails_cleanly(tmp_path: Path) -> None:
    port = free_port()
    proc = _start_ui(tmp_path / "home", port)
    try:
        _first_link_line(proc)
        res = CliRunner().invoke(
            cli, ["ui", "--api-url", f"http://127.0.0.1:{port}", "--api-key", "fsk_wrong", "--no-browser"]
        )
        assert res.exit_code == 1 and "refused a console sign-in link (401)" in res.output
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def test_a_busy_server_is_waited_for_not_taken_as_absent() -> None:
    """A running server slow to answer /healthz (a loaded machine) made a second ``fastuner ui``
    start another server on the same port, which failed ("port in use?")."""
    import threading
    import time
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from cli.commands.ui import _answers

    class Slow(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            time.sleep(3)  # longer than the 2 s the check used to wait
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        assert _answers(f"http://127.0.0.1:{server.server_address[1]}")
    finally:
        server.shutdown()
        server.server_close()
    started = time.monotonic()
    assert not _answers(f"http://127.0.0.1:{free_port()}")  # nothing listening: a quick no
    assert time.monotonic() - started < 5
