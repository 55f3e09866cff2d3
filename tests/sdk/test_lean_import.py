"""The SDK works in a fresh virtualenv holding only its declared dependencies.

No network: the venv is made ``--without-pip`` and its site-packages gets links to the installed
distributions the ``sdk`` extra needs (resolved transitively with ``importlib.metadata``), plus
copies of ``fastuner_sdk``, ``api/__init__.py`` and ``api/domain`` (the shared wire models).
Then, in that interpreter, the SDK imports without SQLAlchemy, boto3, torch, click or rich being
importable, and talks to a mock transport: auto-paging, typed errors, 429 retry, env config.
"""

from __future__ import annotations

import importlib.metadata as md
import json
import os
import shutil
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

import fastuner_sdk

ROOT = Path(__file__).resolve().parents[2]
SERVER_ONLY = ("sqlalchemy", "boto3", "botocore", "torch", "click", "rich", "fastapi", "uvicorn", "alembic")


def declared() -> list[str]:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    deps: list[str] = extras["sdk"]
    return deps


def closure(requirements: list[str]) -> dict[str, md.Distribution]:
    """The installed distributions these requirements need, transitively (markers evaluated)."""
    found: dict[str, md.Distribution] = {}
    todo = [Requirement(r) for r in requirements]
    while todo:
        req = todo.pop()
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        dist = md.distribution(req.name)
        key = dist.metadata["Name"].lower().replace("_", "-")
        if key in found:
            continue
        assert dist.version in req.specifier, f"{req} but {dist.version} is installed"
        found[key] = dist
        todo += [Requirement(r) for r in dist.requires or []]
    return found


def top_level(dist: md.Distribution) -> set[Path]:
    """The importable top-level entries (package dirs, modules, extension files) and the
    .dist-info folder of an installed distribution."""
    tops: set[Path] = set()
    for f in dist.files or []:
        first = f.parts[0]
        if first in ("..", "__pycache__") or first.endswith((".data", ".pth")):
            continue
        tops.add(Path(str(dist.locate_file(first))))
    return tops


def test_declared_dependencies_agree_and_stay_lean() -> None:
    assert tuple(declared()) == fastuner_sdk.DEPENDENCIES
    names = set(closure(declared()))
    assert not names & {"sqlalchemy", "boto3", "torch", "click", "rich", "fastapi"}, names


@pytest.fixture(scope="module")
def lean_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    venv = tmp_path_factory.mktemp("lean") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = Path(
        subprocess.run(
            [str(python), "-I", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    for dist in closure(declared()).values():
        for entry in top_level(dist):
            (site / entry.name).symlink_to(entry, target_is_directory=entry.is_dir())
    ignore = shutil.ignore_patterns("__pycache__")
    shutil.copytree(ROOT / "fastuner_sdk", site / "fastuner_sdk", ignore=ignore)
    (site / "api").mkdir()
    shutil.copy2(ROOT / "api" / "__init__.py", site / "api" / "__init__.py")
    shutil.copytree(ROOT / "api" / "domain", site / "api" / "domain", ignore=ignore)
    return python


SMOKE = textwrap.dedent(
    """
    import importlib.util, json, os, sys

    import fastuner_sdk
    from fastuner_sdk import _retry

    # Only the declared closure is installed, and the SDK pulls in nothing of the server.
    for name in SERVER_ONLY:
        assert importlib.util.find_spec(name) is None, name + " is importable"
    assert not [m for m in sys.modules if m.split(".")[0] in SERVER_ONLY]
    assert not [m for m in sys.modules if m.startswith(("api.", "cli")) and not m.startswith("api.domain")]
    assert sys.prefix != sys.base_prefix and REPO not in sys.path  # the venv, not the checkout

    import httpx

    def job(i):
        return {
            "id": f"ft_{i:08d}", "dataset_id": "ds_x", "base_model": "tiny", "method": "lora",
            "hyperparameters": {}, "backend": "local", "backend_job_name": "bj", "instance_type": "local",
            "instance_count": 1, "spot": False, "status": "running", "secondary_status": None,
            "failure_reason": None, "estimate": None, "billable_seconds": None, "cost_estimate_usd": None,
            "adapter_id": None, "latest_metrics": None, "created_at": "2026-01-01T00:00:00Z",
            "started_at": None, "ended_at": None,
        }

    seen = []
    throttled = []

    def handler(request):
        seen.append(request)
        if request.url.path == "/v0/finetune":
            if not throttled:
                throttled.append(1)
                return httpx.Response(429, json={"code": "rate_limited", "message": "slow"}, headers={"Retry-After": "0"})
            page = int(request.url.params.get("cursor") or 0)
            items = [job(page * 2 + k) for k in range(2)]
            return httpx.Response(200, json={"items": items, "next_cursor": str(page + 1) if page < 2 else None})
        return httpx.Response(404, json={"code": "not_found", "message": "no such job", "request_id": "req-1"})

    os.environ["FASTUNER_API_URL"] = "http://fastuner.test"
    os.environ["FASTUNER_API_KEY"] = "ft-secret"
    with fastuner_sdk.connect(transport=httpx.MockTransport(handler)) as client:
        ids = [j.id for j in client.iter_jobs(page_size=2)]
        assert ids == [f"ft_{i:08d}" for i in range(6)], ids
        assert len(seen) == 4  # one throttled, then three pages
        assert all(r.headers["Authorization"] == "Bearer ft-secret" for r in seen)
        assert str(seen[0].url).startswith("http://fastuner.test/v0/finetune")
        try:
            client.get_job("ft_nope")
        except fastuner_sdk.NotFoundError as exc:
            assert (exc.status, exc.code, exc.request_id) == (404, "not_found", "req-1")
        else:
            raise AssertionError("no NotFoundError")

    del os.environ["FASTUNER_API_URL"]
    try:
        with fastuner_sdk.connect():
            pass
    except fastuner_sdk.ConfigurationError as exc:
        assert "embedded=True" in str(exc)
    else:
        raise AssertionError("connect() without a URL must not start a server")
    print(json.dumps(sorted({m.split(".")[0] for m in sys.modules})))
    """
)


def test_the_sdk_imports_and_works_with_only_its_dependencies(lean_python: Path, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "FASTUNER_", "VIRTUAL_ENV"))}
    script = f"SERVER_ONLY = {SERVER_ONLY!r}\nREPO = {str(ROOT)!r}\n" + SMOKE
    res = subprocess.run(
        [str(lean_python), "-I", "-c", script],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    loaded = set(json.loads(res.stdout.splitlines()[-1]))
    assert {"fastuner_sdk", "api", "httpx", "pydantic", "tenacity"} <= loaded
    assert not loaded & set(SERVER_ONLY)
