"""Settings, the packaging rules, the container files, and one real server process."""

from __future__ import annotations

import ast
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.inference.support import PROMPT, Reference, Store
from tests.support.servers import free_port, wait_until_healthy

CONTAINER = Path(__file__).resolve().parents[2] / "containers" / "inference"


def test_config_from_env(tmp_path: Path) -> None:
    from loraserve.config import ServerConfig, resolve_host, resolve_port

    env = {
        "FASTUNER_BASE_MODEL": str(tmp_path),
        "FASTUNER_ADAPTER_PREFIX": "s3://b/t/adapters",
        "FASTUNER_MAX_ADAPTERS": "3",
        "FASTUNER_PRELOAD_ADAPTERS": "adp_a, adp_b,",
        "FASTUNER_ADAPTER_CACHE_DIR": str(tmp_path / "c"),
    }
    config = ServerConfig.from_env(env)
    assert config.base_model == str(tmp_path) and config.adapter_prefix == "s3://b/t/adapters"
    assert config.max_adapters == 3 and config.preload_adapters == ("adp_a", "adp_b")
    assert config.cache_dir == tmp_path / "c" and config.local_files_only  # a local path
    assert ServerConfig.from_env({"FASTUNER_BASE_MODEL": str(tmp_path)}).max_adapters == 8
    hub = ServerConfig.from_env({"FASTUNER_BASE_MODEL": "org/model"})
    assert not hub.local_files_only
    assert ServerConfig.from_env({"FASTUNER_BASE_MODEL": "org/model", "HF_HUB_OFFLINE": "1"}).local_files_only
    with pytest.raises(ValueError, match="FASTUNER_MAX_ADAPTERS"):
        ServerConfig.from_env({"FASTUNER_BASE_MODEL": "m", "FASTUNER_MAX_ADAPTERS": "0"})
    with pytest.raises(ValueError, match="FASTUNER_BASE_MODEL"):
        ServerConfig.from_env({"OPT_ML_ROOT": str(tmp_path)})
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    assert ServerConfig.from_env({"OPT_ML_ROOT": str(tmp_path)}).base_model == str(tmp_path / "model")

    assert resolve_port({}) == 8080
    assert resolve_port({"PORT": "9000"}) == 9000
    assert resolve_port({"PORT": "9000", "SAGEMAKER_BIND_TO_PORT": "9100"}) == 9100
    assert resolve_port({"PORT": "9000"}, 7000) == 7000
    assert resolve_host({}) == "0.0.0.0"
    assert resolve_host({}, "127.0.0.1") == "127.0.0.1"


def test_loraserve_imports_neither_control_plane_nor_training() -> None:
    package = CONTAINER / "loraserve"
    for path in package.rglob("*.py"):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            for name in names:
                assert name.split(".")[0] not in {"api", "cli", "scu"}, f"{path.name} imports {name}"


def test_container_files() -> None:
    serve = CONTAINER / "serve"
    assert serve.is_file() and os.access(serve, os.X_OK)
    assert "loraserve.entry" in serve.read_text()
    dockerfile = (CONTAINER / "Dockerfile").read_text()
    assert "EXPOSE 8080" in dockerfile and "serve" in dockerfile
    requirements = (CONTAINER / "requirements.txt").read_text()
    for package in ("transformers", "peft", "fastapi", "uvicorn", "boto3", "pydantic"):
        assert package in requirements


def test_hub_token_has_one_source() -> None:
    """loraserve.hub_token is scu.hub_token's file: a link in the tree, the file itself in the image."""
    link = CONTAINER / "loraserve" / "hub_token.py"
    source = CONTAINER.parent / "training" / "scu" / "hub_token.py"
    assert link.is_symlink() and link.resolve() == source.resolve()
    root = CONTAINER.parents[1]
    assert "containers/inference/loraserve/hub_token.py" in (root / ".dockerignore").read_text().splitlines()
    copy = "COPY containers/training/scu/hub_token.py /opt/program/loraserve/hub_token.py"
    assert copy in (CONTAINER / "Dockerfile").read_text().splitlines()


def test_entry_rejects_bad_config(tmp_path: Path) -> None:
    env = {**os.environ, "FASTUNER_BASE_MODEL": "", "OPT_ML_ROOT": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-m", "loraserve.entry", "serve"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and "FASTUNER_BASE_MODEL" in proc.stderr


@pytest.mark.slow
def test_real_server_process(store: Store, reference: Reference, tmp_path: Path) -> None:
    port = free_port()
    exe = shutil.which("fastuner-serve") or str(Path(sys.executable).parent / "fastuner-serve")
    cmd = [exe] if Path(exe).exists() else [sys.executable, "-m", "loraserve.entry"]
    env = {
        **os.environ,
        "FASTUNER_BASE_MODEL": str(store.base),
        "FASTUNER_ADAPTER_PREFIX": store.file_uri,
        "FASTUNER_ADAPTER_CACHE_DIR": str(tmp_path / "cache"),
        "FASTUNER_DEVICE": "cpu",
        "HF_HUB_OFFLINE": "1",
        "PORT": "1",  # the --port flag wins
    }
    log = (tmp_path / "server.log").open("w")
    proc = subprocess.Popen(
        [*cmd, "--host", "127.0.0.1", "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(proc, f"{url}/ping", tmp_path / "server.log", timeout=180)  # slow on a busy CI box
        body = {"inputs": PROMPT, "adapter": "adp_b", "parameters": {"max_new_tokens": 6}}
        r = httpx.post(f"{url}/invocations", json=body, timeout=30)
        assert r.status_code == 200, r.text
        assert r.json()["outputs"][0]["generated_text"] == reference.text("adp_b", PROMPT, 6)
        assert r.headers["x-request-id"]
        r = httpx.post(f"{url}/invocations", json={**body, "adapter": "adp_missing"}, timeout=30)
        assert r.status_code == 404 and r.json()["code"] == "adapter_not_found"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
    # uvicorn re-raises the SIGTERM it handled gracefully, so the status is 0 or -SIGTERM.
    assert proc.returncode in (0, -signal.SIGTERM), proc.returncode
    events = []
    for line in (tmp_path / "server.log").read_text().splitlines():
        if line.startswith("{"):
            events.append(json.loads(line))
    names = [e.get("event") for e in events]
    assert "base_model_loaded" in names and "invocation" in names and "invocation_failed" in names
    served = next(e for e in events if e.get("event") == "invocation")
    assert served["adapter"] == "adp_b" and served["latency_ms"] > 0
    assert served["completion_tokens"] == len(reference.generate("adp_b", PROMPT, 6)[1])
