"""Issue 12, items 3 and 4: authentication before bodies, per-route body caps, slow clients.

The process-level checks run a real ``fastuner server`` (uvicorn with the protocol of
api/server.py) as a subprocess with its own FASTUNER_HOME and speak raw HTTP/1.1 over sockets, so
what is measured is the server process itself: its RSS while a 200 MB body is thrown at it, and
whether it hangs up on clients that trickle their headers or body.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
import psutil
import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.middleware import UPLOAD_ROUTES
from api.settings import Settings
from tests.support.servers import free_port, stop, wait_until_healthy

MB = 1024 * 1024
TIMEOUT_S = 1.0  # the header and body timeouts of the server the slow-client tests use
CAPS_TIMEOUT_S = 30.0  # ... and of the one the body-cap tests use
JSON_ROUTES = ["/v0/finetune", "/v0/inference"]


# -- a real server ---------------------------------------------------------------------------------
@dataclass
class Server:
    port: int
    pid: int
    key: str
    log: Path

    def url(self, path: str = "") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def rss(self) -> int:
        return int(psutil.Process(self.pid).memory_info().rss)


@contextlib.contextmanager
def _serve(home: Path, timeout: float) -> Iterator[Server]:
    """``fastuner server`` in a subprocess with these header and body timeouts."""
    log = home.parent / "server.log"
    env = {
        **os.environ,
        "FASTUNER_HOME": str(home),
        "FASTUNER_DATABASE_URL": f"sqlite:///{home / 'fastuner.db'}",
        "FASTUNER_BACKGROUND_TASKS": "false",
        "FASTUNER_LOG_LEVEL": "WARNING",
        "FASTUNER_HEADER_TIMEOUT_SECONDS": str(timeout),
        "FASTUNER_BODY_TIMEOUT_SECONDS": str(timeout),
        "FASTUNER_RATE_LIMIT": "",  # not under test here
    }
    env.pop("FASTUNER_API_URL", None)
    port = free_port()
    cmd = [sys.executable, "-m", "cli.main", "server", "--host", "127.0.0.1", "--port", str(port)]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_until_healthy(proc, f"http://127.0.0.1:{port}/healthz", log)
        yield Server(port, proc.pid, (home / "api_key").read_text().strip(), log)
    finally:
        stop(proc)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """For the body caps: timeouts far beyond any stall of this (loaded) test process, so a request
    the test sends promptly is never cut off because the test itself paused for a second (CI once
    saw a plain warm-up POST dropped as "sent nothing" by a 1 s header deadline)."""
    with _serve(tmp_path_factory.mktemp("http-limits") / "home", CAPS_TIMEOUT_S) as s:
        yield s


@pytest.fixture(scope="module")
def strict_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """For the slow-client tests: header and body timeouts of ``TIMEOUT_S``."""
    with _serve(tmp_path_factory.mktemp("http-timeouts") / "home", TIMEOUT_S) as s:
        yield s


# -- raw HTTP --------------------------------------------------------------------------------------
@dataclass
class Reply:
    status: int | None  # None: the server hung up (or reset) before a status line
    headers: dict[str, str]
    body: bytes
    closed: bool  # the server closed the connection after the reply
    elapsed: float
    sent: int  # body bytes the client got into its socket


def _head(method: str, path: str, headers: dict[str, str]) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _read_reply(sock: socket.socket, started: float, timeout: float) -> tuple[bytes, bool]:
    """Everything the server sends until it closes (True) or ``timeout`` passes (False)."""
    data = bytearray()
    sock.settimeout(timeout)
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return bytes(data), True
            data += chunk
            head, sep, body = bytes(data).partition(b"\r\n\r\n")
            if sep and b"connection: close" not in head.lower():  # kept alive: return at its end
                length = _parse_headers(head).get("content-length")
                if length is not None and len(body) >= int(length):
                    return bytes(data), False
    except (ConnectionResetError, BrokenPipeError):
        return bytes(data), True
    except TimeoutError:
        return bytes(data), False


def _parse_headers(head: bytes) -> dict[str, str]:
    out = {}
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.decode("latin-1").partition(":")
        out[name.strip().lower()] = value.strip()
    return out


def _reply(data: bytes, closed: bool, started: float, sent: int) -> Reply:
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ")[1]) if head.startswith(b"HTTP/1.1 ") else None
    return Reply(
        status, _parse_headers(head) if status else {}, body, closed, time.monotonic() - started, sent
    )


def stream_request(
    server: Server,
    path: str,
    body: Callable[[], Iterator[bytes]],
    *,
    headers: dict[str, str],
    length: int | None,
    timeout: float = 30.0,
) -> Reply:
    """POST ``path`` with a body produced chunk by chunk (Content-Length ``length``, or chunked)
    from a second thread, while this one reads whatever the server answers."""
    framing = {"Content-Length": str(length)} if length is not None else {"Transfer-Encoding": "chunked"}
    sock = socket.create_connection(("127.0.0.1", server.port))
    sent = 0
    stop = threading.Event()

    def pump() -> None:
        nonlocal sent
        with contextlib.suppress(OSError):
            for chunk in body():
                if stop.is_set():
                    return
                sock.sendall(chunk if length is not None else b"%x\r\n%s\r\n" % (len(chunk), chunk))
                sent += len(chunk)
            if length is None:
                sock.sendall(b"0\r\n\r\n")

    started = time.monotonic()
    sock.sendall(_head("POST", path, {"Content-Type": "application/json", **framing, **headers}))
    sender = threading.Thread(target=pump, daemon=True)
    sender.start()
    try:
        data, closed = _read_reply(sock, started, timeout)
    finally:
        stop.set()
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        sock.close()
        sender.join(timeout=10)
    return _reply(data, closed, started, sent)


def json_body(total: int) -> Callable[[], Iterator[bytes]]:
    """A JSON object of ``total`` bytes, generated 64 KiB at a time (never held whole)."""

    def chunks() -> Iterator[bytes]:
        yield b'{"base_model": "'
        left = total - len(b'{"base_model": "') - 2
        block = b"a" * 65536
        while left > 0:
            yield block[: min(left, len(block))]
            left -= len(block)
        yield b'"}'

    return chunks


class PeakRss:
    """Samples the server's RSS every 10 ms while in use; ``growth`` is peak minus the start."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.start = self.peak = server.rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.server.rss())
            time.sleep(0.01)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        time.sleep(0.3)  # let the server finish whatever it still does with the request
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.server.rss())

    @property
    def growth(self) -> int:
        return self.peak - self.start


