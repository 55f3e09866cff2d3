"""The ``sagemaker`` endpoint backend in ``components`` mode: adapters as SageMaker inference components.

Selected with ``FASTUNER_SAGEMAKER_DEPLOYMENT_MODE=components`` (``endpoint``, the one-container mode
of :mod:`api.backends.sagemaker_endpoints`, stays available). One deployment is:

* an **endpoint config** for inference components: ``ExecutionRoleArn`` at the config level and one
  production variant ``AllTraffic`` with the instance type and count, managed instance scaling pinned
  to that count and least-outstanding-requests routing — and no ``ModelName``;
* the **endpoint**;
* the **base inference component** ``{endpoint}-base``: our inference image, the base model's
  artifacts (``ArtifactUrl``, unpacked by SageMaker into ``/opt/ml/model``, where the server reads it)
  when ``FASTUNER_SAGEMAKER_BASE_MODEL_ARTIFACTS`` names them, else the hub id; all the instance's
  accelerators, ``RuntimeConfig.CopyCount`` = instance count;
* one **adapter inference component** per adapter, ``{endpoint}-{adapter}``, with
  ``BaseInferenceComponentName`` = the base component and ``ArtifactUrl`` = the adapter's
  ``model.tar.gz`` package (``{tenant}/adapter-packages/{adapter}/model.tar.gz``, written from the
  adapter folder ``{tenant}/adapters/{adapter}/`` the first time it is needed; SageMaker wants one
  gzip'd tar, not a prefix). An adapter component takes no compute of its own.

Everything is tagged ``fastuner:managed=true`` (+ tenant, deployment; adapters also
``fastuner:adapter``).

Life cycle (inference components can only be created on an ``InService`` endpoint, an adapter only
on an ``InService`` base):

* ``create_endpoint`` packages the adapters and creates the config and the endpoint (idempotent);
  the state it returns holds every component's name and exact request.
* ``describe_endpoint`` *advances* the deployment: once the endpoint is in service it creates the
  base component, once that is in service the missing adapter components; ``in_service`` when all
  are. Every step is idempotent (looked up first, "already exists" is reuse).
* ``add_adapter`` / ``remove_adapter`` change one adapter component without touching the base.
* ``invoke`` sends ``InvokeEndpoint`` with ``InferenceComponentName`` = the request's adapter's
  component (the base component for a base-model request). The payload still names the adapter.
* ``delete_endpoint`` deletes adapter components, then the base, then the endpoint, the config (and
  a model, for a deployment made in ``endpoint`` mode), waiting (bounded) for each stage to be gone
  because SageMaker refuses to drop a base with adapters or an endpoint with components. Missing
  parts are fine; components found on the endpoint that the state does not list are deleted only
  when tagged ``fastuner:managed=true``. A stage still draining at the deadline raises a transient
  :class:`~api.domain.errors.BackendError`; the janitor's next pass continues from there.
"""

from __future__ import annotations

import io
import tarfile
import tempfile
import time
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from api.backends.aws_errors import backend_error
from api.backends.endpoints import MANAGED_TAG, EndpointSpec, EndpointStatus, ManagedComponent
from api.backends.sagemaker_component_requests import (
    ADAPTER_TAG,
    ComponentSettings,
    adapter_component_name,
    adapter_request,
    base_component_name,
    component_for,
    component_requests,
    component_status,
    package_key,
)
from api.backends.sagemaker_endpoint_errors import not_found, status_from_description
from api.backends.sagemaker_endpoints import SageMakerEndpoints
from api.domain.enums import DeploymentStatus
from api.domain.errors import BackendError
from api.logging import get_logger
from api.storage.s3 import S3Store

log = get_logger("backend.sagemaker_components")

MODE = "components"
DELETE_POLL_S = 5.0


