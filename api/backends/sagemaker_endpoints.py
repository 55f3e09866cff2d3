"""The ``sagemaker`` endpoint backend: the inference container as a SageMaker real-time endpoint.

One deployment is three SageMaker resources, all named ``spec.endpoint_name`` and all tagged with
``spec.tags`` (``fastuner:managed=true``, ``fastuner:tenant``, ``fastuner:deployment``):

* a **model** (``CreateModel``): the inference image with the container contract's environment —
  ``FASTUNER_BASE_MODEL``, ``FASTUNER_ADAPTER_PREFIX`` (the ``s3://`` URI of the tenant's adapter
  folder; the server reads adapter ``X`` from ``<prefix>/X/``), ``FASTUNER_PRELOAD_ADAPTERS`` and
  ``FASTUNER_MAX_ADAPTERS`` — run under the execution role;
* an **endpoint config** with one production variant ``AllTraffic`` (instance type and count);
* the **endpoint** itself.

Contract with the service:

* ``create_endpoint`` is idempotent: each part is looked up first and reused when it exists, so a
  retry after a crash or a throttled call completes the missing parts and creates nothing twice.
  It returns the state to keep: ``{"model_name", "endpoint_config_name", "endpoint_arn"}``. The
  endpoint is ``creating`` for several minutes after it returns; poll ``describe_endpoint``.
* ``describe_endpoint`` maps ``EndpointStatus``; an endpoint that does not exist is ``deleted``
  (whatever model or config may be left is removed by ``delete_endpoint``).
* ``delete_endpoint`` deletes the endpoint, then the config and the model; a missing part is not
  an error, so it is safe to repeat and to run concurrently. Any other failure raises
  :class:`~api.domain.errors.BackendError` and leaves the rest for the next try. It works from
  the names alone (``state`` may be empty, e.g. for an orphan found by ``list_managed``).
* ``invoke`` raises :class:`~api.backends.endpoints.InvocationError` with the container's own
  status and ``{code, message}`` when the server answered an error (SageMaker reports it as a
  ``ModelError``; e.g. 404 ``adapter_not_found``), 504 ``invocation_timeout`` when the container
  did not answer within SageMaker's 60 s, 503 ``model_loading`` for ``ModelNotReadyException``,
  404 ``endpoint_not_found`` / 400 ``invalid_request`` for SageMaker's own validation errors.
  AWS-side failures (throttling, service unavailable, after botocore's retries) are
  ``BackendError`` (``transient`` set), and so is a 200 answer that is not a JSON object.
* ``list_managed`` returns only endpoints tagged ``fastuner:managed=true`` (never one we did not
  create), skipping those already ``Deleting``.

AWS errors surface as ``BackendError`` with ``details = {"aws_error": <code>, "transient": <bool>}``
like the training backend.
"""

from __future__ import annotations

import json
import re
from collections.abc import Generator, Iterator, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from api.backends.aws_errors import backend_error, error_code, error_message
from api.backends.endpoints import (
    MANAGED_TAG,
    EndpointSpec,
    EndpointStatus,
    InvocationError,
    ManagedEndpoint,
    parse_sse_events,
)
from api.backends.hub_env import HF_TOKEN_SECRET_ENV
from api.backends.sagemaker import RETRY_CONFIG
from api.domain.enums import DeploymentStatus
from api.domain.errors import BackendError
from api.logging import get_logger
from api.storage.s3 import S3Store

if TYPE_CHECKING:
    from mypy_boto3_sagemaker import SageMakerClient
    from mypy_boto3_sagemaker_runtime import SageMakerRuntimeClient

log = get_logger("backend.sagemaker_endpoints")

