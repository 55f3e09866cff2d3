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

from api.domain.datasets import Dataset, Manifest
from api.domain.enums import DatasetStatus, TuneMethod
from api.domain.errors import BadRequest, Conflict
from api.domain.finetune import CostEstimate, FineTuneRequest, InvalidHyperparameters
from api.domain.instances import INSTANCE_TYPES, InstanceType, lookup
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


def check_model_allowed(base_model: str, settings: Settings) -> Path | None:
    """Refuse a base model from anywhere but the allow-list or (local backend) the model roots.

    Returns the local model folder, or None for a hub id. The error is the same whether a refused
    path exists or not, so it tells nothing about the server's files."""
    if hub_id_allowed(base_model, settings.allowed_models):
        return None
    if settings.backend == "local":
        found = local_model_dir(base_model, settings.resolved_model_roots)
        if found is not None:
            return found
    hint = (
        " or a model folder (with config.json) under FASTUNER_MODEL_ROOTS"
        if settings.backend == "local"
        else ""
    )
    raise BadRequest(
        f"base model {base_model!r} is not allowed; allowed: hub ids matching "
        f"{', '.join(settings.allowed_models)} (FASTUNER_ALLOWED_MODELS){hint}"
    )


def resolve_instance(req: FineTuneRequest, settings: Settings) -> InstanceType:
    name = req.instance_type or ("local" if settings.backend == "local" else settings.default_instance_type)
    if settings.backend == "local":
        if name != "local":
            raise BadRequest(
                f"the local backend runs on this machine; instance_type must be 'local', not {name!r}"
            )
        if req.instance_count != 1 or req.spot:
            raise BadRequest(
                "the local backend runs one process on this machine: no instance_count > 1 or spot"
            )
    elif name == "local":
        raise BadRequest("instance_type 'local' needs FASTUNER_BACKEND=local")
    instance = lookup(name)
    if instance is None:
        known = ", ".join(n for n in INSTANCE_TYPES if n != "local")
        raise BadRequest(f"unknown instance type {name!r}; known: {known}")
    return instance


def check_processes(num_processes: int | None, instance: InstanceType) -> None:
    """``num_processes`` (training processes per node) at most the node's GPUs, or on the local
    backend the host's GPUs (when it has CUDA) or else its CPU cores."""
    if num_processes is None or num_processes == 1:
        return
    if instance.name == "local":
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
    if dataset.status != DatasetStatus.READY:
        raise Conflict(f"dataset {dataset.id} is {dataset.status.value}, not ready")
    if dataset.row_counts.get("train", 0) == 0:
        raise BadRequest(f"dataset {dataset.id} has no training rows")
    local_dir = check_model_allowed(req.base_model, settings)
    instance = resolve_instance(req, settings)
    warnings: list[str] = []
    if req.method == TuneMethod.QLORA:
        gpu = instance.has_gpu or (instance.name == "local" and _local_cuda())
        if not gpu:
            raise BadRequest(
                f"QLoRA needs a GPU and {instance.name} has none; use method lora or a GPU instance type "
                "(e.g. ml.g5.xlarge)"
            )
    hp = req.engine_hyperparameters()
    try:
        cfg = parse_hyperparameters(stringify(hp))
    except HyperparameterError as exc:
        raise InvalidHyperparameters(str(exc)) from exc
    check_processes(cfg.num_processes, instance)
    report = manifest.report
    tokens = None
    if report.token_length is not None:
        tokens = int(report.token_length.mean * dataset.row_counts.get("train", 0))
    epochs = cfg.epochs
    on_disk = None
    if local_dir is None and settings.backend == "local":  # a hub id pulled or cached: its own config
        found = availability.local_models(settings).find(req.base_model)
        on_disk = found[0] if found is not None else None
    if cfg.max_steps is None and epochs is None:
        warnings.append("epochs chosen by the engine's smart defaults; runtime estimated for 3 epochs")
    est = estimate(
        instance=instance,
        instance_count=req.instance_count,
        spot=req.spot,
        method=req.method.value,
        facts=model_facts(req.base_model, local_dir or on_disk),
        train_tokens=tokens,
        epochs=epochs,
    )
    if (
        est.gpu_memory_needed_gb is not None
        and est.gpu_memory_available_gb is not None
        and est.gpu_memory_needed_gb > est.gpu_memory_available_gb
    ):
        hint = "" if req.method == TuneMethod.QLORA else " or method qlora"
        raise BadRequest(
            f"{req.base_model} needs about {est.gpu_memory_needed_gb} GB of GPU memory but {instance.name} "
            f"has {est.gpu_memory_available_gb} GB per GPU; choose a larger instance type{hint}"
        )
    # A model the backend cannot get (not on this machine with no network; gated without a token).
    availability.check_available(req.base_model, local_dir, settings, backend)
    if "validation" not in dataset.row_counts:
        warnings.append(
            "the dataset has no validation split: the engine holds out part of train for evaluation"
        )
    return Preflight(stringify(hp), instance, est, warnings)
