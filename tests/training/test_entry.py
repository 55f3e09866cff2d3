"""The real entry (``python -m scu.entry train``) through the /opt/ml contract under a tmp root."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from scu.metrics_format import METRIC_DEFINITIONS, TRAIN_KEYS, parse_with_definitions
from scu.paths import EXIT_FAILED

from tests.training.support import TINY_PROJECTIONS, run_entry

pytestmark = pytest.mark.slow


def test_full_run_writes_a_stock_peft_adapter(make_root: Callable[..., Path], tiny_model: Path) -> None:
    root = make_root(max_steps=12, log_every=3, checkpoint_every=5, batch_size=4, scu="on")
    dump = root / "logits.pt"
    proc = run_entry(root, {"FASTUNER_SCU_DUMP_LOGITS": str(dump)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    model_dir = root / "model"
    assert (model_dir / "adapter_config.json").exists() and (model_dir / "adapter_model.safetensors").exists()
    assert not (root / "output" / "failure").exists()

    # Stock PEFT reload reproduces the in-training model's logits.
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    n_base_params = sum(p.numel() for p in base.parameters())
    reloaded = PeftModel.from_pretrained(base, model_dir).eval()
    saved = torch.load(dump)
    with torch.no_grad():
        logits = reloaded(input_ids=saved["input_ids"], attention_mask=saved["attention_mask"]).logits
    mask = saved["attention_mask"].bool()
    torch.testing.assert_close(logits[mask], saved["logits"][mask], rtol=1e-4, atol=1e-4)

    # eval.json: base vs adapter on the held-out channel, token-weighted.
    report = json.loads((model_dir / "eval.json").read_text())
    assert report["source"] == "validation" and report["rows"] == 16 and report["tokens"] > 0
    for side in ("base", "adapter"):
        assert report[side]["bpt"] > 0
        assert report[side]["perplexity"] == pytest.approx(2 ** report[side]["bpt"], rel=1e-6)
    assert report["steps"] == 12

    # metrics: printed lines parse with the SageMaker regexes; jsonl has the same keys.
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("[scu] step=")]
    assert len(lines) == 4
    for ln in lines:
        assert len(parse_with_definitions(ln)) == len(TRAIN_KEYS)
    records = [json.loads(x) for x in (model_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [3, 6, 9, 12] and all(set(r) == set(TRAIN_KEYS) for r in records)
    eval_line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("[scu-eval]"))
    names = {d["Name"] for d in METRIC_DEFINITIONS if re.search(d["Regex"], eval_line)}
    assert "validation:adapter_bpt" in names and "validation:base_bpt" in names

    # resolved config with smart defaults, checkpoints kept.
    cfg = json.loads((model_dir / "fastuner_config.json").read_text())
    assert cfg["n_params"] == n_base_params
    assert cfg["max_steps"] == 12 and "target_s" in cfg["defaulted"] and "batch_size" not in cfg["defaulted"]
    assert cfg["target_modules"] == TINY_PROJECTIONS
    assert sorted(p.name for p in (root / "checkpoints").iterdir()) == ["step-0000010", "step-0000012"]


def test_scu_modes_and_holdout(make_root: Callable[..., Path]) -> None:
    root = make_root(n_val=0, max_steps=4, log_every=2, scu="fixed", lambda_fixed=0.5, packing=True)
    proc = run_entry(root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(x) for x in (root / "output" / "data" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["lambda"] == 0.5 for r in records)
    report = json.loads((root / "model" / "eval.json").read_text())
    assert report["source"] == "holdout" and report["rows"] >= 1


@pytest.mark.parametrize(
    ("hp", "needle"),
    [
        ({"lora_r": "eight"}, "lora_r"),
        ({"bogus": "1"}, "unknown hyperparameter(s) bogus"),
        ({"scu": "fixed"}, "lambda_fixed"),
    ],
)
def test_bad_hyperparameters_fail_cleanly(
    make_root: Callable[..., Path], hp: dict[str, str], needle: str
) -> None:
    root = make_root(**hp)
    proc = run_entry(root)
    assert proc.returncode == EXIT_FAILED
    failure = (root / "output" / "failure").read_text()
    assert failure.startswith("Invalid hyperparameters:") and needle in failure
    assert "Traceback" not in failure and failure.count("\n") == 1


def test_bad_data_and_missing_model_fail_cleanly(make_root: Callable[..., Path], tmp_path: Path) -> None:
    root = make_root()
    (root / "input" / "data" / "train" / "bad.jsonl").write_text('{"messages": []}\n')
    proc = run_entry(root)
    assert proc.returncode == EXIT_FAILED
    assert "bad.jsonl line 1" in (root / "output" / "failure").read_text()

    root2 = make_root(name="nomodel", base_model="")
    proc = run_entry(root2)
    assert proc.returncode == EXIT_FAILED
    assert "No base model" in (root2 / "output" / "failure").read_text()