# -- auth before bodies; body caps -----------------------------------------------------------------
@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
@pytest.mark.parametrize("path", [*JSON_ROUTES, "/v0/datasets"])  # and an upload route (2 GiB cap)
def test_an_unauthenticated_200mb_body_is_refused_without_reading_it(
    server: Server, path: str, chunked: bool
) -> None:
    # Warm up the code paths (first request, a 401, a 413) so only the big body is measured.
    assert httpx.get(server.url("/v0/tenant"), headers={"Authorization": f"Bearer {server.key}"}).is_success
    assert httpx.post(server.url(path), json={"x": 1}).status_code == 401
    total = 200 * MB
    with PeakRss(server) as rss:
        reply = stream_request(server, path, json_body(total), headers={}, length=None if chunked else total)
    print(f"{path} chunked={chunked}: RSS +{rss.growth / MB:.1f} MB, {reply.sent / MB:.1f} MB sent, {reply}")
    assert rss.growth < 50 * MB, f"server RSS grew by {rss.growth / MB:.0f} MB"
    # Refused up front: 401 (no key), or 413 from the Content-Length (over the JSON cap) before
    # any key check; either way in the error shape, and the server hangs up instead of draining.
    assert reply.status == (413 if path in JSON_ROUTES and not chunked else 401), reply
    error = json.loads(reply.body)
    assert error["code"] in ("unauthorized", "payload_too_large") and error["request_id"]
    assert reply.headers.get("connection") == "close" and reply.closed
    assert reply.sent < total // 2, f"the server drained {reply.sent / MB:.0f} MB"


