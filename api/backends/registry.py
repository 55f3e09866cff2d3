"""The one place backends are registered: a name (``FASTUNER_BACKEND``) → its factories and
capabilities. The built-in ``local`` and ``sagemaker`` are registered by
:mod:`api.backends.factory`; a plug-in (or a test) calls :func:`register` with its own entry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from api.backends.base import ComputeBackend
from api.backends.capabilities import Capabilities
from api.backends.endpoints import EndpointBackend

if TYPE_CHECKING:
    from api.settings import Settings
    from api.storage.base import ObjectStore

TrainingFactory = Callable[["Settings", "ObjectStore"], ComputeBackend]
EndpointFactory = Callable[["Settings", "ObjectStore"], EndpointBackend]


@dataclass(frozen=True)
class BackendEntry:
    name: str
    capabilities: Callable[[Settings], Capabilities]
    training: TrainingFactory
    endpoints: EndpointFactory
    store: str | None = None  # the only object store (FASTUNER_STORE) it works with, if any
    store_reason: str = ""  # why, appended to the refusal: " (SageMaker reads S3)"


class UnknownBackend(ValueError):
    pass


_ENTRIES: dict[str, BackendEntry] = {}


def register(entry: BackendEntry) -> BackendEntry:
    """Add (or replace) the backend named ``entry.name``."""
    _ENTRIES[entry.name] = entry
    return entry


def unregister(name: str) -> None:
    _ENTRIES.pop(name, None)


def names() -> list[str]:
    _builtins()
    return sorted(_ENTRIES)


def lookup(name: str) -> BackendEntry:
    _builtins()
    found = _ENTRIES.get(name)
    if found is None:
        raise UnknownBackend(f"unknown backend {name!r} (FASTUNER_BACKEND); registered: {', '.join(names())}")
    return found


def capabilities(settings: Settings) -> Capabilities:
    """What the configured backend (``settings.backend``) can do."""
    return lookup(settings.backend).capabilities(settings)


def offering(instance_type: str, settings: Settings) -> str | None:
    """Another registered backend whose catalogue has ``instance_type`` (for a helpful refusal)."""
    for name in names():
        if name != settings.backend and instance_type in lookup(name).capabilities(settings).instances:
            return name
    return None


def _builtins() -> None:
    import api.backends.factory  # noqa: F401  (registers local and sagemaker on import)
