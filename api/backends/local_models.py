"""Where the local backend finds base models on this machine, by hub id (no network, no imports of
huggingface_hub or transformers).

A hub id is on this machine when it was pulled (``fastuner models pull``: ``{home}/models/<org>--<name>``
holding ``fastuner_model.json``) or is a complete snapshot in the Hugging Face hub cache
(``models--<org>--<name>/snapshots/<revision>`` with a config and weights). The local backend
launches the training and inference entrypoints with that folder instead of the hub id, so nothing
is downloaded; the job and the adapter still say the hub id.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

MARKER = "fastuner_model.json"  # written last into a pulled folder: {"hub_id", "source", "pulled_at"}
WEIGHT_SUFFIXES = (".safetensors", ".bin")

Where = Literal["pulled", "hf_cache"]


def safe_name(hub_id: str) -> str:
    """The folder name of a pulled hub id: ``org/name`` → ``org--name`` (hub ids hold no ``--`` pair
    that matters here: only ``[A-Za-z0-9_.-]`` segments reach this, checked by the allow-list)."""
    return hub_id.replace("/", "--")


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache, as huggingface_hub resolves it (HF_HUB_CACHE, HF_HOME, default)."""
    explicit = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    return Path(os.environ.get("HF_HOME") or "~/.cache/huggingface").expanduser() / "hub"


def has_weights(folder: Path) -> bool:
    try:
        return any(p.name.endswith(WEIGHT_SUFFIXES) for p in folder.iterdir())
    except OSError:
        return False


def complete(folder: Path) -> bool:
    """A folder transformers can load a causal LM from: a config.json and weight files."""
    return (folder / "config.json").is_file() and has_weights(folder)


def pulled_dir(models_dir: Path, hub_id: str) -> Path | None:
    """The pulled folder of ``hub_id`` under ``models_dir`` if the pull finished (marker written)."""
    folder = models_dir / safe_name(hub_id)
    return folder if (folder / MARKER).is_file() and complete(folder) else None


def hf_cache_snapshot(hub_id: str, cache: Path | None = None) -> Path | None:
    """The hub cache snapshot of ``hub_id`` (the revision ``refs/main`` names, else the newest complete
    one), or None when the cache holds no complete snapshot of it."""
    repo = (cache or hub_cache_dir()) / ("models--" + hub_id.replace("/", "--"))
    snapshots = repo / "snapshots"
    if not snapshots.is_dir():
        return None
    try:
        main = (repo / "refs" / "main").read_text().strip()
    except OSError:
        main = ""
    if main and complete(snapshots / main):
        return snapshots / main
    try:
        found = [p for p in snapshots.iterdir() if p.is_dir() and complete(p)]
    except OSError:
        return None
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def pulled_hub_id(folder: Path) -> str | None:
    """The hub id a pulled folder was pulled as (from its marker), or None."""
    try:
        data = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return None
    hub_id = data.get("hub_id") if isinstance(data, dict) else None
    return hub_id if isinstance(hub_id, str) else None


@dataclass(frozen=True)
class LocalModels:
    """The local backend's view of base models: ``models_dir`` (``{home}/models``) and the hub cache.

    ``offline``: the local backend never downloads from the hub (the default: preflight refuses a hub
    id that is not on this machine instead of failing in the job).
    """

    models_dir: Path
    offline: bool = True

    @property
    def access(self) -> Literal["offline", "hub"]:
        return "offline" if self.offline else "hub"

    def find(self, hub_id: str) -> tuple[Path, Where] | None:
        pulled = pulled_dir(self.models_dir, hub_id)
        if pulled is not None:
            return pulled, "pulled"
        cached = hf_cache_snapshot(hub_id)
        if cached is not None:
            return cached, "hf_cache"
        return None

    def resolve(self, name: str) -> str:
        """What the entrypoints load for ``name``: the folder a hub id is on this machine as, else
        ``name`` itself (a folder path, or a hub id left for the hub when downloads are allowed)."""
        if name.startswith(("/", "~")):
            return name
        found = self.find(name)
        return str(found[0]) if found is not None else name
