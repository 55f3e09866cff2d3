"""Checks before any compute is spent: dataset, model, method vs instance, hyperparameters, memory."""

from __future__ import annotations

import fnmatch
import importlib.util
from dataclasses import dataclass
from pathlib import Path

from scu.hyperparams import HyperparameterError, parse_hyperparameters

from api.domain.datasets import Dataset, Manifest
from api.domain.enums import DatasetStatus, TuneMethod
from api.domain.errors import BadRequest, Conflict
from api.domain.finetune import CostEstimate, FineTuneRequest
from api.domain.instances import INSTANCE_TYPES, InstanceType, lookup
from api.services.finetune.estimate import estimate, model_facts
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


def check_model_allowed(base_model: str, settings: Settings) -> None:
    if settings.backend == "local" and (Path(base_model).expanduser() / "config.json").is_file():
        return
    if any(fnmatch.fnmatchcase(base_model, pat) for pat in settings.allowed_models):
        return
    hint = " or a local model folder" if settings.backend == "local" else ""
    raise BadRequest(
        f"base model {base_model!r} is not allowed; allowed: {', '.join(settings.allowed_models)}{hint} "
        "(FASTUNER_ALLOWED_MODELS)"
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


def _local_cuda() -> bool:
    if importlib.util.find_spec("torch") is None:
        return False
    import torch

    return bool(torch.cuda.is_available())


def run(req: FineTuneRequest, dataset: Dataset, manifest: Manifest, settings: Settings) -> Preflight:
    if dataset.status != DatasetStatus.READY:
        raise Conflict(f"dataset {dataset.id} is {dataset.status.value}, not ready")
    if dataset.row_counts.get("train", 0) == 0:
        raise BadRequest(f"dataset {dataset.id} has no training rows")
    check_model_allowed(req.base_model, settings)
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
        raise BadRequest(str(exc)) from exc
    report = manifest.report
    tokens = None
    if report.token_length is not None:
        tokens = int(report.token_length.mean * dataset.row_counts.get("train", 0))
    epochs = cfg.epochs
    if cfg.max_steps is None and epochs is None:
        warnings.append("epochs chosen by the engine's smart defaults; runtime estimated for 3 epochs")
    est = estimate(
        instance=instance,
        instance_count=req.instance_count,
        spot=req.spot,
        method=req.method.value,
        facts=model_facts(req.base_model),
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
    if "validation" not in dataset.row_counts:
        warnings.append(
            "the dataset has no validation split: the engine holds out part of train for evaluation"
        )
    return Preflight(stringify(hp), instance, est, warnings)
