"""Facts of model folders without loading weights, where hub ids are found on disk, the catalog."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from api.backends.local_models import MARKER, LocalModels, hf_cache_snapshot, pulled_dir, safe_name
from api.services.finetune.estimate import params_from_config
from api.services.models.catalog import CATALOG, gated
from api.services.models.facts import folder_facts, safetensors_parameters, weight_parameters
from tests.models.support import LLAMA, SMOL, fake_pull

CONFIG = {
    "vocab_size": 100,
    "hidden_size": 16,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 32,
    "max_position_embeddings": 2048,
    "tie_word_embeddings": True,
}


def folder(path: Path, tensors: dict[str, tuple[int, ...]], **files: str) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps(CONFIG))
    save_file({k: np.zeros(s, dtype=np.float16) for k, s in tensors.items()}, str(path / "model.safetensors"))
    for name, text in files.items():
        (path / name).write_text(text)
    return path


def test_parameters_are_counted_from_safetensors_headers(tmp_path: Path) -> None:
    shapes = {"embed": (100, 16), "norm": (16,), "proj": (16, 32)}
    model = folder(tmp_path / "m", shapes, tokenizer_config=json.dumps({"chat_template": "{{x}}"}))
    assert safetensors_parameters(model / "model.safetensors") == 100 * 16 + 16 + 16 * 32
    facts = folder_facts(model)
    assert facts.parameters == 100 * 16 + 16 + 16 * 32
    assert facts.context_length == 2048
    assert facts.chat_template is False  # `tokenizer_config` (no .json) is not the tokenizer's config
    (model / "tokenizer_config.json").write_text(json.dumps({"chat_template": "{{ messages }}"}))
    assert folder_facts(model).chat_template is True


def test_sharded_weights_follow_the_index_and_bad_headers_fall_back_to_the_config(tmp_path: Path) -> None:
    model = tmp_path / "sharded"
    model.mkdir()
    (model / "config.json").write_text(json.dumps(CONFIG))
    save_file({"a": np.zeros((10, 10), dtype=np.float32)}, str(model / "s1.safetensors"))
    save_file({"b": np.zeros((5,), dtype=np.float32)}, str(model / "s2.safetensors"))
    index = {"weight_map": {"a": "s1.safetensors", "b": "s2.safetensors"}}
    (model / "model.safetensors.index.json").write_text(json.dumps(index))
    assert weight_parameters(model) == 105
    (model / "s2.safetensors").write_bytes(b"\xff" * 8 + b"garbage")  # a header length of 2^64-1
    assert weight_parameters(model) is None
    computed = params_from_config(CONFIG)
    assert computed is not None and folder_facts(model).parameters == computed.n_params
    (model / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "../x.safetensors"}}))
    assert weight_parameters(model) is None  # the index only names files beside it


def test_tiny_model_facts_match_the_loaded_model(tiny_folder: Path) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_folder)
    facts = folder_facts(tiny_folder)
    assert facts.parameters == sum(p.numel() for p in model.parameters())
    assert facts.context_length == model.config.max_position_embeddings == 512
    assert facts.chat_template is True


def test_pulled_folder_needs_its_marker_and_weights(tmp_path: Path, tiny_folder: Path) -> None:
    models = tmp_path / "models"
    assert pulled_dir(models, SMOL) is None
    dest = fake_pull(tiny_folder, models)
    assert dest.name == safe_name(SMOL) == "HuggingFaceTB--SmolLM2-135M-Instruct"
    assert pulled_dir(models, SMOL) == dest
    (dest / MARKER).unlink()  # an unfinished pull is not a pull
    assert pulled_dir(models, SMOL) is None


def test_hf_cache_snapshot_prefers_refs_main_and_needs_weights(_isolated_hub: Path) -> None:
    repo = _isolated_hub / "models--Qwen--Qwen2.5-0.5B-Instruct"
    old, main = repo / "snapshots" / "aaa", repo / "snapshots" / "bbb"
    for snap in (old, main):
        snap.mkdir(parents=True)
        (snap / "config.json").write_text("{}")
    assert hf_cache_snapshot("Qwen/Qwen2.5-0.5B-Instruct") is None  # configs only, no weights
    (old / "model.safetensors").write_bytes(b"x")
    assert hf_cache_snapshot("Qwen/Qwen2.5-0.5B-Instruct") == old
    (main / "model.safetensors").write_bytes(b"x")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("bbb\n")
    assert hf_cache_snapshot("Qwen/Qwen2.5-0.5B-Instruct") == main
    models = LocalModels(_isolated_hub.parent / "nothing-pulled")
    assert models.resolve("Qwen/Qwen2.5-0.5B-Instruct") == str(main)
    assert models.resolve(SMOL) == SMOL  # not on this machine: left as the hub id
    assert models.resolve("/some/folder") == "/some/folder"


def test_static_catalog_and_gated_families() -> None:
    assert gated(LLAMA) and gated("meta-llama/Some-Future-Model") and gated("google/gemma-3-1b-it")
    assert gated("mistralai/Mistral-7B-Instruct-v0.3")
    assert (
        not gated(SMOL)
        and not gated("Qwen/Qwen2.5-7B-Instruct")
        and not gated("microsoft/Phi-3.5-mini-instruct")
    )
    # The static parameter counts agree with the config arithmetic the estimates use.
    smol = CATALOG[SMOL]
    assert (smol.parameters, smol.context_length, smol.chat_template) == (134_515_008, 8192, True)


@pytest.mark.parametrize("n", [0, 1, 3])
def test_empty_and_scalar_tensors(tmp_path: Path, n: int) -> None:
    shape = (n, 2)
    model = folder(tmp_path / "m", {"t": shape, "s": ()})
    assert weight_parameters(model) == math.prod(shape) + 1
