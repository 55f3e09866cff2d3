"""fastlora: the lean LoRA forwards compute what PEFT's own forward computes (up to float rounding:
the scaling is folded into B), the same for a row whatever shares its batch, or stay out."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.inference.support import Store

IDS = [[5, 17, 99, 3, 42, 7], [1, 2, 3, 4, 5, 6], [9, 8, 7, 6, 5, 4], [4, 4, 2, 1, 0, 3]]


@pytest.fixture
def peft_model(store: Store) -> Any:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(store.base, local_files_only=True)
    model = PeftModel.from_pretrained(base, store.prefix / "adp_a", adapter_name="adp_a")
    model.load_adapter(str(store.prefix / "adp_b"), adapter_name="adp_b")
    return model.eval()


def logits(model: Any, rows: list[list[int]] = IDS, **kw: Any) -> Any:
    import torch

    with torch.inference_mode():
        return model(input_ids=torch.tensor(rows), **kw).logits


def close(a: Any, b: Any) -> bool:
    import torch

    return torch.allclose(a, b, rtol=1e-5, atol=1e-5)


def test_one_adapter_or_none_computes_what_peft_does(peft_model: Any) -> None:
    import torch
    from loraserve.fastlora import LeanLoRA

    lean = LeanLoRA(peft_model.base_model)
    assert lean.layers
    with peft_model.disable_adapter():
        base = logits(peft_model)
    for adapter in ("adp_a", "adp_b"):  # adp_b targets layers adp_a does not, and the reverse
        peft_model.set_adapter(adapter)
        expected = logits(peft_model)
        assert lean.use(adapter) == len(lean.layers)
        got = logits(peft_model)
        assert close(got, expected) and not close(got, base), adapter  # the adapter is applied
        lean.restore()
        assert torch.equal(logits(peft_model), expected)
    with peft_model.disable_adapter():
        expected = logits(peft_model)
        assert lean.use(None) == len(lean.layers)
        assert torch.equal(logits(peft_model), expected)  # the base: exactly the base layers
        lean.restore()
    assert all("forward" not in layer.__dict__ for layer in lean.layers)


def test_a_mixed_batch_computes_what_peft_does_and_each_row_as_alone(peft_model: Any) -> None:
    from loraserve.fastlora import LeanLoRA

    rows = ["adp_b", "__base__", "adp_a", "adp_b"]
    expected = logits(peft_model, adapter_names=rows)
    lean = LeanLoRA(peft_model.base_model)
    assert lean.use_mixed([None if r == "__base__" else r for r in rows]) == len(lean.layers)
    mixed = logits(peft_model.base_model.model)  # no adapter_names: the lean forwards know the rows
    assert close(mixed, expected)
    for i, adapter in enumerate(rows):
        name = None if adapter == "__base__" else adapter
        if name is not None:
            peft_model.set_adapter(name)
        with peft_model.disable_adapter() if name is None else _null():
            lean.use(name)
            alone = logits(peft_model.base_model.model, [IDS[i]])
        assert close(alone[0], mixed[i]), adapter
        lean.use_mixed([None if r == "__base__" else r for r in rows])
    lean.restore()


def _null() -> Any:
    import contextlib

    return contextlib.nullcontext()


def test_the_lean_forward_really_replaces_peft(peft_model: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Proof the tests above compare two paths: with PEFT's forward broken, only the lean one works."""
    from loraserve.fastlora import LeanLoRA
    from peft.tuners.lora.layer import Linear

    peft_model.set_adapter("adp_b")
    expected = logits(peft_model)
    lean = LeanLoRA(peft_model.base_model)
    monkeypatch.setattr(Linear, "forward", lambda self, x, *a, **k: (_ for _ in ()).throw(AssertionError))
    lean.use("adp_b")
    assert close(logits(peft_model), expected)
    lean.use_mixed(["adp_a", None, "adp_b", "adp_a"])
    logits(peft_model)


def test_a_dora_adapter_keeps_peft_forward(store: Store, tmp_path: Path) -> None:
    import torch
    from loraserve.fastlora import LeanLoRA
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(store.base, local_files_only=True)
    config = LoraConfig(r=4, target_modules=["q_proj"], use_dora=True, init_lora_weights=False)
    torch.manual_seed(3)
    get_peft_model(base, config).save_pretrained(str(tmp_path / "dora"))
    base = AutoModelForCausalLM.from_pretrained(store.base, local_files_only=True)
    model = PeftModel.from_pretrained(base, tmp_path / "dora").eval()
    expected = logits(model)
    lean = LeanLoRA(model.base_model)
    assert lean.use("default") == 0  # DoRA is a variant: PEFT computes it
    assert torch.equal(logits(model), expected)
    assert lean.use_mixed(["default", None]) == 0


def test_the_engine_uses_lean_forwards_for_every_kind_of_batch(make_engine: Any) -> None:
    from loraserve.fastlora import MIXED
    from loraserve.schemas import GenerationParameters

    engine = make_engine(max_batch_size=4)
    one = GenerationParameters(max_new_tokens=2)
    engine.generate(["hello"], "adp_a", one)
    lean = engine.adapters._fast
    assert lean is not None and lean.target == "adp_a" and lean.lean == len(lean.layers) > 0
    engine.scheduler.pause()
    tickets = [engine.submit(["hello"], a, one) for a in ("adp_a", "adp_b")]
    engine.scheduler.resume()
    for ticket in tickets:
        ticket.wait(60)
    assert engine.scheduler.largest_batch == 2
    lean = engine.adapters._fast
    assert lean is not None and lean.target == MIXED and lean.lean == len(lean.layers)
    engine.generate(["hello"], None, one)
    assert lean.target is None and lean.lean == len(lean.layers)
