"""Loading the base causal LM and its tokenizer, on the device and dtype the configuration asks for."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import torch
import transformers
from packaging.version import Version
from transformers import AutoModelForCausalLM, AutoTokenizer

from loraserve.config import ServerConfig
from loraserve.store import resolve_base_model

# transformers 4.56 renamed from_pretrained's ``torch_dtype`` to ``dtype`` (5.x warns on the old name).
_DTYPE_KWARG = "dtype" if Version(transformers.__version__).release >= (4, 56) else "torch_dtype"


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    if name != "auto":
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


@dataclass(frozen=True)
class BaseModel:
    """A loaded base model, with what decoding needs to know about it."""

    model: Any  # a transformers PreTrainedModel, in eval mode on its device
    tokenizer: Any  # left-padding, with a pad token
    eos_ids: set[int]
    pad_id: int
    cache_kwarg: str  # the KV cache's keyword: ``past_key_values`` (``cache`` in transformers >= 5.2x)
    context_limit: int | None  # max_position_embeddings, when the config says


def _load_tokenizer(path: str, common: dict[str, Any]) -> Any:
    tokenizer = AutoTokenizer.from_pretrained(path, **common)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    tokenizer.padding_side = "left"
    return tokenizer


def load_base_model(config: ServerConfig, device: torch.device, dtype: torch.dtype) -> BaseModel:
    """Resolve (download if need be) and load the tokenizer and base model."""
    path = resolve_base_model(config.base_model, config.cache_dir / "base")
    common: dict[str, Any] = {
        "local_files_only": config.local_files_only,
        "trust_remote_code": config.trust_remote_code,
    }
    tokenizer = _load_tokenizer(path, common)
    if device.type == "cuda":
        common["device_map"] = str(device)  # load straight onto the GPU (accelerate)
    common[_DTYPE_KWARG] = dtype
    model: Any = AutoModelForCausalLM.from_pretrained(path, **common)
    if device.type != "cuda":
        model.to(device)
    model.eval()
    gen = model.generation_config
    eos = gen.eos_token_id if gen.eos_token_id is not None else tokenizer.eos_token_id
    limit = getattr(model.config, "max_position_embeddings", None)
    return BaseModel(
        model=model,
        tokenizer=tokenizer,
        eos_ids=set(eos if isinstance(eos, list) else [eos]) if eos is not None else set(),
        pad_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0,
        cache_kwarg="cache"
        if "cache" in inspect.signature(type(model).forward).parameters
        else "past_key_values",
        context_limit=int(limit) if isinstance(limit, int) and limit > 0 else None,
    )
