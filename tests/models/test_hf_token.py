"""The Hugging Face token for gated models, on moto: jobs and endpoints carry the secret's ARN,
never the token; the containers resolve it at start; the token is in no API response and no log."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import boto3
import loraserve.hub_token as serve_token
import pytest
import scu.hub_token as train_token
from fastapi.testclient import TestClient
from moto import mock_aws

from api.app import create_app
from api.backends.endpoints import EndpointSpec
from api.backends.hub_env import HF_TOKEN_SECRET_ENV
from api.backends.sagemaker_components import ComponentSettings, SageMakerComponents
from api.services.deployments import endpoint_name_for
from api.services.finetune.service import job_name_for
from api.storage.s3 import S3Store
from tests.api.support import authorize
from tests.e2e.sagemaker_support import BUCKET, REGION, SageMakerEnv, mocked_aws, sagemaker_settings
from tests.models.support import LLAMA
from tests.support.rows import add_finished_adapter

TOKEN = "hf_SuperSecretTokenValue0123456789"
RESOLVERS = [train_token, serve_token]


def make_secret(value: str = TOKEN, name: str = "fastuner/hf-token") -> str:
    arn: str = boto3.client("secretsmanager", region_name=REGION).create_secret(
        Name=name, SecretString=value
    )["ARN"]
    return arn


# -- the containers' resolvers ------------------------------------------------------------------
@pytest.mark.parametrize("module", RESOLVERS, ids=["training", "inference"])
@pytest.mark.parametrize("value", [TOKEN, json.dumps({"HF_TOKEN": TOKEN}), json.dumps({"token": TOKEN})])
def test_container_resolves_the_token_from_the_secret(
    module: ModuleType, value: str, caplog: pytest.LogCaptureFixture
) -> None:
    with mock_aws():
        arn = make_secret(value)
        caplog.set_level(logging.DEBUG)  # botocore's too: it logs response bodies at DEBUG
        env = {HF_TOKEN_SECRET_ENV: arn}
        assert module.resolve_hf_token(env) is True
        assert env["HF_TOKEN"] == TOKEN
        assert arn in caplog.text and TOKEN not in caplog.text
        env = {HF_TOKEN_SECRET_ENV: arn, "HF_TOKEN": "already-set"}  # the local server's own token wins
        assert module.resolve_hf_token(env) is True and env["HF_TOKEN"] == "already-set"
        assert module.resolve_hf_token({}) is False  # no secret named: nothing to do


@pytest.mark.parametrize("module", RESOLVERS, ids=["training", "inference"])
def test_unreadable_or_empty_secret_is_a_clear_error_without_the_value(
    module: ModuleType, caplog: pytest.LogCaptureFixture
) -> None:
    with mock_aws():
        missing = f"arn:aws:secretsmanager:{REGION}:123456789012:secret:fastuner/none-AbCdEf"
        with pytest.raises(module.HubTokenError) as info:
            module.resolve_hf_token({HF_TOKEN_SECRET_ENV: missing})
        assert str(info.value) == (
            f"could not read the Hugging Face token from secret {missing}: ResourceNotFoundException"
        )
        arn = make_secret(json.dumps({"password": TOKEN}), name="fastuner/wrong-shape")
        with pytest.raises(module.HubTokenError) as info:
            module.resolve_hf_token({HF_TOKEN_SECRET_ENV: arn})
        assert "without a token key" in str(info.value) and TOKEN not in str(info.value)
    assert TOKEN not in caplog.text


def test_the_inference_container_does_not_import_the_training_engine() -> None:
    source = Path(serve_token.__file__).read_text()
    assert "scu" not in {
        line.split()[1].split(".")[0] for line in source.splitlines() if line.startswith(("import ", "from "))
    }


# -- SageMaker training: the ARN in the job's Environment, never the token ----------------------
@pytest.fixture
def sm_env(tmp_path: Path) -> Iterator[tuple[SageMakerEnv, str]]:
    with mocked_aws():
        arn = make_secret()
        with SageMakerEnv(sagemaker_settings(tmp_path / "home", hf_token_secret=arn)) as env:
            yield env, arn


def test_gated_training_job_carries_the_arn_and_the_container_gets_the_token(
    sm_env: tuple[SageMakerEnv, str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    env, arn = sm_env
    ds = env.upload_dataset()
    texts: list[str] = []
    dry = env.start(ds["id"], base_model=LLAMA, dry_run=True)
    assert dry.status_code == 200, dry.text
    resp = env.start(ds["id"], base_model=LLAMA, max_steps=5)
    assert resp.status_code == 201, resp.text
    job = resp.json()
    assert job["base_model"] == LLAMA and HF_TOKEN_SECRET_ENV not in job["hyperparameters"]
    (request,) = env.calls.of("CreateTrainingJob")
    assert request["Environment"] == {HF_TOKEN_SECRET_ENV: arn}
    desc = boto3.client("sagemaker", region_name=REGION).describe_training_job(
        TrainingJobName=request["TrainingJobName"]
    )
    assert desc.get("Environment", request["Environment"]) == {HF_TOKEN_SECRET_ENV: arn}  # moto drops it
    env.reconcile()
    job_urls = [f"/v0/finetune/{job['id']}", f"/v0/finetune/{job['id']}/events"]
    for url in ["/v0/finetune", *job_urls, "/v0/models", f"/v0/models/{LLAMA}", "/v0/healthz"]:
        got = env.client.get(url)
        assert got.status_code == 200, (url, got.text)
        texts.append(got.text)
    models = {m["id"]: m for m in env.client.get("/v0/models").json()["items"]}
    assert models[LLAMA]["available"] is True and "token" in models[LLAMA]["reason"]
    # The container, started with the job's Environment, finds the token in the (moto) secret.
    container_env = dict(request["Environment"])
    assert train_token.resolve_hf_token(container_env) is True and container_env["HF_TOKEN"] == TOKEN
    sent = [json.dumps(env.calls, default=str), json.dumps(desc, default=str)]
    everything = "\n".join([*texts, dry.text, resp.text, *sent, caplog.text])
    assert arn in everything and TOKEN not in everything


def test_gated_training_without_the_token_setting_is_refused_before_any_call(tmp_path: Path) -> None:
    with mocked_aws(), SageMakerEnv(sagemaker_settings(tmp_path / "home")) as env:
        ds = env.upload_dataset()
        resp = env.start(ds["id"], base_model=LLAMA, max_steps=5)
        assert resp.status_code == 422, resp.text
        body = resp.json()
        assert body["code"] == "model_unavailable"
        assert body["message"].startswith(
            f"base model {LLAMA} is not available to the sagemaker backend: gated"
        )
        assert "set FASTUNER_HF_TOKEN_SECRET" in body["message"]
        assert env.calls == {} and env.moto_jobs() == {}
        ok = env.start(ds["id"], max_steps=5)  # SmolLM2 is not gated: no token needed
        assert ok.status_code == 201, ok.text
        assert "Environment" not in env.calls.of("CreateTrainingJob")[0]


# -- SageMaker endpoints: the ARN in the model's Environment ------------------------------------
def test_deployment_model_carries_the_arn_not_the_token(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with mock_aws():
        boto3.client("s3", region_name=REGION).create_bucket(Bucket=BUCKET)
        arn = make_secret()
        caplog.clear()  # the test's own CreateSecret request is logged at DEBUG
        settings = sagemaker_settings(
            tmp_path, default_inference_instance_type="ml.g4dn.xlarge", hf_token_secret=arn
        )
        with authorize(TestClient(create_app(settings), raise_server_exceptions=False)) as client:
            ctx: Any = client.app.state.ctx  # type: ignore[attr-defined]
            add_finished_adapter(
                ctx.db,
                "adp_tok00000001",
                dataset_id="ds_tok00000001",
                job_id="ft_tok00000001",
                base_model=LLAMA,
                uri=f"s3://{BUCKET}/default/adapters/adp_tok00000001",
                backend="sagemaker",
                instance_type="ml.g5.xlarge",
            )
            resp = client.post("/v0/deployments", json={"adapter_ids": ["adp_tok00000001"]})
            assert resp.status_code == 201, resp.text
            ctx.deployments.sync_once()
            dep = client.get(f"/v0/deployments/{resp.json()['id']}")
            sm = boto3.client("sagemaker", region_name=REGION)
            model = sm.describe_model(ModelName=dep.json()["endpoint_name"])
            environment = model["PrimaryContainer"]["Environment"]
            assert environment[HF_TOKEN_SECRET_ENV] == arn and environment["FASTUNER_BASE_MODEL"] == LLAMA
            served = dict(environment)
            assert serve_token.resolve_hf_token(served) is True and served["HF_TOKEN"] == TOKEN
            listed = client.get("/v0/deployments").text
            everything = "\n".join([resp.text, dep.text, listed, json.dumps(model, default=str), caplog.text])
            assert arn in everything and TOKEN not in everything


def test_components_mode_passes_the_arn_only_when_the_base_comes_from_the_hub() -> None:
    arn = f"arn:aws:secretsmanager:{REGION}:123456789012:secret:fastuner/hf-AbCdEf"
    clients = {
        name: boto3.client(name, region_name=REGION) for name in ("s3", "sagemaker", "sagemaker-runtime")
    }
    backend = SageMakerComponents(
        S3Store(BUCKET, client=clients["s3"]),
        image_uri="img",
        role_arn="role",
        region=REGION,
        components=ComponentSettings(base_model_artifacts={"HuggingFaceTB/SmolLM2-135M": "s3://b/m.tar.gz"}),
        sagemaker_client=clients["sagemaker"],
        runtime_client=clients["sagemaker-runtime"],
        hf_token_secret=arn,
    )

    def base_env(base_model: str) -> dict[str, str]:
        spec = EndpointSpec(
            deployment_id="dep_x",
            tenant_id="t",
            endpoint_name=endpoint_name_for("dep_x"),
            base_model=base_model,
            adapter_prefix="t/adapters",
            adapter_ids=["adp_a"],
            instance_type="ml.g5.xlarge",
        )
        component = backend.build_component_requests(spec)["base_component"]
        env: dict[str, str] = component["Specification"]["Container"]["Environment"]
        return env

    assert base_env(LLAMA)[HF_TOKEN_SECRET_ENV] == arn
    assert HF_TOKEN_SECRET_ENV not in base_env("HuggingFaceTB/SmolLM2-135M")  # served from its artifacts


# -- local backend: the secret's name reaches the processes -------------------------------------
def test_local_backend_passes_the_secret_name_to_the_training_process(tmp_path: Path) -> None:
    from api.backends.base import TrainingSpec
    from api.backends.local import LocalBackend
    from api.backends.local_models import LocalModels
    from api.storage.local import LocalStore

    fake_python = tmp_path / "python"
    fake_python.write_text('#!/bin/sh\nenv > "$OPT_ML_ROOT/env.txt"\n')
    fake_python.chmod(0o755)
    store = LocalStore(tmp_path / "store")
    store.put_bytes("t/datasets/ds/train.jsonl", b'{"input": "a", "target": "b"}\n')
    models = LocalModels(tmp_path / "models")
    python = str(fake_python)
    backend = LocalBackend(
        store, tmp_path / "jobs", python=python, models=models, hf_token_secret="fastuner/hf-token"
    )
    spec = TrainingSpec(
        job_id="ft_x",
        tenant_id="t",
        job_name=job_name_for("ft_x"),
        hyperparameters={"base_model": LLAMA},
        channels={"train": "t/datasets/ds/train.jsonl"},
        output_prefix="t/jobs/ft_x/output",
        checkpoint_prefix="t/jobs/ft_x/checkpoints",
        instance_type="local",
    )
    state = backend.start_training(spec)
    env_file = Path(state["root"]) / "env.txt"
    import time

    for _ in range(100):
        if env_file.is_file() and env_file.read_text():
            break
        time.sleep(0.05)
    lines = env_file.read_text().splitlines()
    assert f"{HF_TOKEN_SECRET_ENV}=fastuner/hf-token" in lines
    assert "HF_HUB_OFFLINE=1" in lines  # no network on the local backend: never wait on the hub
    assert backend.model_access == "offline"
