"""SIGTERM mid-training saves a checkpoint and exits 143; a restart resumes exactly."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from scu.paths import EXIT_INTERRUPTED

from tests.training.support import run_entry, start_entry

pytestmark = pytest.mark.slow

HP = {
    "epochs": 3,
    "batch_size": 4,
    "grad_accum": 1,
    "log_every": 1,
    "checkpoint_every": 100,
    "lora_dropout": 0.1,
}


def _metrics(root: Path) -> list[dict[str, float]]:
    path = root / "output" / "data" / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def test_sigterm_then_resume_matches_uninterrupted_run(make_root: Callable[..., Path]) -> None:
    ref = make_root("reference", n_train=24, **HP)
    root = make_root("interrupted", n_train=24, **HP)
    log = root / "first-run.log"
    proc = start_entry(root, log, step_sleep=0.2)
    # The uninterrupted reference runs meanwhile, in a thread: the signal must not wait for it
    # (on a loaded machine the reference can take longer than the whole slowed-down run).
    with ThreadPoolExecutor(1) as pool:
        reference = pool.submit(run_entry, ref)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not any(m["step"] >= 8 for m in _metrics(root)):
            assert proc.poll() is None, log.read_text()[-3000:]
            time.sleep(0.05)
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        waited = time.monotonic() - sent
        done = reference.result()
    assert done.returncode == 0, done.stderr[-3000:]
    assert waited < 10
    assert proc.returncode == EXIT_INTERRUPTED, log.read_text()[-3000:]
    ref_metrics = _metrics(ref)
    assert ref_metrics[-1]["step"] == 18  # 24 rows / 4 per batch * 3 epochs
    status = json.loads((root / "output" / "data" / "status.json").read_text())
    stopped_at = status["step"]
    assert status["status"] == "interrupted" and 8 <= stopped_at < 18
    assert (root / "checkpoints" / f"step-{stopped_at:07d}").is_dir()
    assert not (root / "model" / "adapter_model.safetensors").exists()

    resumed = run_entry(root)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming from step-{stopped_at:07d} at step {stopped_at}" in resumed.stdout
    metrics = _metrics(root)
    assert [m["step"] for m in metrics] == list(range(1, 19))  # no gap, no duplicate, same final step
    for mine, theirs in zip(metrics, ref_metrics, strict=True):
        assert mine["data_bpt"] == pytest.approx(theirs["data_bpt"], rel=1e-5, abs=1e-6)
        assert mine["lambda"] == pytest.approx(theirs["lambda"], rel=1e-5)
        assert mine["epoch"] == pytest.approx(theirs["epoch"])
    a = load_file(str(ref / "model" / "adapter_model.safetensors"))
    b = load_file(str(root / "model" / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
    # the validation curve and the adapter kept (keep_best) survive the checkpoint too
    sel_ref = json.loads((ref / "model" / "eval.json").read_text())["selection"]
    sel = json.loads((root / "model" / "eval.json").read_text())["selection"]
    assert sel["selected_step"] == sel_ref["selected_step"]
    assert [s for s, _ in sel["curve"]] == [s for s, _ in sel_ref["curve"]]
    assert [b for _, b in sel["curve"]] == pytest.approx([b for _, b in sel_ref["curve"]], rel=1e-5)


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"target_s": 0.07}, "target_s: 0.05 -> 0.07"),
        ({"kp": 0.9}, "kp: 0.5 -> 0.9"),
        ({"prior_sigma": 0.02}, "prior_sigma"),
        ({"penalty": "proximal"}, "penalty: 'loss' -> 'proximal'"),
        ({"n_train": 20}, "data_sha256"),  # other data: another hash, another N
    ],
)
def test_resume_with_other_scu_settings_or_data_is_refused(
    make_root: Callable[..., Path], change: dict[str, float | str], named: str
) -> None:
    hp = {"max_steps": 4, "batch_size": 4, "grad_accum": 1, "checkpoint_every": 2, "target_s": 0.05}
    root = make_root("first", n_train=24, **hp)
    first = run_entry(root)
    assert first.returncode == 0, first.stderr[-3000:]
    n_train = int(change.get("n_train", 24))
    again = make_root(
        "first", n_train=n_train, **{**hp, **{k: v for k, v in change.items() if k != "n_train"}}
    )
    assert again == root  # same root: same checkpoints, new settings or data
    second = run_entry(root)
    assert second.returncode != 0
    failure = (root / "output" / "failure").read_text()
    assert "Resume mismatch" in failure and named in failure, failure
    if "n_train" in change:
        assert "train_tokens" in failure and "train_rows" in failure
