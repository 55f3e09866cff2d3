from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny random Llama + locally trained tokenizer, saved like any HF model folder."""
    pytest.importorskip("torch")
    from scu.tiny import build_tiny_model

    path = tmp_path_factory.mktemp("models") / "tiny-llama"
    build_tiny_model(path)
    return path
