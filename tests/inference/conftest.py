"""Fixtures for the inference server: a tiny offline base model, LoRA adapters, references, clients."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.inference.support import ADAPTER_SEEDS, TENANT, ClientFactory, Reference, Store, make_lora


@pytest.fixture(scope="session")
def store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    from scu.tiny import build_tiny_model
    from transformers import LlamaConfig, LlamaForCausalLM

    tmp = tmp_path_factory.mktemp("inference")
    base = build_tiny_model(tmp / "base")
    prefix = tmp / "store" / TENANT / "adapters"
    make_lora(base, prefix / "adp_a", ADAPTER_SEEDS["adp_a"], ["q_proj", "v_proj"])
    make_lora(base, prefix / "adp_b", ADAPTER_SEEDS["adp_b"], ["q_proj", "k_proj", "o_proj", "down_proj"])
    # A LoRA for another base (hidden size 64 instead of 128): loading it must fail cleanly.
    other = tmp / "other-base"
    cfg = LlamaConfig(
        vocab_size=1024,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
    )
    LlamaForCausalLM(cfg).save_pretrained(other)
    make_lora(other, prefix / "adp_bad", 33, ["q_proj", "v_proj"])
    # A folder without adapter_config.json.
    (prefix / "adp_noconfig").mkdir(parents=True)
    (prefix / "adp_noconfig" / "README.md").write_text("not an adapter\n")
    return Store(root=tmp / "store", prefix=prefix, base=base)


@pytest.fixture(scope="session")
def reference(store: Store) -> Reference:
    return Reference(store)


@pytest.fixture
def make_engine(store: Store, tmp_path: Path) -> Callable[..., Any]:
    """``make_engine(**settings)``: a loaded ``Engine`` on the tiny base model and the test adapters."""
    from loraserve.config import ServerConfig
    from loraserve.engine import Engine

    def factory(**overrides: Any) -> Engine:
        config = ServerConfig(
            base_model=str(store.base),
            adapter_prefix=overrides.pop("prefix", store.file_uri),
            cache_dir=tmp_path / "cache",
            **overrides,
        )
        engine = Engine(config)
        engine.load()
        return engine

    return factory


@pytest.fixture
def make_client(store: Store, tmp_path: Path) -> Iterator[ClientFactory]:
    """``with make_client(prefix=..., max_adapters=...) as client:`` a TestClient on a loaded engine."""
    from contextlib import contextmanager

    from fastapi.testclient import TestClient
    from loraserve.app import create_app
    from loraserve.config import ServerConfig
    from loraserve.engine import Engine

    @contextmanager
    def factory(prefix: str | None = "file", source: Any = None, **overrides: Any) -> Iterator[TestClient]:
        if prefix == "file":
            prefix = store.file_uri
        config = ServerConfig(
            base_model=str(store.base),
            adapter_prefix=prefix,
            cache_dir=tmp_path / "cache",
            **overrides,
        )
        engine = Engine(config, source=source)
        engine.load()
        with TestClient(create_app(engine=engine)) as client:
            yield client

    yield factory
