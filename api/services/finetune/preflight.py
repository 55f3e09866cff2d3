"""Checks before any compute is spent: dataset, model, method vs instance, hyperparameters, memory."""

from __future__ import annotations

import fnmatch
import importlib.util
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scu.hyperparams import HyperparameterError, parse_hyperparameters

from api.backends import registry
from api.backends.registry import capabilities
from api.domain.datasets import Dataset, Manifest
from api.domain.enums import DatasetStatus, TuneMethod
from api.domain.errors import BadRequest, Conflict
from api.domain.finetune import CostEstimate, FineTuneRequest, InvalidHyperparameters
from api.domain.instances import InstanceType
from api.services.finetune.estimate import estimate, model_facts
from api.services.models import availability
from api.settings import Settings


@dataclass(frozen=True)
class Preflight:
    hyperparameters: dict[str, str]
    instance: InstanceType
    estimate: CostEstimate
    warnings: list[str]


def stringify(values: dict[str, str | int | float | bool]) -> dict[str, str]:
    """Hyperparameters as SageMaker passes them: every value a string."""
    return {k: (str(v).lower() if isinstance(v, bool) else str(v)) for k, v in values.items()}


_HUB_SEGMENT = re.compile(r"^[A-Za-z0-9_.-]+$")


def hub_id_allowed(name: str, patterns: list[str]) -> bool:
    """Whether hub id ``name`` matches one of ``patterns`` segment by segment: as many ``/``-separated
    segments as the pattern, each matched by fnmatch on its own (so ``*`` never crosses a ``/``), and
    no empty, ``.`` or ``..`` segment (``meta-llama/../../../etc`` matches nothing)."""
    parts = name.split("/")
    if any(p in (".", "..") or not _HUB_SEGMENT.match(p) for p in parts):
        return False
    for pattern in patterns:
        pieces = pattern.split("/")
        if len(pieces) == len(parts) and all(
            fnmatch.fnmatchcase(part, piece) for part, piece in zip(parts, pieces, strict=True)
        ):
            return True
    return False


def local_model_dir(name: str, roots: list[Path]) -> Path | None:
    """The model folder ``name`` names if it lies under one of ``roots`` (resolved: no ``..``, no
    link out of the root) and holds a ``config.json`` that does too; else None. Only absolute paths
    (or ``~``) count as folders."""
    if "\x00" in name or not name.startswith(("/", "~")):
        return None
    raw = Path(name).expanduser()
    if not raw.is_absolute() or ".." in raw.parts:
        return None
    try:
        path = raw.resolve()
        config = (path / "config.json").resolve()
        if not any(path.is_relative_to(r) and config.is_relative_to(r) for r in roots):
            return None
        return path if config.is_file() else None
    except (OSError, RuntimeError, ValueError):
        return None


def host_files(settings: Settings) -> bool:
    """Whether the configured backend's jobs run on this machine and read its model folders."""
    return capabilities(settings).host_files


def check_model_allowed(base_model: str, settings: Settings) -> Path | None:
    """Refuse a base model from anywhere but the allow-list or (a backend whose jobs run on this
    machine) the model roots.

    Returns the local model folder, or None for a hub id. The error is the same whether a refused
    path exists or not, so it tells nothing about the server's files."""
    if hub_id_allowed(base_model, settings.allowed_models):
        return None
    on_host = host_files(settings)
    if on_host:
        found = local_model_dir(base_model, settings.resolved_model_roots)
        if found is not None:
            return found
    hint = " or a model folder (with config.json) under FASTUNER_MODEL_ROOTS" if on_host else ""
    raise BadRequest(
        f"base model {base_model!r} is not allowed; allowed: hub ids matching "
        f"{', '.join(settings.allowed_models)} (FASTUNER_ALLOWED_MODELS){hint}"
    )


def resolve_instance(req: FineTuneRequest, settings: Settings) -> InstanceType:
    """The instance type the job runs on: the request's or the backend's default, from the
    backend's catalogue, with only the features (several nodes, spot) the backend offers."""
    caps = capabilities(settings)
    name = req.instance_type or caps.default_instance
    instance = caps.instance(name)
    if instance is None:
        raise BadRequest(unknown_instance(name, settings))
    missing = [
        what
        for what, offered in (("instance_count > 1", caps.multi_node), ("spot", caps.spot))
        if not offered
    ]
    if missing and ((req.instance_count > 1 and not caps.multi_node) or (req.spot and not caps.spot)):
        raise BadRequest(f"the {settings.backend} backend {caps.summary}: no {' or '.join(missing)}")
    return instance


def unknown_instance(name: str, settings: Settings) -> str:
    """Why ``name`` is not an instance type of the configured backend, and what is."""
    caps = capabilities(settings)
    if caps.on_host_only:
        must = " or ".join(repr(n) for n in caps.instances)
        return (
            f"the {settings.backend} backend runs on this machine; instance_type must be {must}, not {name!r}"
        )
    other = registry.offering(name, settings)
    if other is not None:
        return f"instance_type {name!r} needs FASTUNER_BACKEND={other}"
    return f"unknown instance type {name!r}; known: {', '.join(caps.instances)}"


