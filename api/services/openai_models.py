"""The base models GET /v1/models lists: what is on hand, not what could be pulled."""

from __future__ import annotations

import os
from pathlib import Path

from api.domain.openai import Model
from api.services.finetune import preflight
from api.settings import Settings

MAX_LOCAL_MODELS = 500
MODEL_SCAN_DEPTH = 4
BASE_OWNER = "fastuner"


def base_models(settings: Settings) -> list[Model]:
    """Concrete base models on hand: hub models in the Hugging Face cache that match the
    allow-list, and (backends that read host files) the model folders under the model roots."""
    found: dict[str, int] = {}
    for root in settings.resolved_model_roots:
        for path, created in _model_folders(root):
            hub = _hub_id(path)
            if hub is not None:
                if preflight.hub_id_allowed(hub, settings.allowed_models):
                    found.setdefault(hub, created)
            elif preflight.host_files(settings) and preflight.local_model_dir(str(path), [root]):
                found.setdefault(str(path), created)
            if len(found) >= MAX_LOCAL_MODELS:
                break
    return [Model(id=name, created=created, owned_by=BASE_OWNER) for name, created in sorted(found.items())]


def _model_folders(root: Path) -> list[tuple[Path, int]]:
    """Folders holding a config.json below ``root`` (not following links, a few levels deep)."""
    out: list[tuple[Path, int]] = []
    root = root.expanduser()
    if not root.is_dir():
        return out
    base_depth = len(root.parts)
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        here = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        if "config.json" in filenames:
            try:
                created = int((here / "config.json").stat().st_mtime)
            except OSError:
                created = 0
            out.append((here, created))
            dirnames[:] = []  # a model folder's subfolders are its own
        elif len(here.parts) - base_depth >= MODEL_SCAN_DEPTH:
            dirnames[:] = []
        if len(out) >= MAX_LOCAL_MODELS:
            break
    return out


def _hub_id(path: Path) -> str | None:
    """``org/name`` for a snapshot in the Hugging Face hub cache (``models--org--name/snapshots/…``)."""
    for part in path.parts:
        if part.startswith("models--"):
            pieces = part[len("models--") :].split("--")
            return "/".join(pieces) if all(pieces) else None
    return None
