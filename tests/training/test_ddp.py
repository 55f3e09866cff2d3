"""Two CPU processes (gloo) through the same entry: it re-launches itself with torchrun."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.training.support import run_entry

pytestmark = pytest.mark.slow


def test_two_process_ddp_run(make_root: Callable[..., Path]) -> None:
    root = make_root(n_train=48, num_processes=2, batch_size=4, grad_accum=2, epochs=2, log_every=2)
    proc = run_entry(root)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "torch.distributed.run" in proc.stderr
    # 48 rows / (4 per batch * 2 ranks) = 6 micro-batches per rank per epoch -> 3 steps per epoch
    records = [json.loads(x) for x in (root / "model" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 4, 6]
    assert sum(ln.startswith("[scu] step=") for ln in proc.stdout.splitlines()) == 3  # rank 0 only
    cfg = json.loads((root / "model" / "fastuner_config.json").read_text())
    assert cfg["world_size"] == 2
    assert (root / "model" / "adapter_model.safetensors").exists()
    report = json.loads((root / "model" / "eval.json").read_text())
    assert report["rows"] == 16 and report["tokens"] > 0
