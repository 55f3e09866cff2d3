"""Isolation for the model tests: no real Hugging Face cache or token, no configured model roots."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _isolated_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    cache = tmp_path / "hf" / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    tokens = ["HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_TOKEN_PATH", "FASTUNER_HF_TOKEN_SECRET"]
    for name in [*tokens, "FASTUNER_MODEL_ROOTS", "FASTUNER_LOCAL_HUB_DOWNLOADS", "HUGGINGFACE_HUB_CACHE"]:
        monkeypatch.delenv(name, raising=False)
    yield cache


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny random Llama + tokenizer (with a chat template), saved like any HF model folder."""
    pytest.importorskip("torch")
    from scu.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny-llama")
