"""kill -9 during a dataset upload leaves nothing behind (issue 12, item 2).

A real ``fastuner server`` subprocess on the embedded default (SQLite, local store) with its own
home is killed with SIGKILL at each step of an upload of a few MB: mid-body (by the test), and at
the fault points of :mod:`api.faults` (upload spooled, splits written, a store write half done, one
split stored, every object stored but no row yet). After each crash the leftovers are there
(that is what the sweep is for); after a restart with ``FASTUNER_SWEEP_GRACE_SECONDS=0`` the store,
``work/`` and the server's temp folder hold 0 orphan bytes, and every dataset row has its objects.
The restarted server then takes the same upload whole.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.servers import free_port

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 60.0
SWEEP_TIMEOUT_S = 30.0


class Server:
    """``python -m cli.main server`` (what ``fastuner server`` runs) on a home of its own."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.home = root / "home"
        self.tmp = root / "tmp"  # the server's TMPDIR: where spooled request bodies would go
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.starts = 0

    def start(self, *, fault: str | None = None, grace: float = 3600) -> None:
        assert self.proc is None
        self.port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("FASTUNER_") and k not in ("TMPDIR",)}
        env.update(
            PYTHONPATH=str(REPO),
            TMPDIR=str(self.tmp),
            FASTUNER_HOME=str(self.home),
            FASTUNER_SWEEP_GRACE_SECONDS=str(grace),
            FASTUNER_LOG_JSON="false",
            FASTUNER_LOG_LEVEL="WARNING",
        )
        if fault:
            env["FASTUNER_FAULT_AT"] = fault
        self.starts += 1
        log = (self.root / f"server-{self.starts}.log").open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cli.main", "server", "--port", str(self.port)],
            cwd=self.root,  # no stray .env
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited at start: {self.log()}")
            with contextlib.suppress(OSError):
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                conn.request("GET", "/healthz")
                if conn.getresponse().status == 200:
                    return
            if time.monotonic() > deadline:
                raise AssertionError(f"server did not start: {self.log()}")
            time.sleep(0.1)

    def log(self) -> str:
        return (self.root / f"server-{self.starts}.log").read_text(errors="replace")[-4000:]

    def kill(self) -> None:
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)
            self.proc = None

    def died_by_sigkill(self) -> bool:
        assert self.proc is not None
        rc = self.proc.wait(timeout=60)
        self.proc = None
        return rc == -signal.SIGKILL

    @property
    def key(self) -> str:
        return (self.home / "api_key").read_text().strip()


def _dataset_bytes(rows: int = 20_000) -> bytes:
    pad = "lorem ipsum dolor sit amet " * 4
    lines = [
        json.dumps({"input": f"question {i}: {pad}?", "target": f"answer {i} {pad}"}) for i in range(rows)
    ]
    return ("\n".join(lines) + "\n").encode()


def _multipart(data: bytes) -> tuple[str, bytes]:
    boundary = uuid.uuid4().hex
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="name"\r\n\r\nchaos\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="chaos.jsonl"\r\n'
        "Content-Type: application/x-ndjson\r\n\r\n"
    ).encode()
    return f"multipart/form-data; boundary={boundary}", head + data + f"\r\n--{boundary}--\r\n".encode()


