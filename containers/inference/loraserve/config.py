"""Server settings, read from the environment (torch-free).

| variable | default | meaning |
|---|---|---|
| ``FASTUNER_BASE_MODEL`` | ``$OPT_ML_ROOT/model`` if it holds a ``config.json`` | local path, ``s3://`` prefix or hub id |
| ``FASTUNER_ADAPTER_PREFIX`` | unset (base model only) | ``s3://bucket/prefix``, ``file:///dir`` or a dir |
| ``FASTUNER_ADAPTER_CACHE_DIR`` | ``$TMPDIR/loraserve-cache`` | where S3 adapters are downloaded |
| ``FASTUNER_MAX_ADAPTERS`` | 8 | adapters kept loaded (LRU) |
| ``FASTUNER_PRELOAD_ADAPTERS`` | unset | comma-separated ids loaded at start-up |
| ``FASTUNER_MAX_BATCH_INPUTS`` | 32 | most prompts in one request |
| ``FASTUNER_MAX_BATCH_SIZE`` | 16 | most sequences decoded together in one batch (1 = serial) |
| ``FASTUNER_MAX_QUEUE`` | 64 | sequences waiting for a batch; more → 429 with ``Retry-After`` |
| ``FASTUNER_DEADLINE_S`` | 55 | default and largest per-request deadline (SageMaker cuts at 60 s) |
| ``FASTUNER_MIN_TOKENS_PER_S`` | 20 | decoding floor: ``max_new_tokens`` above ``deadline × floor`` → 400 (0 = off) |
| ``FASTUNER_ADAPTER_MEMORY_BYTES`` | 4GiB | LoRA weights kept loaded (LRU; with ``FASTUNER_MAX_ADAPTERS``) |
| ``FASTUNER_ADAPTER_DISK_BYTES`` | 20GiB | downloaded adapter folders kept in the cache dir (LRU) |
| ``FASTUNER_DEVICE`` | ``auto`` (cuda if available) | torch device |
| ``FASTUNER_DTYPE`` | ``auto`` (bf16/fp16 on GPU, fp32 on CPU) | ``float32``, ``bfloat16``, ``float16`` |
| ``FASTUNER_LOCAL_FILES_ONLY`` | true when offline (``HF_HUB_OFFLINE``) or a local path | never reach the hub |
| ``FASTUNER_TRUST_REMOTE_CODE`` | false | passed to ``from_pretrained`` |
| ``SAGEMAKER_BIND_TO_PORT`` / ``PORT`` | 8080 | listening port |
| ``FASTUNER_HOST`` | ``0.0.0.0`` | listening address |
| ``FASTUNER_LOG_LEVEL`` | ``INFO`` | log level |
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

DEFAULT_PORT = 8080
DEFAULT_HOST = "0.0.0.0"  # a container must listen on every interface
DEFAULT_MAX_ADAPTERS = 8
DEFAULT_MAX_BATCH_INPUTS = 32
DEFAULT_MAX_BATCH_SIZE = 16
DEFAULT_MAX_QUEUE = 64
DEFAULT_DEADLINE_S = 55.0  # under SageMaker's 60 s invocation limit
DEFAULT_MIN_TOKENS_PER_S = 20.0
DEFAULT_ADAPTER_MEMORY_BYTES = 4 << 30
DEFAULT_ADAPTER_DISK_BYTES = 20 << 30
_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1 << 10, "m": 1000**2, "mb": 1000**2}
_UNITS |= {"mib": 1 << 20, "g": 1000**3, "gb": 1000**3, "gib": 1 << 30, "t": 1000**4, "tb": 1000**4}
_UNITS |= {"tib": 1 << 40}
OPT_ML_ROOT_ENV = "OPT_ML_ROOT"

# One path segment that is also a valid torch module name (PEFT uses it as a ModuleDict key): no dots.
ADAPTER_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,128}$")

_TRUE = {"1", "true", "yes", "on"}


def _truthy(value: str | None) -> bool:
    return value is not None and value.strip().lower() in _TRUE


def _int(env: Mapping[str, str], name: str, default: int, minimum: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise ValueError(f"{name} must be an integer, got {raw!r}") from exc
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def _float(env: Mapping[str, str], name: str, default: float, minimum: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError as exc:
        raise ValueError(f"{name} must be a number, got {raw!r}") from exc
    if not value >= minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def parse_bytes(raw: str) -> int:
    """``123``, ``512MiB``, ``4GiB``, ``1.5GB`` -> bytes."""
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*", raw)
    unit = match.group(2).lower() if match else ""
    if not match or unit not in _UNITS:
        raise ValueError(f"not a byte size: {raw!r} (use e.g. 1048576, 512MiB, 4GiB)")
    return int(float(match.group(1)) * _UNITS[unit])


def _bytes(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        return parse_bytes(raw)
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from exc


def valid_adapter_id(adapter_id: str) -> bool:
    return bool(ADAPTER_ID_RE.match(adapter_id))


def resolve_port(env: Mapping[str, str], flag: int | None = None) -> int:
    """``--port`` flag, else ``SAGEMAKER_BIND_TO_PORT``, else ``PORT``, else 8080."""
    if flag is not None:
        return flag
    for name in ("SAGEMAKER_BIND_TO_PORT", "PORT"):
        raw = env.get(name, "").strip()
        if raw:
            return int(raw)
    return DEFAULT_PORT


def resolve_host(env: Mapping[str, str], flag: str | None = None) -> str:
    if flag:
        return flag
    return env.get("FASTUNER_HOST", "").strip() or DEFAULT_HOST


@dataclass(frozen=True)
class ServerConfig:
    base_model: str
    adapter_prefix: str | None = None
    cache_dir: Path = field(default_factory=lambda: Path(tempfile.gettempdir()) / "loraserve-cache")
    max_adapters: int = DEFAULT_MAX_ADAPTERS
    preload_adapters: tuple[str, ...] = ()
    max_batch_inputs: int = DEFAULT_MAX_BATCH_INPUTS
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
    max_queue: int = DEFAULT_MAX_QUEUE
    deadline_s: float = DEFAULT_DEADLINE_S
    min_tokens_per_s: float = DEFAULT_MIN_TOKENS_PER_S
    adapter_memory_bytes: int = DEFAULT_ADAPTER_MEMORY_BYTES
    adapter_disk_bytes: int = DEFAULT_ADAPTER_DISK_BYTES
    device: str = "auto"
    dtype: str = "auto"
    local_files_only: bool = True
    trust_remote_code: bool = False

    def __post_init__(self) -> None:
        if self.max_adapters < 1:
            raise ValueError("max_adapters must be >= 1")
        if self.max_batch_size < 1 or self.max_queue < 1:
            raise ValueError("max_batch_size and max_queue must be >= 1")
        if not self.deadline_s > 0 or self.min_tokens_per_s < 0:
            raise ValueError("deadline_s must be > 0 and min_tokens_per_s >= 0")
        if self.adapter_memory_bytes < 0 or self.adapter_disk_bytes < 0:
            raise ValueError("adapter byte budgets must be >= 0")
        if self.dtype not in {"auto", "float32", "bfloat16", "float16"}:
            raise ValueError(f"dtype must be auto, float32, bfloat16 or float16, got {self.dtype!r}")
        for adapter_id in self.preload_adapters:
            if not valid_adapter_id(adapter_id):
                raise ValueError(f"invalid adapter id in FASTUNER_PRELOAD_ADAPTERS: {adapter_id!r}")

    def with_(self, **changes: Any) -> ServerConfig:
        return replace(self, **changes)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ServerConfig:
        env = os.environ if env is None else env
        base = env.get("FASTUNER_BASE_MODEL", "").strip()
        if not base:
            default = Path(env.get(OPT_ML_ROOT_ENV, "/opt/ml")) / "model"
            if (default / "config.json").is_file():
                base = str(default)
            else:
                raise ValueError(
                    "FASTUNER_BASE_MODEL is not set (a local model directory, an s3:// prefix or a hub id), "
                    f"and {default} holds no config.json"
                )
        is_local = base.startswith("file://") or Path(base).exists()
        offline = any(_truthy(env.get(n)) for n in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
        lfo_raw = env.get("FASTUNER_LOCAL_FILES_ONLY")
        local_files_only = _truthy(lfo_raw) if lfo_raw is not None else (offline or is_local)
        cache = env.get("FASTUNER_ADAPTER_CACHE_DIR", "").strip()
        preload = tuple(a.strip() for a in env.get("FASTUNER_PRELOAD_ADAPTERS", "").split(",") if a.strip())
        return cls(
            base_model=base,
            adapter_prefix=env.get("FASTUNER_ADAPTER_PREFIX", "").strip() or None,
            cache_dir=Path(cache) if cache else Path(tempfile.gettempdir()) / "loraserve-cache",
            max_adapters=_int(env, "FASTUNER_MAX_ADAPTERS", DEFAULT_MAX_ADAPTERS, 1),
            preload_adapters=preload,
            max_batch_inputs=_int(env, "FASTUNER_MAX_BATCH_INPUTS", DEFAULT_MAX_BATCH_INPUTS, 1),
            max_batch_size=_int(env, "FASTUNER_MAX_BATCH_SIZE", DEFAULT_MAX_BATCH_SIZE, 1),
            max_queue=_int(env, "FASTUNER_MAX_QUEUE", DEFAULT_MAX_QUEUE, 1),
            deadline_s=_float(env, "FASTUNER_DEADLINE_S", DEFAULT_DEADLINE_S, 0.001),
            min_tokens_per_s=_float(env, "FASTUNER_MIN_TOKENS_PER_S", DEFAULT_MIN_TOKENS_PER_S, 0.0),
            adapter_memory_bytes=_bytes(env, "FASTUNER_ADAPTER_MEMORY_BYTES", DEFAULT_ADAPTER_MEMORY_BYTES),
            adapter_disk_bytes=_bytes(env, "FASTUNER_ADAPTER_DISK_BYTES", DEFAULT_ADAPTER_DISK_BYTES),
            device=env.get("FASTUNER_DEVICE", "").strip() or "auto",
            dtype=env.get("FASTUNER_DTYPE", "").strip() or "auto",
            local_files_only=local_files_only,
            trust_remote_code=_truthy(env.get("FASTUNER_TRUST_REMOTE_CODE")),
        )