class SageMakerComponents(SageMakerEndpoints):
    """:class:`~api.backends.endpoints.EndpointBackend` + adapter hosting on inference components."""

    mode = MODE

    def __init__(
        self,
        store: S3Store,
        *,
        components: ComponentSettings | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        **options: Any,
    ) -> None:
        """``options``: those of :class:`~api.backends.sagemaker_endpoints.SageMakerEndpoints`."""
        super().__init__(store, **options)
        self.components = components or ComponentSettings()
        self.sleep = sleep
        self.clock = clock

    # -- requests (no I/O) --------------------------------------------------------------------
    def build_component_requests(self, spec: EndpointSpec) -> dict[str, Any]:
        """The exact ``CreateEndpointConfig`` / ``CreateEndpoint`` / ``CreateInferenceComponent`` requests.

        ``{"endpoint_config", "endpoint", "base_component", "adapter_components": {adapter: request}}``.
        """
        return component_requests(
            spec,
            store=self.store,
            image_uri=self.image_uri,
            role_arn=self.role_arn,
            components=self.components,
            token_environment=self.token_environment(),
        )

    # -- requests (no I/O) --------------------------------------------------------------------
    # -- adapter packages ---------------------------------------------------------------------
    def ensure_package(self, adapter_prefix: str, adapter_id: str) -> str:
        """Write the adapter folder as ``model.tar.gz`` (once); returns its store key."""
        key = package_key(adapter_prefix, adapter_id)
        if self.store.exists(key):
            return key
        folder = f"{adapter_prefix.rstrip('/')}/{adapter_id}/"
        infos = [i for i in self.store.list(folder) if not i.key.endswith("/")]
        if not infos:
            raise BackendError(f"adapter {adapter_id} has no stored files under {self.store.uri(folder)}")
        with tempfile.TemporaryFile() as spool:
            with tarfile.open(fileobj=spool, mode="w:gz") as tar:
                for info in infos:
                    data = self.store.get_bytes(info.key)
                    member = tarfile.TarInfo(name=info.key[len(folder) :])
                    member.size = len(data)
                    member.mode = 0o644
                    tar.addfile(member, io.BytesIO(data))
            spool.seek(0)
            self.store.put_bytes(key, spool.read())
        log.info("packaged adapter %s as %s", adapter_id, self.store.uri(key))
        return key

    # -- create -------------------------------------------------------------------------------
    def create_endpoint(self, spec: EndpointSpec) -> dict[str, Any]:
        """Package the adapters, create the config and the endpoint; components follow in describe."""
        requests = self.build_component_requests(spec)
        name = spec.endpoint_name
        for adapter_id in spec.adapter_ids:
            self.ensure_package(spec.adapter_prefix, adapter_id)
        arn = self._ensure_config_and_endpoint(name, requests)
        return {
            "mode": MODE,
            "endpoint_config_name": name,
            "endpoint_arn": arn,
            "base_component": requests["base_component"]["InferenceComponentName"],
            "base_request": requests["base_component"],
            "adapter_components": {
                a: r["InferenceComponentName"] for a, r in requests["adapter_components"].items()
            },
            "adapter_requests": requests["adapter_components"],
        }

    # -- status (advances the deployment) -----------------------------------------------------
    def describe_endpoint(self, endpoint_name: str, state: dict[str, Any]) -> EndpointStatus:
        desc = self._describe_endpoint(endpoint_name)
        if desc is None:
            return EndpointStatus(DeploymentStatus.DELETED)
        endpoint = status_from_description(desc)
        if endpoint.status != DeploymentStatus.IN_SERVICE or state.get("mode") != MODE:
            return endpoint
        base = self._step(str(state["base_component"]), state.get("base_request"))
        if base.status != DeploymentStatus.IN_SERVICE:
            return base
        pending = False
        for adapter_id, name in (state.get("adapter_components") or {}).items():
            step = self._step(str(name), (state.get("adapter_requests") or {}).get(adapter_id))
            if step.status == DeploymentStatus.FAILED:
                return EndpointStatus(DeploymentStatus.FAILED, f"adapter {adapter_id}: {step.failure_reason}")
            pending = pending or step.status != DeploymentStatus.IN_SERVICE
        return EndpointStatus(DeploymentStatus.CREATING if pending else DeploymentStatus.IN_SERVICE)

    def _step(self, name: str, request: Mapping[str, Any] | None) -> EndpointStatus:
        """One component's status; a missing one is created from ``request`` (then ``creating``)."""
        desc = self._describe_component(name)
        if desc is None:
            if not request:
                return EndpointStatus(DeploymentStatus.FAILED, f"inference component {name} is missing")
            self._create(
                "inference component",
                name,
                lambda: self.sagemaker.create_inference_component(**request),
            )
            return EndpointStatus(DeploymentStatus.CREATING)
        return component_status(desc)

    # -- adapters -----------------------------------------------------------------------------
    def add_adapter(self, spec: EndpointSpec, state: dict[str, Any], adapter_id: str) -> dict[str, Any]:
        """Package and create ``adapter_id``'s component (now if the base is in service, else in
        ``describe_endpoint``); the base is untouched. Returns the new state."""
        self.ensure_package(spec.adapter_prefix, adapter_id)
        request = adapter_request(spec, adapter_id, self.store)
        name = str(request["InferenceComponentName"])
        base = self._describe_component(str(state["base_component"]))
        base_ready = base is not None and base.get("InferenceComponentStatus") == "InService"
        if base_ready and self._describe_component(name) is None:
            self._create(
                "inference component", name, lambda: self.sagemaker.create_inference_component(**request)
            )
        new = dict(state)
        new["adapter_components"] = {**(state.get("adapter_components") or {}), adapter_id: name}
        new["adapter_requests"] = {**(state.get("adapter_requests") or {}), adapter_id: request}
        return new

    def remove_adapter(self, endpoint_name: str, state: dict[str, Any], adapter_id: str) -> dict[str, Any]:
        """Delete ``adapter_id``'s component (no wait); the base keeps serving. Returns the new state."""
        adapters = dict(state.get("adapter_components") or {})
        name = str(adapters.pop(adapter_id, adapter_component_name(endpoint_name, adapter_id)))
        self._delete_component(name)
        new = dict(state)
        new["adapter_components"] = adapters
        new["adapter_requests"] = {
            k: v for k, v in (state.get("adapter_requests") or {}).items() if k != adapter_id
        }
        return new

    # -- invoke -------------------------------------------------------------------------------
    def _target(self, state: dict[str, Any], payload: dict[str, Any]) -> dict[str, str]:
        """``InferenceComponentName`` = the request's adapter's component (``invoke`` and
        ``invoke_stream`` alike); nothing for a deployment made in ``endpoint`` mode."""
        if state.get("mode") != MODE:
            return {}
        adapter = payload.get("adapter")
        return {"InferenceComponentName": component_for(state, str(adapter) if adapter else None)}

    # -- delete -------------------------------------------------------------------------------
    def delete_endpoint(self, endpoint_name: str, state: dict[str, Any]) -> None:
        """Adapter components → base component → endpoint → config (→ model); see the module doc."""
        base = str(state.get("base_component") or base_component_name(endpoint_name))
        adapters = {str(n) for n in (state.get("adapter_components") or {}).values()}
        listed = self._components_on(endpoint_name)
        for name in listed:
            if name != base and name not in adapters and self._is_managed_component(name):
                adapters.add(name)
        deadline = self.clock() + self.components.delete_wait_s
        for name in sorted(adapters):
            self._delete_component(name)
        self._wait_gone(adapters, deadline, "adapter components")
        self._delete_component(base)
        self._wait_gone({base}, deadline, "the base component")
        self._delete(
            "endpoint", endpoint_name, lambda: self.sagemaker.delete_endpoint(EndpointName=endpoint_name)
        )
        config_name = str(state.get("endpoint_config_name") or endpoint_name)
        self._delete(
            "endpoint config",
            config_name,
            lambda: self.sagemaker.delete_endpoint_config(EndpointConfigName=config_name),
        )
        if state.get("mode") != MODE:  # made in endpoint mode (or unknown): its model too
            model = str(state.get("model_name") or endpoint_name)
            self._delete("model", model, lambda: self.sagemaker.delete_model(ModelName=model))

    def _delete_component(self, name: str) -> None:
        self._delete(
            "inference component",
            name,
            lambda: self.sagemaker.delete_inference_component(InferenceComponentName=name),
        )

    def _wait_gone(self, names: set[str], deadline: float, what: str) -> None:
        left = set(names)
        while left:
            left = {n for n in sorted(left) if self._describe_component(n) is not None}
            if not left:
                return
            if self.clock() >= deadline:
                raise BackendError(
                    f"{what} still being deleted: {', '.join(sorted(left))}; retried on the next pass",
                    details={"transient": True},
                )
            self.sleep(DELETE_POLL_S)

    # -- listing ------------------------------------------------------------------------------
    def _components_on(self, endpoint_name: str) -> list[str]:
        names: list[str] = []
        try:
            pages = self.sagemaker.get_paginator("list_inference_components").paginate(
                EndpointNameEquals=endpoint_name
            )
            for page in pages:
                names.extend(str(s["InferenceComponentName"]) for s in page.get("InferenceComponents", []))
        except ClientError as exc:
            if not_found(exc):
                return []
            raise backend_error(f"could not list the inference components of {endpoint_name}", exc) from exc
        except BotoCoreError as exc:
            raise backend_error(f"could not list the inference components of {endpoint_name}", exc) from exc
        return names

    def _is_managed_component(self, name: str) -> bool:
        desc = self._describe_component(name)
        if desc is None:
            return False
        try:
            tags = self._tags(str(desc["InferenceComponentArn"]))
        except (ClientError, BotoCoreError) as exc:
            raise backend_error(f"could not read the tags of {name}", exc) from exc
        return tags is not None and tags.get(MANAGED_TAG) == "true"

    def list_managed_components(self) -> list[ManagedComponent]:
        """Live adapter/base components tagged ``fastuner:managed=true`` (for the janitor)."""
        found: list[ManagedComponent] = []
        try:
            for page in self.sagemaker.get_paginator("list_inference_components").paginate():
                for summary in page.get("InferenceComponents", []):
                    if summary.get("InferenceComponentStatus") == "Deleting":
                        continue
                    tags = self._tags(str(summary["InferenceComponentArn"]))
                    if tags is None or tags.get(MANAGED_TAG) != "true":
                        continue
                    created = summary.get("CreationTime")
                    found.append(
                        ManagedComponent(
                            name=str(summary["InferenceComponentName"]),
                            endpoint_name=str(summary["EndpointName"]),
                            adapter_id=tags.get(ADAPTER_TAG),
                            created_at=created if isinstance(created, datetime) else None,
                            tags=tags,
                        )
                    )
        except (ClientError, BotoCoreError) as exc:
            raise backend_error("could not list SageMaker inference components", exc) from exc
        return found

    def delete_component(self, name: str) -> None:
        """Delete one component (the janitor's stray sweep); missing is fine."""
        self._delete_component(name)

    def _describe_component(self, name: str) -> dict[str, Any] | None:
        return self._describe(
            "inference component",
            lambda: self.sagemaker.describe_inference_component(InferenceComponentName=name),
            name,
        )
