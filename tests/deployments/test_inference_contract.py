"""An endpoint that breaks the container contract is the backend's fault (502), never a 500."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from api.domain.deployments import InferenceRequest
from api.domain.errors import BackendError
from api.services.deployments import DeploymentService
from api.services.tenants import TenantService
from api.settings import Settings
from tests.deployments.test_janitor import FakeEndpoints, _deployment


class Answering(FakeEndpoints):
    def __init__(self, answer: Any) -> None:
        super().__init__()
        self.answer = answer

    def invoke(self, endpoint_name: str, state: dict[str, Any], payload: dict[str, Any]) -> Any:
        return self.answer


GOOD = {"generated_text": "HI", "prompt_tokens": 2, "completion_tokens": 1, "finish_reason": "stop"}


def _service(db_url: str, tmp_path: Path, answer: Any) -> DeploymentService:
    from api.db.session import Database

    db = Database(db_url)
    db.migrate()
    settings = Settings(home=tmp_path)
    backend = Answering(answer)
    _deployment(db, backend, "dep_a")
    return DeploymentService(db, backend, settings, TenantService(db, settings))


@pytest.mark.parametrize(
    "answer",
    [{"outputs": [{"generated_text": 3}]}, {"outputs": "nope"}, {"outputs": [{"text": "HI"}]}, ["x"]],
    ids=["wrong-type", "not-a-list", "missing-fields", "not-an-object"],
)
def test_malformed_outputs_are_a_backend_error(tmp_path: Path, answer: Any) -> None:
    service = _service(f"sqlite:///{tmp_path / 'db.sqlite'}", tmp_path, answer)
    with pytest.raises(BackendError, match="malformed outputs"):
        service.infer("t", InferenceRequest(deployment_id="dep_a", inputs="hi"))


def test_well_formed_outputs_pass(tmp_path: Path) -> None:
    service = _service(f"sqlite:///{tmp_path / 'db.sqlite'}", tmp_path, {"outputs": [GOOD]})
    resp = service.infer("t", InferenceRequest(deployment_id="dep_a", inputs="hi"))
    assert resp.outputs[0].generated_text == "HI"
