"""Whether the chosen compute backend can get a base model, and the preflight check built on it.

A backend declares how it gets hub models through ``model_access`` (a capability, not its name):
``"offline"`` (the local backend by default: only what is on this machine, pulled or in the
Hugging Face cache) or ``"hub"`` (SageMaker, or the local backend with
``FASTUNER_LOCAL_HUB_DOWNLOADS=true``: the job downloads it). A backend declaring nothing is taken
as ``"hub"``. Gated hub models need the token setting wherever they are downloaded.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from api.backends.local_models import LocalModels, Where, hub_cache_dir
from api.backends.registry import capabilities
from api.domain.catalog import ModelUnavailable
from api.services.models.catalog import gated
from api.services.models.pull import pull_hint
from api.settings import Settings

Access = Literal["offline", "hub"]
TOKEN_ENV = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")

TOKEN_FIX = (
    "set FASTUNER_HF_TOKEN_SECRET to a Secrets Manager secret (ARN or name) holding a Hugging Face "
    "token that may read it (accept the model's licence on huggingface.co first); the local backend "
    "also uses HF_TOKEN from the server's environment"
)


def backend_access(backend: Any) -> Access:
    access = getattr(backend, "model_access", "hub")
    return "offline" if access == "offline" else "hub"


def local_models(settings: Settings) -> LocalModels:
    return LocalModels(settings.models_dir, offline=not settings.local_hub_downloads)


def token_configured(settings: Settings) -> bool:
    """A Hugging Face token reaches the backend's containers: the secret setting, or (a backend whose
    jobs run on this machine and inherit the server's environment) HF_TOKEN or a token saved by ``hf auth login``."""
    if settings.hf_token_secret:
        return True
    if not capabilities(settings).host_files:
        return False
    if any(os.environ.get(name) for name in TOKEN_ENV):
        return True
    token_file = os.environ.get("HF_TOKEN_PATH") or str(hub_cache_dir().parent / "token")
    return Path(token_file).expanduser().is_file()


@dataclass(frozen=True)
class Verdict:
    available: bool
    reason: str
    on_disk: Where | None = None
    folder: Path | None = None


def judge_hub(hub_id: str, settings: Settings, access: Access) -> Verdict:
    """Can the backend get hub id ``hub_id`` (already allowed)? With the reason or the fix."""
    if capabilities(settings).host_files:
        found = local_models(settings).find(hub_id)
        if found is not None:
            folder, where = found
            what = "pulled into $FASTUNER_HOME/models" if where == "pulled" else "in the Hugging Face cache"
            return Verdict(True, f"on this machine ({what})", where, folder)
    if access == "offline":
        return Verdict(
            False,
            f"not on this machine, and the {settings.backend} backend does not download: {pull_hint(hub_id)}",
        )
    if gated(hub_id) and not token_configured(settings):
        return Verdict(False, f"gated on the Hugging Face hub and no token is configured: {TOKEN_FIX}")
    how = " with the token from the configured secret" if gated(hub_id) else ""
    return Verdict(True, f"downloaded from the Hugging Face hub by the job{how}")


def check_available(base_model: str, local_dir: Path | None, settings: Settings, backend: Any) -> Path | None:
    """Preflight: refuse (:class:`ModelUnavailable`, 422) a base model the backend cannot get, with the
    fix in the message. ``local_dir``: the folder the allow-list check resolved ``base_model`` to
    (always available). Returns the folder on this machine a hub id will be loaded from, if any."""
    if local_dir is not None:
        return local_dir
    verdict = judge_hub(base_model, settings, backend_access(backend))
    if not verdict.available:
        raise ModelUnavailable(
            f"base model {base_model} is not available to the {settings.backend} backend: {verdict.reason}",
            details={"base_model": base_model, "backend": settings.backend},
        )
    return verdict.folder
