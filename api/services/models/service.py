"""Base models as a first-class thing: list, show and (where jobs run on this machine) pull.

The list holds the allow-listed hub ids of the static catalog, the allow-listed hub ids on this
machine (pulled, or in the Hugging Face cache) and, where jobs run on this machine, the folders under
the model roots. Each says whether the configured backend can get it (see
:mod:`api.services.models.availability`).
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Generator
from pathlib import Path
from typing import Any

from api.backends.local_models import MARKER, complete, hf_cache_snapshot, hub_cache_dir, pulled_hub_id
from api.backends.registry import capabilities
from api.domain.catalog import BaseModelInfo, PullProgress, PullResult
from api.domain.errors import BadRequest, NotFound
from api.logging import get_logger
from api.services.finetune.preflight import check_model_allowed, hub_id_allowed
from api.services.models import availability
from api.services.models.availability import local_models
from api.services.models.catalog import CATALOG, gated
from api.services.models.facts import folder_facts
from api.services.models.pull import check as pull_check
from api.services.models.pull import offline_gguf, pull
from api.settings import Settings

log = get_logger("models")
MAX_FOLDERS = 200  # model folders listed per root
SCAN_DEPTH = 4  # how deep below a root a model folder is looked for


class ModelService:
    def __init__(self, settings: Settings, backend: Any) -> None:
        self.settings = settings
        self.backend = backend
        self._pull_locks: dict[str, threading.Lock] = {}
        self._locks_lock = threading.Lock()

    @property
    def access(self) -> availability.Access:
        return availability.backend_access(self.backend)

    @property
    def host_files(self) -> bool:
        """The backend's jobs run on this machine: models on disk here are listed and pulled."""
        return capabilities(self.settings).host_files

    # -- read ---------------------------------------------------------------------------------
    def list_models(self) -> list[BaseModelInfo]:
        allowed = self.settings.allowed_models
        hub_ids = {h for h in CATALOG if hub_id_allowed(h, allowed)}
        folders: list[Path] = []
        if self.host_files:
            hub_ids |= {h for h in self._hub_ids_on_disk() if hub_id_allowed(h, allowed)}
            folders = self._folders()
        out = sorted(
            (self.hub_info(h) for h in hub_ids),
            key=lambda m: (m.id.split("/")[0].lower(), m.parameters or 0, m.id),
        )
        return out + [self.folder_info(f) for f in folders]

    def get_model(self, model_id: str) -> BaseModelInfo:
        try:
            folder = check_model_allowed(model_id, self.settings)
        except BadRequest:
            raise NotFound(f"no base model {model_id!r} (not allowed here, or no such folder)") from None
        return self.folder_info(folder) if folder is not None else self.hub_info(model_id)

    def hub_info(self, hub_id: str) -> BaseModelInfo:
        verdict = availability.judge_hub(hub_id, self.settings, self.access)
        entry = CATALOG.get(hub_id)
        facts: dict[str, Any]
        if verdict.folder is not None:
            found = folder_facts(verdict.folder)
            facts = {
                "parameters": found.parameters,
                "context_length": found.context_length,
                "chat_template": found.chat_template,
                "facts_source": "config",
            }
        elif entry is not None:
            facts = {
                "parameters": entry.parameters,
                "context_length": entry.context_length,
                "chat_template": entry.chat_template,
                "facts_source": "static catalog",
            }
        else:
            facts = {"facts_source": "unknown"}
        return BaseModelInfo(
            id=hub_id,
            kind="hub",
            gated=gated(hub_id),
            on_disk=verdict.on_disk,
            pullable=self.host_files and offline_gguf(hub_id) is not None,
            backend=self.settings.backend,
            available=verdict.available,
            reason=verdict.reason,
            **facts,
        )

    def folder_info(self, folder: Path) -> BaseModelInfo:
        found = folder_facts(folder)
        return BaseModelInfo(
            id=str(folder),
            kind="folder",
            parameters=found.parameters,
            context_length=found.context_length,
            chat_template=found.chat_template,
            gated=False,
            facts_source="config",
            on_disk="folder",
            backend=self.settings.backend,
            available=True,
            reason="a model folder on this machine (under FASTUNER_MODEL_ROOTS)",
        )

    def on_hand(self) -> list[tuple[str, Path]]:
        """The models on this machine the backend's jobs can load, as (id, folder): allowed hub ids
        pulled or in the Hugging Face cache (listed by hub id, not by their folder) and the model
        folders under the model roots. Empty for a backend whose jobs do not run here."""
        if not self.host_files:
            return []
        models = local_models(self.settings)
        out: list[tuple[str, Path]] = []
        for hub_id in sorted(self._hub_ids_on_disk()):
            found = models.find(hub_id) if hub_id_allowed(hub_id, self.settings.allowed_models) else None
            if found is not None:
                out.append((hub_id, found[0]))
        return out + [(str(folder), folder) for folder in self._folders()]

    def _hub_ids_on_disk(self) -> set[str]:
        found: set[str] = set()
        models = self.settings.models_dir
        if models.is_dir():
            for child in sorted(models.iterdir())[:MAX_FOLDERS]:
                hub_id = pulled_hub_id(child) if (child / MARKER).is_file() else None
                if hub_id is not None and complete(child):
                    found.add(hub_id)
        cache = hub_cache_dir()
        if cache.is_dir():
            for child in sorted(cache.glob("models--*"))[:MAX_FOLDERS]:
                hub_id = "/".join(child.name[len("models--") :].split("--"))
                if hub_cache_ok(hub_id) and hf_cache_snapshot(hub_id, cache) is not None:
                    found.add(hub_id)
        return found

    def _folders(self) -> list[Path]:
        """Model folders under the model roots that are not a hub id on disk (listed by hub id)."""
        out: list[Path] = []
        cache = hub_cache_dir().expanduser().resolve()
        for root in self.settings.resolved_model_roots:
            if not root.is_dir() or root == cache:
                continue
            depth = len(root.parts)
            for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
                here = Path(dirpath)
                dirnames[:] = sorted(d for d in dirnames if not d.startswith((".", "models--")))
                if "config.json" in filenames:
                    dirnames[:] = []
                    if MARKER not in filenames and check_folder(str(here), self.settings):
                        out.append(here)
                elif len(here.parts) - depth >= SCAN_DEPTH:
                    dirnames[:] = []
                if len(out) >= MAX_FOLDERS:
                    break
        return sorted(set(out))

    # -- pull ---------------------------------------------------------------------------------
    def check_pull(self, hub_id: str) -> None:
        """Refusals before a pull starts (an HTTP error rather than an event of a stream)."""
        if check_model_allowed(hub_id, self.settings) is not None:
            raise BadRequest(f"{hub_id} is a model folder already on this machine; nothing to pull")
        if self.host_files:
            pull_check(hub_id, self.settings.models_dir)

    def pull(self, hub_id: str, progress: Any = None) -> PullResult:
        self.check_pull(hub_id)
        if not self.host_files:  # its jobs download hub models themselves
            source = f"nothing to pull: the {self.settings.backend} backend downloads hub models in the job"
            return PullResult(model=self.hub_info(hub_id), pulled=False, source=source)
        with self._lock_for(hub_id):  # one pull of a model at a time in this process
            folder, pulled, source = pull(hub_id, self.settings.models_dir, progress or (lambda _: None))
        log.info("pull finished", extra={"hub_id": hub_id, "pulled": pulled, "folder": str(folder)})
        return PullResult(model=self.hub_info(hub_id), pulled=pulled, source=source)

    def pull_stream(self, hub_id: str) -> Generator[PullProgress | PullResult]:
        """The pull's progress events then its result, the pull running in a thread. Refusals raise
        before the first item."""
        self.check_pull(hub_id)
        events: queue.Queue[PullProgress | PullResult | BaseException] = queue.Queue()

        def work() -> None:
            try:
                events.put(self.pull(hub_id, events.put))
            except BaseException as exc:
                events.put(exc)

        threading.Thread(target=work, name=f"pull-{hub_id}", daemon=True).start()
        while True:
            item = events.get()
            if isinstance(item, BaseException):
                raise item
            yield item
            if isinstance(item, PullResult):
                return

    def _lock_for(self, hub_id: str) -> threading.Lock:
        with self._locks_lock:
            return self._pull_locks.setdefault(hub_id, threading.Lock())


def hub_cache_ok(hub_id: str) -> bool:
    parts = hub_id.split("/")
    return len(parts) == 2 and all(parts)


def check_folder(path: str, settings: Settings) -> bool:
    try:
        return check_model_allowed(path, settings) is not None
    except BadRequest:
        return False