# InvokeEndpoint: SageMaker gives the container 60 s; a retry of a timed-out generation is
# unlikely to fare better, so fewer attempts than the control-plane calls.
RUNTIME_CONFIG = Config(retries={"mode": "standard", "max_attempts": 3}, connect_timeout=10, read_timeout=70)
VARIANT_NAME = "AllTraffic"
CONTENT_TYPE = "application/json"
TENANT_TAG = "fastuner:tenant"
DEPLOYMENT_TAG = "fastuner:deployment"
DEFAULT_MAX_ADAPTERS = 8  # the inference server's own default
# Large base models download from the hub at start-up; SageMaker's default health-check wait is
# shorter than that can take. (Allowed range 60..3600.)
STARTUP_HEALTH_CHECK_TIMEOUT_S = 1800
ENV_VALUE_MAX = 1024  # SageMaker's limit on one container environment value

_NAME = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")

CREATING_STATUSES = frozenset({"Creating", "Updating", "SystemUpdating", "RollingBack"})
FAILED_STATUSES = frozenset({"Failed", "OutOfService", "UpdateRollbackFailed"})


class SageMakerEndpoints:
    """:class:`~api.backends.endpoints.EndpointBackend` on SageMaker real-time endpoints."""

    name = "sagemaker"

    def __init__(
        self,
        store: S3Store,
        *,
        image_uri: str,
        role_arn: str,
        region: str | None,
        sagemaker_client: SageMakerClient | None = None,
        runtime_client: SageMakerRuntimeClient | None = None,
        hf_token_secret: str | None = None,
    ) -> None:
        if not image_uri:
            raise ValueError(
                "the sagemaker endpoint backend needs the inference image URI (FASTUNER_INFERENCE_IMAGE_URI)"
            )
        if not role_arn:
            raise ValueError(
                "the sagemaker endpoint backend needs an execution role (FASTUNER_SAGEMAKER_ROLE_ARN)"
            )
        self.store = store
        self.image_uri = image_uri
        self.role_arn = role_arn
        self.region = region
        self.hf_token_secret = hf_token_secret  # the secret's name/ARN in Environment, never the token
        self.sagemaker: SageMakerClient = sagemaker_client or boto3.client(
            "sagemaker", region_name=region, config=RETRY_CONFIG
        )
        self.runtime: SageMakerRuntimeClient = runtime_client or boto3.client(
            "sagemaker-runtime", region_name=region, config=RUNTIME_CONFIG
        )

    def token_environment(self) -> dict[str, str]:
        """The container variable naming the Hugging Face token's secret, when one is configured."""
        return {HF_TOKEN_SECRET_ENV: self.hf_token_secret} if self.hf_token_secret else {}

    # -- requests (no I/O) --------------------------------------------------------------------
    def build_requests(self, spec: EndpointSpec) -> dict[str, dict[str, Any]]:
        """The exact ``CreateModel`` / ``CreateEndpointConfig`` / ``CreateEndpoint`` requests."""
        name = spec.endpoint_name
        if not _NAME.match(name):
            raise ValueError(f"invalid SageMaker endpoint name: {name!r}")
        if spec.instance_count < 1:
            raise ValueError("instance_count must be >= 1")
        tags = [{"Key": k, "Value": v} for k, v in resource_tags(spec).items()]
        environment = {
            "FASTUNER_BASE_MODEL": spec.base_model,
            "FASTUNER_ADAPTER_PREFIX": self.store.uri(spec.adapter_prefix.rstrip("/")),
            "FASTUNER_PRELOAD_ADAPTERS": preload_value(spec.adapter_ids),
            "FASTUNER_MAX_ADAPTERS": str(max(DEFAULT_MAX_ADAPTERS, len(spec.adapter_ids))),
            **self.token_environment(),
        }
        return {
            "model": {
                "ModelName": name,
                "PrimaryContainer": {"Image": self.image_uri, "Environment": environment},
                "ExecutionRoleArn": self.role_arn,
                "Tags": tags,
            },
            "endpoint_config": {
                "EndpointConfigName": name,
                "ProductionVariants": [
                    {
                        "VariantName": VARIANT_NAME,
                        "ModelName": name,
                        "InstanceType": spec.instance_type,
                        "InitialInstanceCount": spec.instance_count,
                        "InitialVariantWeight": 1.0,
                        "ContainerStartupHealthCheckTimeoutInSeconds": STARTUP_HEALTH_CHECK_TIMEOUT_S,
                    }
                ],
                "Tags": tags,
            },
            "endpoint": {"EndpointName": name, "EndpointConfigName": name, "Tags": tags},
        }

    # -- create -------------------------------------------------------------------------------
    def create_endpoint(self, spec: EndpointSpec) -> dict[str, Any]:
        """Create model, endpoint config and endpoint, reusing whichever already exist."""
        requests = self.build_requests(spec)
        name = spec.endpoint_name

        if self._describe_model(name) is None:
            self._create("model", name, lambda: self.sagemaker.create_model(**requests["model"]))
        arn = self._ensure_config_and_endpoint(name, requests)
        return {"model_name": name, "endpoint_config_name": name, "endpoint_arn": arn}

    def _ensure_config_and_endpoint(self, name: str, requests: dict[str, Any]) -> str:
        """Create the endpoint config and the endpoint ``name`` unless they exist; the endpoint's ARN."""
        if self._describe_endpoint_config(name) is None:
            self._create(
                "endpoint config",
                name,
                lambda: self.sagemaker.create_endpoint_config(**requests["endpoint_config"]),
            )
        existing = self._describe_endpoint(name)
        if existing is None:
            arn = self._create(
                "endpoint", name, lambda: self.sagemaker.create_endpoint(**requests["endpoint"])
            )
            if arn is not None:
                return arn
            existing = self._describe_endpoint(name)  # lost a race with a concurrent create
            if existing is None:
                raise BackendError(f"endpoint {name} was reported as existing but cannot be found")
        else:
            log.info("endpoint %s already exists (%s); reusing it", name, existing.get("EndpointStatus"))
        return str(existing["EndpointArn"])

    def _create(self, what: str, name: str, call: Any) -> str | None:
        """Run one create call; returns the new ARN, or None when it already existed (a race)."""
        try:
            response = call()
        except ClientError as exc:
            if _already_exists(exc):
                log.info("%s %s already exists; reusing it", what, name)
                return None
            raise backend_error(f"could not create {what} {name}", exc) from exc
        except BotoCoreError as exc:
            raise backend_error(f"could not create {what} {name}", exc) from exc
        log.info("created %s %s", what, name)
        for key in ("EndpointArn", "EndpointConfigArn", "ModelArn"):
            if key in response:
                return str(response[key])
        return ""

    # -- status -------------------------------------------------------------------------------
    def describe_endpoint(self, endpoint_name: str, state: dict[str, Any]) -> EndpointStatus:
        desc = self._describe_endpoint(endpoint_name)
        if desc is None:
            return EndpointStatus(DeploymentStatus.DELETED)
        return status_from_description(desc)

    # -- delete -------------------------------------------------------------------------------
    def delete_endpoint(self, endpoint_name: str, state: dict[str, Any]) -> None:
        """Delete the endpoint, then its config and model; missing parts are skipped.

        When the endpoint cannot be deleted yet (e.g. SageMaker refuses while it is being created
        or updated) nothing else is touched and the BackendError says ``transient``.
        """
        config_name = str(state.get("endpoint_config_name") or endpoint_name)
        model_name = str(state.get("model_name") or endpoint_name)
        self._delete(
            "endpoint", endpoint_name, lambda: self.sagemaker.delete_endpoint(EndpointName=endpoint_name)
        )
        self._delete(
            "endpoint config",
            config_name,
            lambda: self.sagemaker.delete_endpoint_config(EndpointConfigName=config_name),
        )
        self._delete("model", model_name, lambda: self.sagemaker.delete_model(ModelName=model_name))

    def _delete(self, what: str, name: str, call: Any) -> None:
        try:
            call()
        except ClientError as exc:
            if _not_found(exc):
                log.info("%s %s is already gone", what, name)
                return
            if _being_deleted(exc):
                log.info("%s %s is already being deleted", what, name)
                return
            error = backend_error(f"could not delete {what} {name}", exc)
            if _busy(exc) and isinstance(error.details, dict):
                error.details["transient"] = True
            raise error from exc
        except BotoCoreError as exc:
            raise backend_error(f"could not delete {what} {name}", exc) from exc
        log.info("deleted %s %s", what, name)

    # -- invoke -------------------------------------------------------------------------------
    def invoke(self, endpoint_name: str, state: dict[str, Any], payload: dict[str, Any]) -> dict[str, Any]:
        """``InvokeEndpoint`` with a JSON body; the server's JSON answer as a dict."""
        return self._invoke(endpoint_name, payload, **self._target(state, payload))

    def _target(self, state: dict[str, Any], payload: dict[str, Any]) -> dict[str, str]:
        """Extra ``InvokeEndpoint*`` arguments naming where in the endpoint a request goes (none
        here: one container; inference components name theirs)."""
        return {}

    def _invoke(self, endpoint_name: str, payload: dict[str, Any], **target: str) -> dict[str, Any]:
        """``InvokeEndpoint`` (``target``: e.g. ``InferenceComponentName``) and the JSON answer."""
        try:
            response = self.runtime.invoke_endpoint(
                EndpointName=endpoint_name,
                ContentType=CONTENT_TYPE,
                Accept=CONTENT_TYPE,
                Body=json.dumps(payload).encode(),
                **target,
            )
            body = response["Body"].read()
        except ClientError as exc:
            raise invocation_error(exc) from exc
        except BotoCoreError as exc:
            raise backend_error(f"could not invoke endpoint {endpoint_name}", exc) from exc
        try:
            result = json.loads(body)
        except ValueError:
            result = None
        if not isinstance(result, dict):
            raise BackendError(
                f"endpoint {endpoint_name} answered with a body that is not a JSON object: {body[:200]!r}"
            )
        return result

    def invoke_stream(
        self, endpoint_name: str, state: dict[str, Any], payload: dict[str, Any]
    ) -> Generator[dict[str, Any], None, None]:
        """``InvokeEndpointWithResponseStream`` with ``"stream": true``: the server's SSE events
        (``PayloadPart`` bytes cut anywhere, reassembled by ``parse_sse_events``). Errors before the
        stream map like ``invoke``'s; ``ModelStreamError`` / ``InternalStreamFailure`` during it are
        a ``BackendError``. Closing the generator closes the response stream."""
        try:
            response = self.runtime.invoke_endpoint_with_response_stream(
                EndpointName=endpoint_name,
                ContentType=CONTENT_TYPE,
                Accept="text/event-stream",
                Body=json.dumps({**payload, "stream": True}).encode(),
                **self._target(state, payload),
            )
        except ClientError as exc:
            raise invocation_error(exc) from exc
        except BotoCoreError as exc:
            raise backend_error(f"could not invoke endpoint {endpoint_name}", exc) from exc
        body = response["Body"]

        def parts() -> Iterator[bytes]:
            try:
                for event in body:
                    if "PayloadPart" in event:
                        yield bytes(event["PayloadPart"].get("Bytes", b""))
                    else:  # ModelStreamError / InternalStreamFailure given as events
                        name = next(iter(event), "stream_error")
                        detail: dict[str, Any] = dict(event.get(name) or {})  # type: ignore[call-overload]
                        raise BackendError(
                            f"endpoint {endpoint_name} stream failed: {name}: {detail.get('Message', '')}"
                        )
            except ClientError as exc:  # botocore raises error events as EventStreamError
                raise backend_error(f"endpoint {endpoint_name} stream failed", exc) from exc
            except BotoCoreError as exc:
                raise backend_error(f"endpoint {endpoint_name} stream broke", exc) from exc

        try:
            yield from parse_sse_events(parts())
        finally:
            close = getattr(body, "close", None)
            if close is not None:
                close()

    # -- orphans ------------------------------------------------------------------------------
    def list_managed(self) -> list[ManagedEndpoint]:
        """Live endpoints tagged ``fastuner:managed=true`` (one ``ListTags`` per endpoint)."""
        found: list[ManagedEndpoint] = []
        try:
            for page in self.sagemaker.get_paginator("list_endpoints").paginate():
                for summary in page.get("Endpoints", []):
                    if summary.get("EndpointStatus") == "Deleting":
                        continue
                    name = str(summary["EndpointName"])
                    tags = self._tags(str(summary["EndpointArn"]))
                    if tags is None or tags.get(MANAGED_TAG) != "true":
                        continue
                    created = summary.get("CreationTime")
                    found.append(
                        ManagedEndpoint(
                            name=name,
                            created_at=created if isinstance(created, datetime) else None,
                            tags=tags,
                        )
                    )
        except (ClientError, BotoCoreError) as exc:
            raise backend_error("could not list SageMaker endpoints", exc) from exc
        return found

    def _tags(self, arn: str) -> dict[str, str] | None:
        """The resource's tags; None when it vanished between the listing and this call, or when
        we may not read them (IAM may scope ``ListTags`` to our own names: then it is not ours)."""
        tags: dict[str, str] = {}
        try:
            for page in self.sagemaker.get_paginator("list_tags").paginate(ResourceArn=arn):
                tags.update({t["Key"]: t["Value"] for t in page.get("Tags", [])})
        except ClientError as exc:
            if _not_found(exc):
                return None
            if error_code(exc) in ("AccessDeniedException", "AccessDenied"):
                log.debug("no access to the tags of %s; not ours", arn)
                return None
            raise
        return tags

    # -- describes ----------------------------------------------------------------------------
    def _describe_endpoint(self, name: str) -> dict[str, Any] | None:
        return self._describe("endpoint", lambda: self.sagemaker.describe_endpoint(EndpointName=name), name)

    def _describe_endpoint_config(self, name: str) -> dict[str, Any] | None:
        return self._describe(
            "endpoint config",
            lambda: self.sagemaker.describe_endpoint_config(EndpointConfigName=name),
            name,
        )

    def _describe_model(self, name: str) -> dict[str, Any] | None:
        return self._describe("model", lambda: self.sagemaker.describe_model(ModelName=name), name)

    def _describe(self, what: str, call: Any, name: str) -> dict[str, Any] | None:
        try:
            return dict(call())
        except ClientError as exc:
            if _not_found(exc):
                return None
            raise backend_error(f"could not describe {what} {name}", exc) from exc
        except BotoCoreError as exc:
            raise backend_error(f"could not describe {what} {name}", exc) from exc


