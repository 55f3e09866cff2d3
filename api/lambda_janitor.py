"""AWS Lambda entry point: one TTL-janitor pass (``api.lambda_janitor.handler``).

An EventBridge schedule (``infra/cloudformation/fastuner.yaml``) invokes it every few minutes. It
builds the same :class:`~api.context.AppContext` the API builds, from the same ``FASTUNER_*``
environment, and runs ``Janitor.run_once`` — the code behind the API's janitor route — so the
Lambda and the API can never disagree on what is idle or orphaned.

The database URL is a secret, so the stack does not put it in the function's configuration: it
sets ``FASTUNER_DATABASE_URL_SECRET_ARN`` (a Secrets Manager secret) or
``FASTUNER_DATABASE_URL_PARAMETER`` (an SSM SecureString parameter) and this module reads the value
at cold start. The secret may be the URL itself or a JSON object with a ``url`` (or
``database_url``) key. An explicit ``FASTUNER_DATABASE_URL`` wins (local runs, tests).

Event (all optional): ``{"dry_run": true}`` reports what would be deleted without deleting.
Returns the :class:`~api.domain.deployments.JanitorReport` as JSON-ready data (visible in the
invocation result and logged).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import boto3

from api.logging import configure_logging, get_logger
from api.settings import Settings, get_settings

log = get_logger("lambda.janitor")

SECRET_ENV = "FASTUNER_DATABASE_URL_SECRET_ARN"
PARAMETER_ENV = "FASTUNER_DATABASE_URL_PARAMETER"
URL_ENV = "FASTUNER_DATABASE_URL"


def handler(event: Any, context: Any = None) -> dict[str, Any]:
    """Run one janitor pass; ``event`` may carry ``dry_run``."""
    settings = load_settings()
    configure_logging(settings.log_level, json_format=settings.log_json)
    dry_run = _dry_run(event)

    from api.context import AppContext  # after the environment is complete

    ctx = AppContext.build(settings)
    try:
        report = ctx.janitor.run_once(dry_run=dry_run)
    finally:
        ctx.close()
    result: dict[str, Any] = report.model_dump(mode="json")
    log.info(
        "janitor pass done",
        extra={
            "dry_run": dry_run,
            "actions": len(result.get("actions", [])),
            "hourly_savings_usd": result.get("hourly_savings_usd"),
            "request_id": getattr(context, "aws_request_id", None),
        },
    )
    return result


def load_settings() -> Settings:
    """Settings from the environment, after resolving the database URL reference (once)."""
    if not os.environ.get(URL_ENV):
        url = resolve_database_url(os.environ)
        if url:
            os.environ[URL_ENV] = url
            get_settings.cache_clear()
    return get_settings()


def resolve_database_url(env: Mapping[str, str]) -> str | None:
    """The database URL named by the secret/parameter environment variables, if any."""
    region = env.get("FASTUNER_AWS_REGION") or None
    secret_id = env.get(SECRET_ENV, "").strip()
    if secret_id:
        client = boto3.client("secretsmanager", region_name=region)
        value = client.get_secret_value(SecretId=secret_id).get("SecretString")
        if not value:
            raise RuntimeError(f"secret {secret_id} has no string value (expected the database URL)")
        return _url_from_secret(value, secret_id)
    parameter = env.get(PARAMETER_ENV, "").strip()
    if parameter:
        ssm = boto3.client("ssm", region_name=region)
        value = ssm.get_parameter(Name=parameter, WithDecryption=True)["Parameter"].get("Value")
        if not value:
            raise RuntimeError(f"parameter {parameter} is empty (expected the database URL)")
        return _url_from_secret(value, parameter)
    return None


def _url_from_secret(value: str, source: str) -> str:
    text = value.strip()
    if text.startswith("{"):
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise RuntimeError(f"{source} holds invalid JSON") from exc
        for key in ("url", "database_url", "DATABASE_URL"):
            if isinstance(data, dict) and isinstance(data.get(key), str) and data[key]:
                return str(data[key])
        raise RuntimeError(f"{source} is JSON without a 'url' key")
    return text


def _dry_run(event: Any) -> bool:
    if not isinstance(event, Mapping):
        return False
    value = event.get("dry_run", False)
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes")
    return bool(value)
