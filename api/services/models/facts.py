"""Facts of a model folder on disk without loading its weights: the parameter count from the
safetensors headers (exact: the sum of the tensors' shapes; a header is 8 bytes of length and JSON)
or else from config arithmetic, the context length from config.json, the chat template from the
tokenizer files."""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from api.services.finetune.estimate import params_from_config

MAX_HEADER_BYTES = 100 * 1024 * 1024  # safetensors' own limit on a header
_CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "n_ctx")


@dataclass(frozen=True)
class FolderFacts:
    parameters: int | None
    context_length: int | None
    chat_template: bool


def _json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


def safetensors_parameters(path: Path) -> int | None:
    """Elements in one .safetensors file, from its header alone."""
    try:
        with path.open("rb") as fh:
            raw = fh.read(8)
            if len(raw) != 8:
                return None
            (size,) = struct.unpack("<Q", raw)
            if size > MAX_HEADER_BYTES:
                return None
            header = json.loads(fh.read(size))
    except (OSError, ValueError, RecursionError):
        return None
    if not isinstance(header, dict):
        return None
    total = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        shape = info.get("shape") if isinstance(info, dict) else None
        if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
            return None
        total += math.prod(shape)
    return total


def weight_parameters(folder: Path) -> int | None:
    """Parameters stored in the folder's safetensors files (sharded ones through their index)."""
    index = _json(folder / "model.safetensors.index.json")
    if index is not None and isinstance(index.get("weight_map"), dict):
        files = sorted({str(f) for f in index["weight_map"].values()})
    else:
        files = sorted(p.name for p in folder.glob("*.safetensors"))
    if not files:
        return None
    total = 0
    for name in files:
        if "/" in name or name.startswith("."):
            return None  # the index may only name files beside it
        count = safetensors_parameters(folder / name)
        if count is None:
            return None
        total += count
    return total


def context_length(config: dict[str, Any]) -> int | None:
    for key in _CONTEXT_KEYS:
        value = config.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def has_chat_template(folder: Path) -> bool:
    if (folder / "chat_template.jinja").is_file() or (folder / "chat_template.json").is_file():
        return True
    tok = _json(folder / "tokenizer_config.json") or {}
    return bool(tok.get("chat_template"))


def folder_facts(folder: Path) -> FolderFacts:
    config = _json(folder / "config.json") or {}
    params = weight_parameters(folder)
    if params is None and config:
        computed = params_from_config(config)
        params = computed.n_params if computed else None
    return FolderFacts(params, context_length(config), has_chat_template(folder))