# -- helpers ----------------------------------------------------------------------------------
def resource_tags(spec: EndpointSpec) -> dict[str, str]:
    """``spec.tags`` with the managed/tenant/deployment tags guaranteed."""
    tags = dict(spec.tags)
    tags.setdefault(TENANT_TAG, spec.tenant_id)
    tags.setdefault(DEPLOYMENT_TAG, spec.deployment_id)
    tags[MANAGED_TAG] = "true"
    return tags


def preload_value(adapter_ids: list[str]) -> str:
    """Comma list of the adapters to preload, cut to SageMaker's 1024-character limit.

    Preloading only warms the cache: an adapter left out is loaded on its first request.
    """
    kept: list[str] = []
    length = 0
    for adapter_id in adapter_ids:
        extra = len(adapter_id) + (1 if kept else 0)
        if length + extra > ENV_VALUE_MAX:
            log.warning(
                "preloading only %d of %d adapters (environment value limit)", len(kept), len(adapter_ids)
            )
            break
        kept.append(adapter_id)
        length += extra
    return ",".join(kept)


def status_from_description(desc: Mapping[str, Any]) -> EndpointStatus:
    """Map a ``DescribeEndpoint`` response onto our deployment status."""
    status = str(desc.get("EndpointStatus", ""))
    if status in CREATING_STATUSES:
        return EndpointStatus(DeploymentStatus.CREATING)
    if status == "InService":
        return EndpointStatus(DeploymentStatus.IN_SERVICE)
    if status == "Deleting":
        return EndpointStatus(DeploymentStatus.DELETING)
    if status in FAILED_STATUSES:
        reason = desc.get("FailureReason")
        if not reason:
            reason = (
                "the endpoint is out of service"
                if status == "OutOfService"
                else f"the SageMaker endpoint is {status} without a reason"
            )
        return EndpointStatus(DeploymentStatus.FAILED, failure_reason=str(reason))
    raise BackendError(f"unknown SageMaker EndpointStatus {status!r}")


