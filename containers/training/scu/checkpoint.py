"""Checkpoints under ``checkpoints/step-NNNNNNN/``: the PEFT adapter plus ``trainer_state.pt``
(optimizer, scheduler, controller, RNG, data position, the validation curve and best adapter).
Written to a ``.tmp`` folder and renamed, so a half-written checkpoint (spot interruption
mid-save) is never picked up."""

from __future__ import annotations

import logging
import random
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel, set_peft_model_state_dict
from safetensors.torch import load_file

log = logging.getLogger("scu.checkpoint")

STATE_FILE = "trainer_state.pt"
ADAPTER_FILE = "adapter_model.safetensors"
# Resolved-config keys that must match for a resume to be exact: the model and data (the tokenized
# examples' hash and N), the batch geometry, the optimisation schedule and every SCU setting (the
# saved controller state means nothing under another target, gain, prior or N).
RESUME_KEYS = (
    "base_model",
    "lora_r",
    "lora_alpha",
    "target_modules",
    "batch_size",
    "grad_accum",
    "block_size",
    "packing",
    "train_on_inputs",
    "seed",
    "world_size",
    "data_sha256",
    "train_tokens",
    "train_rows",
    "learning_rate",
    "weight_decay",
    "lr_scheduler",
    "warmup_ratio",
    "max_grad_norm",
    "epochs",
    "max_steps",
    "scu",
    "target_s",
    "lambda_init",
    "lambda_fixed",
    "lambda_min",
    "lambda_max",
    "kp",
    "ki",
    "ema_alpha",
    "deadband",
    "controller_warmup",
    "prior_sigma",
    "penalty",
)


@dataclass
class Position:
    global_step: int = 0
    epoch: int = 0
    batch_idx: int = 0  # next micro-batch index (within this rank's epoch list) to process


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"python": random.getstate(), "torch": torch.random.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    torch.random.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    root: Path,
    model: PeftModel,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    controller_state: dict[str, Any],
    position: Position,
    fingerprint: dict[str, Any],
    keep: int,
    selection_state: dict[str, Any] | None = None,
) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{position.global_step:07d}"
    tmp = root / (final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp))
    torch.save(
        {
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "controller": controller_state,
            "rng": _rng_state(),
            "position": asdict(position),
            "fingerprint": fingerprint,
            "selection": selection_state,
        },
        tmp / STATE_FILE,
    )
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    for old in list_checkpoints(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    log.info("checkpoint saved: %s", final)
    return final


def list_checkpoints(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    found = [
        p
        for p in root.glob("step-*")
        if p.is_dir()
        and not p.name.endswith(".tmp")
        and (p / STATE_FILE).exists()
        and (p / ADAPTER_FILE).exists()
    ]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def latest_checkpoint(root: Path) -> Path | None:
    found = list_checkpoints(root)
    return found[-1] if found else None


class ResumeMismatch(ValueError):
    pass


def load_checkpoint(
    path: Path,
    model: PeftModel,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    fingerprint: dict[str, Any],
) -> tuple[Position, dict[str, Any], dict[str, Any] | None]:
    """Restore adapter weights, optimizer, scheduler and RNG; returns (position, controller state,
    validation selection state or None for checkpoints that predate it)."""
    state = torch.load(path / STATE_FILE, map_location="cpu", weights_only=False)
    saved = state.get("fingerprint", {})
    diffs = [k for k in RESUME_KEYS if k not in saved or saved.get(k) != fingerprint.get(k)]
    if diffs:
        detail = ", ".join(
            f"{k}: {saved[k]!r} -> {fingerprint.get(k)!r}" if k in saved else f"{k}: not recorded"
            for k in diffs
        )
        raise ResumeMismatch(
            f"checkpoint {path.name} was written with different settings ({detail}); "
            "use the same hyperparameters or an empty checkpoint directory"
        )
    weights = load_file(str(path / ADAPTER_FILE))
    result = set_peft_model_state_dict(model, weights)
    unexpected = getattr(result, "unexpected_keys", None)
    if unexpected:
        raise ResumeMismatch(f"checkpoint {path.name} holds unexpected adapter weights: {unexpected[:3]}")
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    _set_rng_state(state["rng"])
    log.info("resumed from %s", path)
    return Position(**state["position"]), state["controller"], state.get("selection")


def fingerprint_of(config: dict[str, Any]) -> dict[str, Any]:
    return {k: config.get(k) for k in RESUME_KEYS}