def _send(
    server: Server, body: bytes, content_type: str, *, upto: int | None = None
) -> http.client.HTTPConnection:
    """POST /v0/datasets, sending ``body[:upto]`` in 256 KiB chunks (a streaming client)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
    conn.putrequest("POST", "/v0/datasets")
    conn.putheader("Content-Type", content_type)
    conn.putheader("Content-Length", str(len(body)))
    conn.putheader("Authorization", f"Bearer {server.key}")
    conn.endheaders()
    end = len(body) if upto is None else upto
    for start in range(0, end, 256 << 10):
        conn.send(body[start : min(start + (256 << 10), end)])
        time.sleep(0.01)
    return conn


def _files(root: Path) -> dict[str, int]:
    """Every plain file below ``root`` (relative path → bytes); links are not followed."""
    out: dict[str, int] = {}
    if root.is_dir():
        for top, _dirs, files in os.walk(root):
            for name in files:
                path = Path(top) / name
                if path.is_file() and not path.is_symlink():
                    out[path.relative_to(root).as_posix()] = path.stat().st_size
    return out


def _dataset_rows(home: Path) -> dict[str, str]:
    with contextlib.closing(sqlite3.connect(home / "fastuner.db")) as db:
        return dict(db.execute("SELECT id, tenant_id FROM datasets").fetchall())


def _orphans(server: Server) -> dict[str, int]:
    """Bytes no row owns: in the store (outside rows' dataset folders), in work/, in TMPDIR."""
    rows = _dataset_rows(server.home)
    owned = tuple(f"{tenant}/datasets/{ds}/" for ds, tenant in rows.items())
    out: dict[str, int] = {}
    for rel, size in _files(server.home / "store").items():
        if not rel.startswith(owned) or "/.tmp-" in rel:
            out[f"store/{rel}"] = size
    for rel, size in _files(server.home / "work").items():
        if not rel.endswith("/.lease"):  # a live owner's lease: empty, and its owner runs
            out[f"work/{rel}"] = size
    for rel, size in _files(server.tmp).items():
        out[f"tmp/{rel}"] = size
    return out


def _consistent(server: Server) -> None:
    """Every dataset row has its manifest and the split files the manifest names, whole."""
    store = server.home / "store"
    for ds, tenant in _dataset_rows(server.home).items():
        manifest = json.loads((store / tenant / "datasets" / ds / "manifest.json").read_text())
        for split in manifest["splits"].values():
            path = store / split["uri"].removeprefix("store://")
            assert path.is_file() and path.stat().st_size == split["bytes"], (ds, split)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    s = Server(tmp_path)
    yield s
    s.kill()


# (fault point, what the crash leaves behind before the sweep)
CRASHES = [
    ("dataset.before_process", "work"),  # the upload is spooled to work/, nothing processed
    ("dataset.after_split", "work"),  # split files written in work/, nothing stored
    ("store.before_rename", "store"),  # the first split's write to the store half done (.tmp-*)
    ("dataset.after_first_object", "store"),  # one split stored, the rest not
    ("dataset.before_row", "store"),  # every object stored, the row not written
]


def test_kill_9_during_upload_leaves_no_orphans(server: Server) -> None:
    data = _dataset_bytes()
    assert 2 << 20 < len(data) < 8 << 20
    content_type, body = _multipart(data)

    # 1. mid-body: the client is still sending when the server dies.
    server.start()
    conn = _send(server, body, content_type, upto=len(body) // 2)
    time.sleep(0.3)
    server.kill()
    conn.close()
    assert _dataset_rows(server.home) == {}

    # 2. the fault points: the server kills itself there (SIGKILL: no finally, no cleanup).
    seen: dict[str, dict[str, int]] = {}
    for point, where in CRASHES:
        server.start(fault=point)
        conn = _send(server, body, content_type)
        with pytest.raises((http.client.HTTPException, ConnectionError)):
            conn.getresponse().read()
        conn.close()
        assert server.died_by_sigkill(), f"{point}: {server.log()}"
        left = _orphans(server)
        seen[point] = left
        assert any(k.startswith(f"{where}/") for k in left), f"{point} left nothing in {where}: {left}"
        assert _dataset_rows(server.home) == {}, point
    assert sum(seen["dataset.before_row"].values()) > len(data) // 2  # whole splits were orphaned

    # 3. restart with no grace: the startup sweep removes every orphan byte.
    server.start(grace=0)
    deadline = time.monotonic() + SWEEP_TIMEOUT_S
    while (left := _orphans(server)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert left == {}, left
    assert _dataset_rows(server.home) == {}
    _consistent(server)

    # 4. and the same upload now goes through whole, leaving only the dataset's own objects.
    conn = _send(server, body, content_type)
    resp = conn.getresponse()
    payload = json.loads(resp.read())
    assert resp.status == 201, payload
    assert list(_dataset_rows(server.home)) == [payload["id"]]
    _consistent(server)
    assert _orphans(server) == {}