_ORIGINAL = re.compile(r"\((\d{3})\) from \S+ with message \"(.*)\"\. See ", re.DOTALL)


def invocation_error(exc: ClientError) -> InvocationError | BackendError:
    """Map a failed ``InvokeEndpoint`` onto InvocationError (the server's answer) or BackendError.

    A container error comes back as ``ModelError`` (HTTP 424) carrying ``OriginalStatusCode`` and
    ``OriginalMessage`` (the container's body, ``{"code", "message"}`` for our server); older
    responses only have them inside ``Message`` ("Received client error (404) from primary with
    message "…". See …").
    """
    code = error_code(exc)
    message = error_message(exc)
    if code == "ModelError":
        raw_status = exc.response.get("OriginalStatusCode")
        raw_body = exc.response.get("OriginalMessage")
        match = _ORIGINAL.search(message)
        if raw_status is None and match:
            raw_status = match.group(1)
        if raw_body is None and match:
            raw_body = match.group(2)
        if raw_status is None and "timed out" in message.lower():
            # SageMaker gives the container 60 s to answer.
            return InvocationError(504, "invocation_timeout", message)
        try:
            status = int(str(raw_status))
        except ValueError:
            status = 502
        server_code, server_message = _server_error(raw_body)
        return InvocationError(
            status,
            server_code or ("model_error" if status < 500 else "internal_error"),
            server_message or str(raw_body or message),
        )
    if code == "ModelNotReadyException":
        return InvocationError(503, "model_loading", message or "the model is not ready for inference yet")
    if code in ("ValidationError", "ValidationException"):
        if "not found" in message.lower() or "could not find" in message.lower():
            return InvocationError(404, "endpoint_not_found", message)
        return InvocationError(400, "invalid_request", message)
    return backend_error("could not invoke the endpoint", exc)


