"""fastlora: the lean LoRA forwards compute bitwise what PEFT's own forward computes, or stay out."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.inference.support import Store, make_lora


@pytest.fixture
def peft_model(store: Store) -> Any:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(store.base, local_files_only=True)
    model = PeftModel.from_pretrained(base, store.prefix / "adp_a", adapter_name="adp_a")
    model.load_adapter(str(store.prefix / "adp_b"), adapter_name="adp_b")
    return model.eval()


def logits(model: Any) -> Any:
    import torch

    ids = torch.tensor([[5, 17, 99, 3, 42, 7], [1, 2, 3, 4, 5, 6]])
    with torch.inference_mode():
        return model(input_ids=ids).logits


def test_one_adapter_or_none_is_bitwise_peft(peft_model: Any) -> None:
    import torch
    from loraserve import fastlora

    layers = fastlora.lora_layers(peft_model.base_model)
    assert layers
    for adapter in ("adp_a", "adp_b"):  # adp_b targets layers adp_a does not, and the reverse
        peft_model.set_adapter(adapter)
        expected = logits(peft_model)
        assert fastlora.install(layers, adapter) == len(layers)
        assert torch.equal(logits(peft_model), expected), adapter
        fastlora.restore(layers)
        assert torch.equal(logits(peft_model), expected)
    with peft_model.disable_adapter():
        expected = logits(peft_model)
        assert fastlora.install(layers, None) == len(layers)
        assert torch.equal(logits(peft_model), expected)
        fastlora.restore(layers)
    assert all("forward" not in layer.__dict__ for layer in layers)


def test_the_lean_forward_really_replaces_peft(peft_model: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Proof the test above compares two paths: with PEFT's forward broken, only the lean one works."""
    import torch
    from loraserve import fastlora
    from peft.tuners.lora.layer import Linear

    peft_model.set_adapter("adp_b")
    expected = logits(peft_model)
    layers = fastlora.lora_layers(peft_model.base_model)
    monkeypatch.setattr(Linear, "forward", lambda self, x, *a, **k: (_ for _ in ()).throw(AssertionError))
    fastlora.install(layers, "adp_b")
    assert torch.equal(logits(peft_model), expected)


def test_a_dora_adapter_keeps_peft_forward(store: Store, tmp_path: Path) -> None:
    import torch
    from loraserve import fastlora
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(store.base, local_files_only=True)
    config = LoraConfig(r=4, target_modules=["q_proj"], use_dora=True, init_lora_weights=False)
    torch.manual_seed(3)
    get_peft_model(base, config).save_pretrained(str(tmp_path / "dora"))
    base = AutoModelForCausalLM.from_pretrained(store.base, local_files_only=True)
    model = PeftModel.from_pretrained(base, tmp_path / "dora").eval()
    expected = logits(model)
    layers = fastlora.lora_layers(model.base_model)
    assert fastlora.install(layers, "default") == 0  # DoRA is a variant: PEFT computes it
    assert torch.equal(logits(model), expected)


def test_make_lora_helper_is_plain_lora(store: Store, tmp_path: Path) -> None:
    """The test adapters are plain LoRA (no variant), so the serving tests exercise the lean path."""
    from loraserve import fastlora
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    make_lora(store.base, tmp_path / "plain", 5, ["v_proj"])
    base = AutoModelForCausalLM.from_pretrained(store.base, local_files_only=True)
    model = PeftModel.from_pretrained(base, tmp_path / "plain").eval()
    layers = fastlora.lora_layers(model.base_model)
    assert fastlora.install(layers, "default") == len(layers) > 0


def test_the_engine_uses_lean_forwards_except_in_mixed_batches(make_engine: Any) -> None:
    from loraserve import fastlora
    from loraserve.schemas import GenerationParameters

    engine = make_engine(max_batch_size=4)
    one = GenerationParameters(max_new_tokens=2)
    engine.generate(["hello"], "adp_a", one)
    layers = fastlora.lora_layers(engine.adapters.base)
    assert layers and all("forward" in layer.__dict__ for layer in layers)
    engine.scheduler.pause()
    tickets = [engine.submit(["hello"], a, one) for a in ("adp_a", "adp_b")]
    engine.scheduler.resume()
    for ticket in tickets:
        ticket.wait(60)
    assert engine.scheduler.largest_batch == 2
    assert all("forward" not in layer.__dict__ for layer in layers)  # mixed: PEFT's own forward
    engine.generate(["hello"], None, one)
    assert all("forward" in layer.__dict__ for layer in fastlora.lora_layers(engine.adapters.base))