def check_processes(num_processes: int | None, instance: InstanceType) -> None:
    """``num_processes`` (training processes per node) at most the node's GPUs, or on this machine
    (an ``on_host`` instance) its GPUs (when it has CUDA) or else its CPU cores."""
    if num_processes is None or num_processes == 1:
        return
    if instance.on_host:
        gpus = _local_gpus()
        limit = gpus or os.cpu_count() or 1
        what, where = (f"{gpus} GPU(s)" if gpus else f"{limit} CPU cores"), "this host"
    else:
        limit, where = max(instance.gpus, 1), instance.name
        what = f"{instance.gpus} GPU(s)" if instance.has_gpu else "no GPU"
    if num_processes > limit:
        raise InvalidHyperparameters(
            f"Invalid hyperparameters: num_processes={num_processes} is more than {where} can run "
            f"({what}); set num_processes to at most {limit}, or leave it unset (one per GPU)"
        )


def check_method(method: TuneMethod, instance: InstanceType, settings: Settings) -> None:
    """QLoRA only where the backend offers it, on an instance with a GPU."""
    if method != TuneMethod.QLORA:
        return
    caps = capabilities(settings)
    if not caps.qlora:
        raise BadRequest(f"the {settings.backend} backend cannot run QLoRA; use method lora")
    if instance.has_gpu or (instance.on_host and _local_cuda()):
        return
    default = caps.instance(caps.default_instance)
    gpu = default if default is not None and default.has_gpu else None
    gpu = gpu or next((i for i in caps.instances.values() if i.has_gpu), None)
    example = f" (e.g. {gpu.name})" if gpu is not None else ""
    raise BadRequest(
        f"QLoRA needs a GPU and {instance.name} has none; use method lora or a GPU instance type{example}"
    )


def _local_gpus() -> int:
    if not _local_cuda():
        return 0
    import torch

    return int(torch.cuda.device_count())


def _local_cuda() -> bool:
    if importlib.util.find_spec("torch") is None:
        return False
    import torch

    return bool(torch.cuda.is_available())


def run(
    req: FineTuneRequest, dataset: Dataset, manifest: Manifest, settings: Settings, backend: Any = None
) -> Preflight:
    """Every check before compute; ``backend``: the compute backend, asked how it gets hub models
    (``model_access``; see :mod:`api.services.models.availability`)."""
    check_dataset(dataset)
    local_dir = check_model_allowed(req.base_model, settings)
    instance = resolve_instance(req, settings)
    check_method(req.method, instance, settings)
    hp = req.engine_hyperparameters()
    try:
        cfg = parse_hyperparameters(stringify(hp))
    except HyperparameterError as exc:
        raise InvalidHyperparameters(str(exc)) from exc
    check_processes(cfg.num_processes, instance)
    warnings: list[str] = []
    if cfg.max_steps is None and cfg.epochs is None:
        warnings.append("epochs chosen by the engine's smart defaults; runtime estimated for 3 epochs")
    est = estimate(
        capabilities=capabilities(settings),
        instance=instance,
        instance_count=req.instance_count,
        spot=req.spot,
        method=req.method.value,
        facts=model_facts(req.base_model, local_dir or _on_disk(req.base_model, settings)),
        train_tokens=_train_tokens(dataset, manifest),
        epochs=cfg.epochs,
    )
    check_memory(req, instance, est)
    # A model the backend cannot get (not on this machine with no network; gated without a token).
    availability.check_available(req.base_model, local_dir, settings, backend)
    if "validation" not in dataset.row_counts:
        warnings.append(
            "the dataset has no validation split: the engine holds out part of train for evaluation"
        )
    return Preflight(stringify(hp), instance, est, warnings)


def check_dataset(dataset: Dataset) -> None:
    if dataset.status != DatasetStatus.READY:
        raise Conflict(f"dataset {dataset.id} is {dataset.status.value}, not ready")
    if dataset.row_counts.get("train", 0) == 0:
        raise BadRequest(f"dataset {dataset.id} has no training rows")


def check_memory(req: FineTuneRequest, instance: InstanceType, est: CostEstimate) -> None:
    """Refuse a model that does not fit the instance's GPU memory."""
    need, have = est.gpu_memory_needed_gb, est.gpu_memory_available_gb
    if need is not None and have is not None and need > have:
        hint = "" if req.method == TuneMethod.QLORA else " or method qlora"
        raise BadRequest(
            f"{req.base_model} needs about {need} GB of GPU memory but {instance.name} "
            f"has {have} GB per GPU; choose a larger instance type{hint}"
        )


def _train_tokens(dataset: Dataset, manifest: Manifest) -> int | None:
    length = manifest.report.token_length
    return None if length is None else int(length.mean * dataset.row_counts.get("train", 0))


def _on_disk(base_model: str, settings: Settings) -> Path | None:
    """A hub id pulled or cached on this machine (read for its own config), where jobs run here."""
    if not host_files(settings):
        return None
    found = availability.local_models(settings).find(base_model)
    return found[0] if found is not None else None
