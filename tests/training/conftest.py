"""Fixtures for the SCU engine tests: the tiny offline model and /opt/ml-shaped roots."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.training.support import write_root


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from scu.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture
def make_root(tmp_path: Path, tiny_model: Path) -> Callable[..., Path]:
    def factory(name: str = "root", n_train: int = 64, n_val: int = 16, **hp: Any) -> Path:
        hp.setdefault("base_model", str(tiny_model))
        return write_root(tmp_path / name, hp, n_train=n_train, n_val=n_val)

    return factory
