"""Issue 12, item 7: base models come from allowed places only.

* a local folder is a base model only under the configured roots (``FASTUNER_MODEL_ROOTS``;
  default ``$FASTUNER_HOME/models`` and the Hugging Face cache), after resolving ``..`` and links;
* hub ids match the allow-list per ``/`` segment (``*`` never crosses a ``/``), so
  ``meta-llama/../../../etc`` matches nothing;
* a refused path gets the same error whether it exists (with a config.json) or not, and a dry run
  reveals no parameter count for it (no filesystem oracle).
On SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.domain.errors import BadRequest
from api.services.finetune.preflight import check_model_allowed, hub_id_allowed
from api.settings import Settings
from tests.api.support import authorize, rows, upload, write_jsonl

CONFIG = {
    "model_type": "llama",
    "vocab_size": 1000,
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 128,
}


def make_model(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(CONFIG))
    return folder


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def client(db_url: str, home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    monkeypatch.delenv("FASTUNER_MODEL_ROOTS", raising=False)
    settings = Settings(home=home, database_url=db_url, log_json=False, background_tasks=False)
    with authorize(TestClient(create_app(settings), raise_server_exceptions=False)) as c:
        c.dataset_id = upload(c, write_jsonl(home.parent / "d.jsonl", rows())).json()["id"]  # type: ignore[attr-defined]
        yield c


def dry_run(client: TestClient, base_model: str) -> Any:
    ds = client.dataset_id  # type: ignore[attr-defined]
    return client.post("/v0/finetune", json={"dataset_id": ds, "base_model": base_model, "dry_run": True})


def test_a_model_under_home_models_is_accepted(client: TestClient, home: Path) -> None:
    model = make_model(home / "models" / "tiny")
    resp = dry_run(client, str(model))
    assert resp.status_code == 200, resp.text
    assert resp.json()["estimate"]["n_params"] > 0


def test_folders_outside_the_roots_get_one_error_whether_they_exist_or_not(
    client: TestClient, home: Path, tmp_path: Path
) -> None:
    make_model(home / "models" / "tiny")
    outside = make_model(tmp_path / "elsewhere" / "model")  # a real model folder, but not under a root
    (home / "models" / "escape").symlink_to(outside, target_is_directory=True)
    candidates = [
        str(outside),  # exists, has a config.json
        str(tmp_path / "elsewhere" / "missing"),  # does not exist
        "/etc",  # exists, no config.json
        str(home / "models" / ".." / ".." / "elsewhere" / "model"),  # `..` out of the root
        str(home / "models" / "escape"),  # a link out of the root
        str(home / "models" / "nothing-here"),  # under the root, but no model
        "models/tiny",  # relative: not a folder reference
        "meta-llama/../../../etc",  # the allow-list's `*` must not cross `/`
        "meta-llama/../../.." + str(outside),
        "meta-llama/x/../../../" + str(outside).lstrip("/"),
    ]
    messages = set()
    for name in candidates:
        resp = dry_run(client, name)
        assert resp.status_code == 400, (name, resp.text)
        body = resp.json()
        assert body["code"] == "bad_request" and "n_params" not in resp.text
        messages.add(body["message"].replace(repr(name), "<name>"))
    assert len(messages) == 1, messages  # nothing tells an existing folder from a missing one
    assert client.get("/v0/finetune").json()["items"] == []


def test_hub_ids_match_per_segment() -> None:
    patterns = ["meta-llama/*", "HuggingFaceTB/SmolLM2-*", "google/gemma-*"]
    assert hub_id_allowed("meta-llama/Llama-3.2-1B-Instruct", patterns)
    assert hub_id_allowed("HuggingFaceTB/SmolLM2-135M-Instruct", patterns)
    for name in (
        "meta-llama/../../../etc",
        "meta-llama/x/y",
        "meta-llama/..",
        "meta-llama/.",
        "meta-llama/",
        "meta-llama",
        "/meta-llama/x",
        "google/gemma-2/../../etc",
        "meta-llama/x y",
        "meta-llama/x\\..\\..",
        "Meta-Llama/x",
    ):
        assert not hub_id_allowed(name, patterns), name
    assert hub_id_allowed("org/sub/name", ["org/*/name"]) and not hub_id_allowed(
        "org/a/b/name", ["org/*/name"]
    )


def test_default_roots_are_home_models_and_the_hf_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FASTUNER_MODEL_ROOTS", raising=False)
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    settings = Settings(home=tmp_path / "home", log_json=False)
    assert settings.resolved_model_roots == [
        (tmp_path / "home" / "models").resolve(),
        (tmp_path / "hf" / "hub").resolve(),
    ]
    # An HF cache snapshot: the folder's files are links into blobs/ inside the cache.
    hub = tmp_path / "hf" / "hub" / "models--org--m"
    blob = hub / "blobs" / "abc"
    blob.parent.mkdir(parents=True)
    blob.write_text(json.dumps(CONFIG))
    snap = hub / "snapshots" / "rev1"
    snap.mkdir(parents=True)
    (snap / "config.json").symlink_to(blob)
    assert check_model_allowed(str(snap), settings) == snap.resolve()
    # A config.json that links out of the roots does not count.
    outside = make_model(tmp_path / "outside")
    sneaky = tmp_path / "home" / "models" / "sneaky"
    sneaky.mkdir(parents=True)
    (sneaky / "config.json").symlink_to(outside / "config.json")
    with pytest.raises(BadRequest):
        check_model_allowed(str(sneaky), settings)


def test_configured_roots_replace_the_defaults_and_sagemaker_takes_no_folders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = make_model(tmp_path / "mine" / "m")
    monkeypatch.setenv("FASTUNER_MODEL_ROOTS", json.dumps([str(tmp_path / "mine")]))
    local = Settings(home=tmp_path / "home", log_json=False)
    assert check_model_allowed(str(model), local) == model.resolve()
    assert check_model_allowed("meta-llama/Llama-3.2-1B-Instruct", local) is None
    make_model(tmp_path / "home" / "models" / "n")
    with pytest.raises(BadRequest):
        check_model_allowed(str(tmp_path / "home" / "models" / "n"), local)
    remote = Settings(home=tmp_path / "home", log_json=False, store="s3", s3_bucket="b", backend="sagemaker")
    with pytest.raises(BadRequest) as info:
        check_model_allowed(str(model), remote)
    assert "FASTUNER_MODEL_ROOTS" not in info.value.message
