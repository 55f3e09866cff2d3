"""Issue 12, item 5: a run whose loss becomes non-finite fails with a clear reason and writes no
adapter (it used to train on NaN loss and end ``completed`` with an adapter whose BPT was null)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from scu.paths import EXIT_FAILED

from tests.training.support import run_entry

pytestmark = pytest.mark.slow


def nan_weights_model(src: Path, dest: Path) -> Path:
    """A copy of ``src`` whose input embeddings are NaN: the loss is NaN from the first step."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(src)
    with torch.no_grad():
        model.get_input_embeddings().weight.fill_(float("nan"))
    model.save_pretrained(dest)
    AutoTokenizer.from_pretrained(src).save_pretrained(dest)
    return dest


def test_non_finite_loss_fails_the_job_without_an_adapter(
    make_root: Callable[..., Path], tiny_model: Path, tmp_path: Path
) -> None:
    broken = nan_weights_model(tiny_model, tmp_path / "nan-model")
    root = make_root(base_model=str(broken), max_steps=6, log_every=1, checkpoint_every=2)
    proc = run_entry(root)
    assert proc.returncode == EXIT_FAILED, proc.stderr[-3000:]
    failure = (root / "output" / "failure").read_text()
    assert failure.startswith("Training diverged: the loss became non-finite at step 1 of 6"), failure
    assert "Traceback" not in failure and "no adapter was saved" in failure
    model_dir = root / "model"
    assert not (model_dir / "adapter_config.json").exists()
    assert not (model_dir / "adapter_model.safetensors").exists()
    assert not (model_dir / "eval.json").exists()
    assert not any((root / "checkpoints").glob("step-*")), "no checkpoint of a diverged state"
