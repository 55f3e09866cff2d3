"""Preflight estimates: parameter count, GPU memory, runtime and cost. Estimates, not promises.

The parameter count is read from the model's ``config.json`` (a local folder) or the static model
catalog (``api.services.models.catalog``); it is computed with the standard decoder formula (embeddings, attention with
grouped KV heads, gated MLP, untied head), which is within a few percent for Llama-style models.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from api.backends.capabilities import Capabilities
from api.domain.finetune import CostEstimate
from api.domain.instances import InstanceType
from api.services.models.catalog import CATALOG

# Fraction of peak FLOP/s a LoRA fine-tune typically reaches, and FLOPs per token per parameter
# (forward 2N, backward through activations 2N; frozen weights need no weight gradients).
MFU: Final = 0.3
FLOPS_PER_TOKEN_PER_PARAM: Final = 4.0
OVERHEAD_GB: Final = 1.5


@dataclass(frozen=True)
class ModelFacts:
    n_params: int
    hidden: int | None = None
    layers: int | None = None


def params_from_config(cfg: dict[str, Any]) -> ModelFacts | None:
    try:
        vocab = int(cfg["vocab_size"])
        hidden = int(cfg.get("hidden_size") or cfg["n_embd"])
        layers = int(cfg.get("num_hidden_layers") or cfg["n_layer"])
    except (KeyError, TypeError, ValueError):
        return None
    heads = int(cfg.get("num_attention_heads") or cfg.get("n_head") or 1)
    kv_heads = int(cfg.get("num_key_value_heads") or heads)
    head_dim = int(cfg.get("head_dim") or hidden // max(heads, 1))
    inter = int(cfg.get("intermediate_size") or cfg.get("n_inner") or 4 * hidden)
    attn = hidden * heads * head_dim * 2 + hidden * kv_heads * head_dim * 2
    mlp = 3 * hidden * inter
    per_layer = attn + mlp + 2 * hidden
    embed = vocab * hidden
    head = 0 if cfg.get("tie_word_embeddings", True) else vocab * hidden
    return ModelFacts(embed + head + layers * per_layer + hidden, hidden, layers)


def model_facts(base_model: str, local_dir: Path | None = None) -> ModelFacts | None:
    """From ``local_dir``'s config.json (a folder preflight has allowed) or the table of hub ids;
    ``base_model`` itself is never read as a path."""
    if local_dir is not None:
        try:
            config = json.loads((local_dir / "config.json").read_text())
        except (OSError, ValueError, RecursionError):
            return None
        return params_from_config(config) if isinstance(config, dict) else None
    entry = CATALOG.get(base_model)
    return ModelFacts(entry.parameters) if entry else None


def gpu_memory_gb(n_params: int, method: str) -> float:
    """Frozen weights (bf16, or ~4.5 bits for QLoRA) + adapter/optimizer/activations headroom."""
    bytes_per_param = 0.56 if method == "qlora" else 2.0
    weights = n_params * bytes_per_param / 1e9
    return round(weights * 1.2 + OVERHEAD_GB, 1)


def estimate(
    *,
    capabilities: Capabilities,
    instance: InstanceType,
    instance_count: int,
    spot: bool,
    method: str,
    facts: ModelFacts | None,
    train_tokens: int | None,
    epochs: float | None,
) -> CostEstimate:
    """Memory, runtime and cost of a run on ``instance`` of the backend with ``capabilities``."""
    notes: list[str] = []
    factor = capabilities.spot_price_factor
    hourly = instance.hourly_usd * instance_count * (factor if spot else 1.0)
    if spot:
        notes.append(f"spot priced at {factor:.0%} of on-demand (typical; varies)")
    n_params = facts.n_params if facts else None
    runtime: int | None = None
    need: float | None = None
    if n_params is None:
        notes.append("unknown model size: no memory or runtime estimate")
    else:
        need = gpu_memory_gb(n_params, method) if instance.has_gpu else None
        if train_tokens:
            passes = epochs if epochs is not None else 3.0
            devices = max(instance.gpus, 1) * instance_count
            per_s = instance.peak_tflops * 1e12 * MFU * devices / (FLOPS_PER_TOKEN_PER_PARAM * n_params)
            startup = capabilities.startup_seconds
            runtime = math.ceil(train_tokens * passes / per_s) + startup
            notes.append(f"runtime includes ~{startup} s of start-up (process/instance, model load)")
    cost = round(hourly * runtime / 3600, 4) if runtime is not None else None
    return CostEstimate(
        instance_type=instance.name,
        instance_count=instance_count,
        spot=spot,
        hourly_usd=round(hourly, 4),
        n_params=n_params,
        train_tokens=train_tokens,
        expected_runtime_seconds=runtime,
        estimated_cost_usd=cost,
        gpu_memory_needed_gb=need,
        gpu_memory_available_gb=instance.gpu_memory_gb if instance.has_gpu else None,
        notes=notes,
    )
