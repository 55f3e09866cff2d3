"""Two CPU processes (gloo) through the same entry: it re-launches itself with torchrun."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.training.support import run_entry, start_entry

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


def test_sigterm_reaches_ddp_workers_and_resume_completes(make_root: Callable[..., Path]) -> None:
    import signal
    import time

    from scu.paths import EXIT_INTERRUPTED

    root = make_root(n_train=48, num_processes=2, batch_size=4, grad_accum=1, epochs=2, log_every=1)
    metrics = root / "output" / "data" / "metrics.jsonl"
    log = root / "launcher.log"
    proc = start_entry(root, log, step_sleep=0.3)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and not (
            metrics.exists() and len(metrics.read_text().splitlines()) >= 3
        ):
            assert proc.poll() is None, log.read_text()[-3000:]
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)  # to the launcher only, as SageMaker does
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == EXIT_INTERRUPTED, log.read_text()[-4000:]
    status = json.loads((root / "output" / "data" / "status.json").read_text())
    assert status["status"] == "interrupted" and 3 <= status["step"] < 12
    resumed = run_entry(root)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    steps = [json.loads(x)["step"] for x in metrics.read_text().splitlines()]
    assert steps == list(range(1, 13))  # 48 rows / (4 x 2 ranks) = 6 steps per epoch, 2 epochs
