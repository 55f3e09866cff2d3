"""``fastuner worker --once`` through click, as an operator runs it (settings from the environment)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from click.testing import CliRunner

from api.db.models import TenantRow
from api.db.session import Database
from api.settings import get_settings
from api.storage.local import LocalStore
from cli.main import cli
from tests.drops.sqs_support import make_aws_drops
from tests.drops.support import SMOL, TENANT, bad_jsonl, jsonl, rows, status_of
from tests.e2e.sagemaker_support import (
    BUCKET,
    IMAGE_URI,
    INFERENCE_IMAGE_URI,
    REGION,
    ROLE_ARN,
    SageMakerEnv,
    mocked_aws,
)


@pytest.fixture
def fresh_settings() -> Iterator[None]:
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def _database_with_tenant(url: str) -> None:
    db = Database(url)
    db.migrate()
    with db.session() as session:
        session.add(TenantRow(id=TENANT, admissions=0))
    db.dispose()


def test_worker_once_drains_the_queue(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_settings: None
) -> None:
    with mocked_aws():
        aws = make_aws_drops(tmp_path / "setup")  # the queue and notification; its app is not used
        aws.ctx.close()
        url = f"sqlite:///{tmp_path / 'worker.db'}"
        _database_with_tenant(url)
        env = {
            "FASTUNER_HOME": str(tmp_path / "home"),
            "FASTUNER_DATABASE_URL": url,
            "FASTUNER_STORE": "s3",
            "FASTUNER_S3_BUCKET": BUCKET,
            "FASTUNER_BACKEND": "sagemaker",
            "FASTUNER_AWS_REGION": REGION,
            "FASTUNER_TRAINING_IMAGE_URI": IMAGE_URI,
            "FASTUNER_INFERENCE_IMAGE_URI": INFERENCE_IMAGE_URI,
            "FASTUNER_SAGEMAKER_ROLE_ARN": ROLE_ARN,
            "FASTUNER_DROP_QUEUE_URL": aws.queue_url,
            "FASTUNER_DROP_QUEUE_WAIT_SECONDS": "0",
            "FASTUNER_LOG_JSON": "false",
        }
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        s3 = boto3.client("s3", region_name=REGION)
        sidecar = {"job": {"base_model": SMOL, "max_steps": 10}}
        s3.put_object(
            Bucket=BUCKET, Key=f"drop/{TENANT}/cli.fastuner.json", Body=json.dumps(sidecar).encode()
        )
        s3.put_object(Bucket=BUCKET, Key=f"drop/{TENANT}/cli.jsonl", Body=jsonl(rows()))

        result = CliRunner().invoke(cli, ["--json", "worker", "--once"], catch_exceptions=False)

        assert result.exit_code == 0, result.output
        summary = json.loads(result.stdout)
        assert summary["counts"] == {"started": 1}
        (outcome,) = summary["outcomes"]
        assert outcome["key"] == f"drop/{TENANT}/cli.jsonl" and outcome["job_id"].startswith("ft_")
        assert len(SageMakerEnv.moto_jobs()) == 1

        again = CliRunner().invoke(cli, ["worker", "--once"], catch_exceptions=False)
        assert again.exit_code == 0 and "0 message(s); no drops" in again.stdout


def test_worker_once_scans_the_local_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_settings: None
) -> None:
    home = tmp_path / "home"
    _database_with_tenant(f"sqlite:///{home / 'fastuner.db'}")
    monkeypatch.setenv("FASTUNER_HOME", str(home))
    monkeypatch.setenv("FASTUNER_DROP_SETTLE_SECONDS", "0")
    monkeypatch.setenv("FASTUNER_LOG_JSON", "false")
    store = LocalStore(home / "store")
    store.put_bytes(f"drop/{TENANT}/oops.jsonl", bad_jsonl())

    result = CliRunner().invoke(cli, ["worker", "--once", "--source", "auto"], catch_exceptions=False)

    assert result.exit_code == 0, result.output
    assert "scan: 0 message(s); 1 rejected" in result.stdout
    assert f"drop/{TENANT}/oops.jsonl: rejected" in result.stdout
    assert status_of(store, f"drop/{TENANT}/oops.jsonl")["state"] == "rejected"


def test_worker_sqs_without_a_queue_is_a_usage_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_settings: None
) -> None:
    monkeypatch.setenv("FASTUNER_HOME", str(tmp_path / "home"))
    result = CliRunner().invoke(cli, ["worker", "--once", "--source", "sqs"])
    assert result.exit_code == 2 and "FASTUNER_DROP_QUEUE_URL" in result.output
