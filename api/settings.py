"""Runtime settings (environment variables prefixed ``FASTUNER_``, or a ``.env`` file)."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from api.domain.datasets import ValidationLimits
from api.domain.tenants import TENANT_PATTERN

DEFAULT_HOME = Path("~/.fastuner").expanduser()


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="FASTUNER_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    home: Path = DEFAULT_HOME
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL; default sqlite:///{home}/fastuner.db"
    )

    store: Literal["local", "s3"] = "local"
    store_root: Path | None = Field(default=None, description="local store root; default {home}/store")
    s3_bucket: str | None = None
    s3_prefix: str = ""
    s3_endpoint_url: str | None = None

    backend: str = Field(
        default="local", description="a registered backend (api/backends/registry.py): local, sagemaker, …"
    )
    aws_region: str | None = None
    sagemaker_role_arn: str | None = None
    training_image_uri: str | None = Field(default=None, description="ECR URI of containers/training")
    inference_image_uri: str | None = Field(default=None, description="ECR URI of containers/inference")
    default_instance_type: str = Field(default="ml.g5.xlarge", description="SageMaker training default")
    # Hub ids users may fine-tune: fnmatch patterns matched per `/`-separated segment (`*` never
    # crosses a `/`). On the local backend, model folders under `model_roots` are allowed too.
    allowed_models: list[str] = [
        "HuggingFaceTB/SmolLM2-*",
        "meta-llama/*",
        "mistralai/*",
        "Qwen/*",
        "google/gemma-*",
        "microsoft/Phi-*",
    ]
    # Local backend: the folders local base models may come from (a model is a folder holding
    # config.json anywhere below one of them). Unset: {home}/models and the Hugging Face hub cache.
    model_roots: list[Path] | None = Field(
        default=None, description="roots of local base-model folders; default {home}/models and the HF cache"
    )
    # -- base models (`fastuner models`, api/services/models): the local backend has no network by
    # default, so preflight refuses a hub id not on this machine (pulled or in the HF cache).
    local_hub_downloads: bool = Field(
        default=False,
        description="local backend: let the engine download hub models not on this machine (needs network)",
    )
    # Gated hub models (Llama, Mistral, Gemma) need a Hugging Face token. This names the Secrets
    # Manager secret (ARN or name) holding it: the containers read it at start (the token itself is
    # never in a job, an endpoint, an event or an API response). The local backend also passes on
    # HF_TOKEN of the server's environment.
    hf_token_secret: str | None = Field(
        default=None,
        description="Secrets Manager secret (ARN or name) holding the Hugging Face token for gated models",
    )
    reconcile_interval_seconds: Annotated[float, Field(gt=0)] = 5.0
    janitor_interval_seconds: Annotated[float, Field(gt=0)] = 30.0
    orphan_grace_seconds: Annotated[int, Field(ge=0)] = 900
    # The sweep (api.services.sweep): scratch of dead processes in {home}/work, partial writes in the
    # store, and dataset/adapter objects with no row, once nothing in them changed for the grace.
    sweep_interval_seconds: Annotated[float, Field(gt=0)] = 600.0
    sweep_grace_seconds: Annotated[float, Field(ge=0)] = Field(
        default=3600.0, description="keep longer than one dataset/adapter upload to the store takes"
    )
    launch_grace_seconds: Annotated[float, Field(ge=0)] = Field(
        default=300.0,
        description="a `launching` job whose launcher cannot be seen alive is resolved (relaunched or "
        "failed) after this; a launcher known dead on this host is resolved at once",
    )
    launch_retries: Annotated[int, Field(ge=0, le=20)] = Field(
        default=3,
        description="retries of a transient launch error (throttling, 5xx, connection) with backoff",
    )
    launch_retry_wait_seconds: Annotated[float, Field(ge=0)] = Field(
        default=1.0, description="first backoff of a launch retry; grows exponentially (capped at 30 s)"
    )
    default_inference_instance_type: str = "ml.g5.xlarge"
    # -- SageMaker deployments: `endpoint` = one container per endpoint (the inference server loads
    # adapters from S3 per request); `components` = inference components: the base model as one
    # component, each adapter as a component on it (api/backends/sagemaker_components.py).
    sagemaker_deployment_mode: Literal["endpoint", "components"] = Field(
        default="endpoint", description="how deployments are hosted on SageMaker (endpoint or components)"
    )
    sagemaker_base_model_artifacts: dict[str, str] = Field(
        default_factory=dict,
        description="components mode: hub id -> s3://…/model.tar.gz of the base model (served from "
        '/opt/ml/model, not pulled from the hub), e.g. {"HuggingFaceTB/SmolLM2-135M": "s3://b/m.tar.gz"}',
    )
    inference_component_memory_mb: Annotated[int, Field(ge=128)] = Field(
        default=8192, description="components mode: host memory the base component reserves"
    )
    inference_component_cpu_cores: Annotated[float, Field(gt=0)] = Field(
        default=2.0, description="components mode: CPU cores the base component reserves"
    )
    inference_component_delete_wait_seconds: Annotated[float, Field(ge=0)] = Field(
        default=120.0,
        description="components mode: how long one teardown waits for components to drain before "
        "leaving the rest to the janitor's next pass",
    )
    auto_migrate: bool = Field(default=True, description="run `alembic upgrade head` when the app starts")
    background_tasks: bool = Field(default=True, description="run the reconciler loop in the API process")
    # -- S3 drop-and-train: `drop/{tenant}/<name>.jsonl` → dataset → job (`fastuner worker`)
    drop_queue_url: str | None = Field(default=None, description="SQS queue of the bucket's drop events")
    drop_queue_wait_seconds: Annotated[int, Field(ge=0, le=20)] = 20
    drop_scan: bool = Field(default=False, description="also run the drop scanner in the API process")
    drop_scan_interval_seconds: Annotated[float, Field(gt=0)] = 30.0
    drop_settle_seconds: Annotated[float, Field(ge=0)] = Field(
        default=2.0, description="local store: a dropped file counts once unchanged this long"
    )
    drop_default_base_model: str | None = Field(default=None, description="when the sidecar names none")
    drop_lease_seconds: Annotated[int, Field(gt=0)] = Field(
        default=900, description="a crashed worker's drop is taken over after this (keep > one drop's work)"
    )
    drop_retry_seconds: Annotated[float, Field(gt=0)] = Field(
        default=60.0, description="first retry delay of a pending drop (quota, transient error); doubles"
    )
    drop_max_attempts: Annotated[int, Field(ge=1)] = 10
    # Local backend: the Python that runs the training/inference entrypoints.
    local_python: str | None = None

    # -- auth and tenancy: every request needs `Authorization: Bearer <key>`; only key hashes are
    # stored (`fastuner admin create-key`). On a fresh install the API issues one key for
    # `default_tenant` and writes it to {home}/api_key (0600), where the CLI finds it.
    bootstrap_api_key: bool = Field(default=True, description="issue a local key on a fresh install")
    default_tenant: str = Field(default="default", pattern=TENANT_PATTERN)
    # -- the web console (api/console): its session cookies and CSRF tokens are signed with this
    # secret; unset, a random one is kept in {home}/console_secret (0600). Servers behind one load
    # balancer must share it.
    console_secret: str | None = Field(default=None, repr=False, min_length=16)
    console_session_hours: Annotated[float, Field(gt=0, le=24 * 30)] = 12.0
    # Quotas a tenant gets unless an admin overrides them (`fastuner admin set-quota`).
    default_max_concurrent_jobs: Annotated[int, Field(ge=0)] = 8
    default_max_endpoints: Annotated[int, Field(ge=0)] = 4
    default_allowed_instance_types: list[str] | None = Field(
        default=None, description="fnmatch patterns (ml.g5.*); unset: any known instance type"
    )

    max_upload_bytes: Annotated[int, Field(gt=0)] = 2 * 1024**3
    # -- HTTP hardening (api/middleware.py, api/ratelimit.py, api/server.py). Upload routes
    # (multipart: dataset upload/validate, batch inference) take up to max_upload_bytes; every
    # other route up to max_json_body_bytes.
    max_json_body_bytes: Annotated[int, Field(gt=0)] = Field(
        default=1024**2, description="body cap of every route that is not an upload route"
    )
    header_timeout_seconds: Annotated[float, Field(gt=0)] = Field(
        default=10.0, description="a request's line and headers must arrive within this (else 408, closed)"
    )
    body_timeout_seconds: Annotated[float, Field(gt=0)] = Field(
        default=60.0,
        description="longest wait for the next chunk of a request body; a non-upload body must "
        "arrive whole within it (else 408, closed)",
    )
    rate_limit: str = Field(
        default="20/second;600/minute",
        description="per-tenant request rate (`limits` notation, `;`-separated); empty: unlimited",
    )
    rate_limits: dict[str, str] = Field(
        default_factory=dict, description='per-tenant overrides of rate_limit, e.g. {"acme": "50/second"}'
    )
    rate_limit_storage_uri: str = Field(
        default="memory://", description="`limits` storage (memory:// per process; redis://… shared)"
    )
    limits: ValidationLimits = ValidationLimits()
    log_level: str = "INFO"
    log_json: bool = True

    @model_validator(mode="after")
    def _check(self) -> Settings:
        from limits import parse_many  # the rate strings fail at start-up, not on the first request

        rates = {
            "rate_limit": self.rate_limit,
            **{f"rate_limits[{t}]": r for t, r in self.rate_limits.items()},
        }
        for name, rate in rates.items():
            try:
                parse_many(rate.strip() or "1/second")  # "" (no limit) is fine
            except ValueError as exc:
                raise ValueError(f"{name}: not a rate limit ({exc})") from None
        if self.store == "s3" and not self.s3_bucket:
            raise ValueError("FASTUNER_S3_BUCKET is required when FASTUNER_STORE=s3")
        from api.backends.registry import lookup  # the backends import this module

        backend = lookup(self.backend)  # an unknown name fails at start-up, naming the registered ones
        if backend.store is not None and self.store != backend.store:
            raise ValueError(
                f"FASTUNER_BACKEND={self.backend} needs FASTUNER_STORE={backend.store}{backend.store_reason}"
            )
        return self

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.home.expanduser() / 'fastuner.db'}"

    @property
    def resolved_store_root(self) -> Path:
        return (self.store_root or self.home / "store").expanduser()

    @property
    def resolved_model_roots(self) -> list[Path]:
        """Where local base models may live (resolved; see ``model_roots``)."""
        if self.model_roots is not None:
            roots = list(self.model_roots)
        else:
            hub_cache = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
            hf_home = Path(os.environ.get("HF_HOME") or "~/.cache/huggingface").expanduser()
            roots = [self.home / "models", Path(hub_cache) if hub_cache else hf_home / "hub"]
        return [root.expanduser().resolve() for root in roots]

    @property
    def api_key_file(self) -> Path:
        """Where the bootstrap key of the embedded default is kept (read by the CLI)."""
        return self.home.expanduser() / "api_key"

    @property
    def models_dir(self) -> Path:
        """Where `fastuner models pull` puts models ({home}/models, a default model root)."""
        return self.home.expanduser() / "models"

    @property
    def work_dir(self) -> Path:
        """Scratch space for uploads and local compute."""
        return self.home.expanduser() / "work"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
