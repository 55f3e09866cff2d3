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
from collections.abc import Generator, Iterator
from datetime import datetime
from typing import TYPE_CHECKING, Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from api.backends.aws_errors import backend_error, error_code
from api.backends.endpoints import (
    MANAGED_TAG,
    EndpointSpec,
    EndpointStatus,
    ManagedEndpoint,
    parse_sse_events,
)
from api.backends.sagemaker_base import SageMakerService
from api.backends.sagemaker_endpoint_errors import (
    already_exists,
    being_deleted,
    busy,
    invocation_error,
    not_found,
    status_from_description,
)
from api.backends.sagemaker_endpoint_requests import (
    DEFAULT_MAX_ADAPTERS,
    STARTUP_HEALTH_CHECK_TIMEOUT_S,
    VARIANT_NAME,
    check,
    preload_value,
    resource_tags,
    tag_list,
)
from api.backends.sagemaker_endpoint_requests import ENV_VALUE_MAX as ENV_VALUE_MAX  # tests read the limit
from api.domain.enums import DeploymentStatus
from api.domain.errors import BackendError
from api.logging import get_logger
from api.storage.s3 import S3Store

if TYPE_CHECKING:
    from mypy_boto3_sagemaker_runtime import SageMakerRuntimeClient

log = get_logger("backend.sagemaker_endpoints")

# InvokeEndpoint: SageMaker gives the container 60 s; a retry of a timed-out generation is
# unlikely to fare better, so fewer attempts than the control-plane calls.
RUNTIME_CONFIG = Config(retries={"mode": "standard", "max_attempts": 3}, connect_timeout=10, read_timeout=70)
CONTENT_TYPE = "application/json"


class SageMakerEndpoints(SageMakerService):
    """:class:`~api.backends.endpoints.EndpointBackend` on SageMaker real-time endpoints."""

    name = "sagemaker"
    role = "the sagemaker endpoint backend"
    image_kind = "inference"

    def __init__(
        self, store: S3Store, *, runtime_client: SageMakerRuntimeClient | None = None, **options: Any
    ) -> None:
        """``options``: those of :class:`~api.backends.sagemaker_base.SageMakerService`."""
        super().__init__(store, **options)
        self.runtime: SageMakerRuntimeClient = runtime_client or boto3.client(
            "sagemaker-runtime", region_name=self.region, config=RUNTIME_CONFIG
        )

    # -- requests (no I/O) --------------------------------------------------------------------
    def build_requests(self, spec: EndpointSpec) -> dict[str, dict[str, Any]]:
        """The exact ``CreateModel`` / ``CreateEndpointConfig`` / ``CreateEndpoint`` requests."""
        name = check(spec)
        tags = tag_list(resource_tags(spec))
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
            if already_exists(exc):
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
            if not_found(exc):
                log.info("%s %s is already gone", what, name)
                return
            if being_deleted(exc):
                log.info("%s %s is already being deleted", what, name)
                return
            error = backend_error(f"could not delete {what} {name}", exc)
            if busy(exc) and isinstance(error.details, dict):
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
            if not_found(exc):
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
            if not_found(exc):
                return None
            raise backend_error(f"could not describe {what} {name}", exc) from exc
        except BotoCoreError as exc:
            raise backend_error(f"could not describe {what} {name}", exc) from exc
