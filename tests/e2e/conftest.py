from __future__ import annotations

import json
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def model_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the tests' local base models live: the control plane only takes model folders from
    its configured roots (FASTUNER_MODEL_ROOTS)."""
    return tmp_path_factory.mktemp("models")


@pytest.fixture(autouse=True)
def _model_roots(model_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FASTUNER_MODEL_ROOTS", json.dumps([str(model_root)]))


@pytest.fixture(scope="session")
def tiny_model(model_root: Path) -> Path:
    """The tiny random Llama + locally trained tokenizer, saved like any HF model folder."""
    pytest.importorskip("torch")
    from scu.tiny import build_tiny_model

    path = model_root / "tiny-llama"
    build_tiny_model(path)
    return path