@pytest.mark.parametrize("path", JSON_ROUTES)
def test_an_unauthenticated_body_under_the_cap_is_401_not_parsed(server: Server, path: str) -> None:
    reply = stream_request(server, path, json_body(MB // 2), headers={}, length=MB // 2)
    assert reply.status == 401 and json.loads(reply.body)["code"] == "unauthorized"
    assert reply.headers.get("connection") == "close"


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
@pytest.mark.parametrize("path", JSON_ROUTES)
def test_an_authenticated_2mb_json_body_is_413(server: Server, path: str, chunked: bool) -> None:
    auth = {"Authorization": f"Bearer {server.key}"}
    total = 2 * MB
    reply = stream_request(server, path, json_body(total), headers=auth, length=None if chunked else total)
    assert reply.status == 413, reply
    error = json.loads(reply.body)
    assert error["code"] == "payload_too_large" and str(MB) in error["message"] and error["request_id"]
    assert reply.closed


# -- slow clients ----------------------------------------------------------------------------------
def _trickle(sock: socket.socket, pieces: list[bytes], every: float, until: float) -> tuple[bytes, bool]:
    """Send one piece every ``every`` seconds (stopping if the server hangs up), then read."""
    sock.setblocking(True)
    started = time.monotonic()
    for piece in pieces:
        if time.monotonic() - started > until:
            break
        try:
            sock.sendall(piece)
        except OSError:
            break
        sock.settimeout(every)
        try:
            data = sock.recv(65536)  # the server answering (or closing) ends the trickle
        except TimeoutError:
            continue
        except ConnectionResetError:
            return b"", True
        if not data:
            return b"", True
        rest, closed = _read_reply(sock, started, 5)
        return data + rest, closed
    return _read_reply(sock, started, 5)


def test_a_client_trickling_its_headers_is_cut_off(strict_server: Server) -> None:
    pieces = [b"GET /v0/tenant HTTP/1.1\r\n", b"Host: x\r\n"] + [b"X-Slow: %d\r\n" % i for i in range(200)]
    with socket.create_connection(("127.0.0.1", strict_server.port)) as sock:
        started = time.monotonic()
        data, closed = _trickle(sock, pieces, every=0.1, until=20)
        elapsed = time.monotonic() - started
    assert closed and elapsed < TIMEOUT_S + 3, (elapsed, data)
    assert data.startswith(b"HTTP/1.1 408"), data


def test_a_connection_that_sends_nothing_is_closed(strict_server: Server) -> None:
    with socket.create_connection(("127.0.0.1", strict_server.port)) as sock:
        started = time.monotonic()
        data, closed = _read_reply(sock, started, 20)
        elapsed = time.monotonic() - started
    assert closed and data == b"" and elapsed < TIMEOUT_S + 3, (elapsed, data)


def test_the_header_deadline_restarts_per_request_on_a_keep_alive_connection(strict_server: Server) -> None:
    auth = f"Authorization: Bearer {strict_server.key}\r\n".encode()
    with socket.create_connection(("127.0.0.1", strict_server.port)) as sock:
        for i in range(3):  # each request well within the deadline, together well beyond it
            if i:
                time.sleep(TIMEOUT_S * 0.6)
            sock.sendall(b"GET /v0/tenant HTTP/1.1\r\nHost: x\r\n" + auth + b"\r\n")
            data, closed = _read_reply(sock, time.monotonic(), 5)
            assert data.startswith(b"HTTP/1.1 200") and not closed, data


@pytest.mark.parametrize(
    ("path", "content_type"),
    [("/v0/finetune", "application/json"), ("/v0/datasets", "multipart/form-data; boundary=b")],
    ids=["json", "upload"],
)
def test_a_client_trickling_its_body_is_cut_off(strict_server: Server, path: str, content_type: str) -> None:
    """JSON route: a byte every 0.1 s never idles for the timeout, but the whole body must arrive
    within it. Upload route: the client stalls for longer than the timeout between chunks."""
    auth = f"Bearer {strict_server.key}"
    head = _head(
        "POST", path, {"Authorization": auth, "Content-Type": content_type, "Content-Length": "100000"}
    )
    upload = path == "/v0/datasets"
    first = (
        b'--b\r\nContent-Disposition: form-data; name="file"; filename="x.jsonl"\r\n\r\n' if upload else b"{"
    )
    pieces = [head + first] + ([] if upload else [b" "] * 500)
    with socket.create_connection(("127.0.0.1", strict_server.port)) as sock:
        started = time.monotonic()
        data, closed = _trickle(sock, pieces, every=0.1, until=20)  # the upload stalls after one piece
        elapsed = time.monotonic() - started
    assert closed and elapsed < TIMEOUT_S + 3, (elapsed, data)
    head_part, _, body = data.partition(b"\r\n\r\n")
    assert head_part.startswith(b"HTTP/1.1 408"), data
    assert json.loads(body)["code"] == "request_timeout"


# -- in process: the same rules, and what decides them ---------------------------------------------
@pytest.fixture
def client(settings_factory: Callable[..., Settings]) -> Iterator[TestClient]:
    settings = settings_factory(background_tasks=False, max_json_body_bytes=1000, rate_limit="")
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        c.headers["Authorization"] = f"Bearer {c.app.state.local_api_key}"  # type: ignore[attr-defined]
        yield c


def _asgi_call(
    app: Any, method: str, path: str, headers: list[tuple[bytes, bytes]]
) -> tuple[int, dict[bytes, bytes], bytes]:
    """Call the ASGI app directly with a ``receive`` that fails the test if the body is read."""
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        raise AssertionError("the body was read")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    request = {"method": method, "path": path, "raw_path": path.encode(), "headers": headers}
    connection = {"client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80), "scheme": "http"}
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", **request, **connection}
    scope.update(root_path="", query_string=b"", state={})
    anyio.run(app, scope, receive, send)
    start = sent[0]
    return start["status"], dict(start["headers"]), b"".join(m.get("body", b"") for m in sent[1:])


@pytest.mark.parametrize("path", ["/v0/finetune", "/v0/inference", "/v0/datasets", "/v0/inference/batch"])
@pytest.mark.parametrize("authorization", [None, b"Bearer fsk_wrong", b"Basic eDp5"])
def test_without_a_valid_key_the_body_is_never_read(
    client: TestClient, path: str, authorization: bytes | None
) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", b"500")]
    if authorization:
        headers.append((b"authorization", authorization))
    status, resp_headers, body = _asgi_call(client.app, "POST", path, headers)
    assert status == 401 and resp_headers[b"connection"] == b"close"
    error = json.loads(body)
    assert error["code"] == "unauthorized" and error["message"] and error["request_id"].startswith("req_")


def test_lower_case_bearer_is_accepted_and_the_key_is_looked_up_once(client: TestClient) -> None:
    ctx = client.app.state.ctx  # type: ignore[attr-defined]
    key = client.app.state.local_api_key  # type: ignore[attr-defined]
    calls: list[str | None] = []
    original = ctx.auth.authenticate
    ctx.auth.authenticate = lambda header: calls.append(header) or original(header)
    resp = client.get("/v0/tenant", headers={"Authorization": f"bearer {key}"})
    assert resp.status_code == 200 and resp.json()["tenant_id"] == "default"
    assert calls == []  # the dependency took the tenant the middleware found


def test_a_json_route_keeps_its_small_cap_whatever_the_content_type(client: TestClient) -> None:
    body = b"x" * 5000
    for ctype in ["application/json", "multipart/form-data; boundary=b", "application/octet-stream"]:
        resp = client.post("/v0/finetune", content=body, headers={"Content-Type": ctype})
        assert resp.status_code == 413, (ctype, resp.text)
        assert resp.json()["code"] == "payload_too_large" and "1000 bytes" in resp.json()["message"]
    # the same path spelled differently is no upload route either
    resp = client.post(
        "/v0/datasets/", content=body, headers={"Content-Type": "multipart/form-data; boundary=b"}
    )
    assert resp.status_code == 413


def test_upload_routes_keep_the_large_cap(client: TestClient, tmp_path: Path) -> None:
    lines = "".join(
        json.dumps({"input": f"question {i}?" * 3, "target": f"answer {i}"}) + "\n" for i in range(120)
    )
    data = lines.encode()
    assert len(data) > 1000
    resp = client.post(
        "/v0/datasets/validate",
        data={"name": "ds"},
        files={"file": ("x.jsonl", data, "application/x-ndjson")},
    )
    assert resp.status_code == 200, resp.text


def test_the_upload_routes_are_exactly_the_multipart_ones(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    multipart = {
        (method.upper(), path)
        for path, ops in spec["paths"].items()
        for method, op in ops.items()
        if "multipart/form-data" in op.get("requestBody", {}).get("content", {})
    }
    assert multipart == set(UPLOAD_ROUTES)


def test_public_routes_need_no_key_and_unknown_paths_do(client: TestClient) -> None:
    anonymous = TestClient(client.app, raise_server_exceptions=False)
    for path in ["/healthz", "/v0/healthz", "/openapi.json", "/docs", "/redoc"]:
        assert anonymous.get(path).status_code == 200, path
    assert anonymous.get("/v0/nowhere").status_code == 401


def test_a_response_before_the_body_is_read_closes_the_connection(client: TestClient) -> None:
    # /healthz takes no body: the app answers 405 without reading it; the server must not keep
    # the connection (it would have to drain whatever the client still sends).
    resp = client.post("/healthz", content=b"x" * 500)
    assert resp.status_code == 405 and resp.headers["connection"] == "close"
    resp = client.get("/healthz")
    assert "connection" not in resp.headers
