"""Adding and removing adapters on a running deployment through the API (SageMaker endpoint mode on
moto: the server loads adapters on demand, so only the row changes; the components mode's calls are
in tests/backends/test_sagemaker_components.py)."""

from __future__ import annotations

from pathlib import Path

from tests.e2e.sagemaker_support import SageMakerEnv, mocked_aws, sagemaker_settings

ADAPTER_FILES = {
    "adapter_config.json": b'{"peft_type": "LORA", "base_model_name_or_path": "HuggingFaceTB/SmolLM2-135M-Instruct"}',
    "adapter_model.safetensors": b"weights",
}
INSTANCE = "ml.g4dn.xlarge"  # what moto's endpoint configs accept


def _adapter(env: SageMakerEnv, dataset: str) -> str:
    job = env.started(dataset)["id"]
    env.put_model(job, ADAPTER_FILES)
    env.set_state(job, "Completed", "Completed")
    assert env.reconcile()["errors"] == []
    adapter = env.job(job)["adapter_id"]
    assert adapter
    return str(adapter)


def test_add_and_remove_adapters_without_redeploying(tmp_path: Path) -> None:
    with mocked_aws(), SageMakerEnv(sagemaker_settings(tmp_path / "home")) as env:
        dataset = env.upload_dataset()["id"]
        first, second = _adapter(env, dataset), _adapter(env, dataset)
        resp = env.client.post("/v0/deployments", json={"adapter_ids": [first], "instance_type": INSTANCE})
        assert resp.status_code == 201, resp.text
        dep = resp.json()
        env.app.state.ctx.deployments.sync_once()

        added = env.client.post(f"/v0/deployments/{dep['id']}/adapters", json={"adapter_id": second})
        assert added.status_code == 200, added.text
        assert added.json()["adapter_ids"] == [first, second]
        assert added.json()["endpoint_name"] == dep["endpoint_name"]  # same endpoint, nothing redeployed
        again = env.client.post(f"/v0/deployments/{dep['id']}/adapters", json={"adapter_id": second})
        assert again.json()["adapter_ids"] == [first, second]  # idempotent
        missing = env.client.post(f"/v0/deployments/{dep['id']}/adapters", json={"adapter_id": "adp_nope"})
        assert missing.status_code == 404

        removed = env.client.delete(f"/v0/deployments/{dep['id']}/adapters/{first}")
        assert removed.status_code == 200, removed.text
        assert removed.json()["adapter_ids"] == [second]
        assert env.client.delete(f"/v0/deployments/{dep['id']}/adapters/{first}").status_code == 404
        assert env.client.get(f"/v0/deployments/{dep['id']}").json()["status"] == "in_service"
