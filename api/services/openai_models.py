"""The base models GET /v1/models lists: what is on hand, not what could be pulled."""

from __future__ import annotations

from typing import Any

from api.domain.openai import Model
from api.services.models.service import ModelService
from api.settings import Settings

BASE_OWNER = "fastuner"


def base_models(settings: Settings, backend: Any) -> list[Model]:
    """The models on this machine the backend's jobs can load (:meth:`ModelService.on_hand`): a pulled
    or cached hub model by its hub id, a model folder by its path; ``created`` is when its config was
    written."""
    out: list[Model] = []
    for name, folder in ModelService(settings, backend).on_hand():
        try:
            created = int((folder / "config.json").stat().st_mtime)
        except OSError:
            created = 0
        out.append(Model(id=name, created=created, owned_by=BASE_OWNER))
    return out