def _server_error(body: Any) -> tuple[str | None, str | None]:
    """``(code, message)`` from the container's JSON error body, when it is one."""
    if not isinstance(body, str | bytes) or not body:
        return None, None
    try:
        parsed = json.loads(body)
    except ValueError:
        return None, None
    if not isinstance(parsed, dict):
        return None, None
    code, message = parsed.get("code"), parsed.get("message")
    return (str(code) if code else None, str(message) if message else None)


def _not_found(exc: ClientError) -> bool:
    code, message = error_code(exc), error_message(exc).lower()
    if code in ("ResourceNotFound", "ResourceNotFoundException"):
        return True
    return code in ("ValidationException", "ValidationError") and (
        "could not find" in message or "not found" in message or "does not exist" in message
    )


def _already_exists(exc: ClientError) -> bool:
    """SageMaker: ``ValidationException: Cannot create already existing model "arn:…"``."""
    code, message = error_code(exc), error_message(exc).lower()
    return code in ("ValidationException", "ResourceInUse") and (
        "already existing" in message or "already exists" in message
    )


def _being_deleted(exc: ClientError) -> bool:
    message = error_message(exc).lower()
    return error_code(exc) == "ValidationException" and "deleting" in message and "status" in message


def _busy(exc: ClientError) -> bool:
    """A refusal because the resource is mid-operation (worth retrying on the next pass)."""
    message = error_message(exc).lower()
    return error_code(exc) == "ValidationException" and any(
        word in message for word in ("in-progress", "in progress", "creating", "updating", "status")
    )
