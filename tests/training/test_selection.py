"""Validation during training and keep_best: the adapter written is the evaluated one with the
lowest validation BPT, the curve is in eval.json and metrics.jsonl, and the state survives a
checkpoint round trip."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from scu.selection import MIN_EVALS, SUMMARY_POINTS, Selection, eval_interval

from tests.training.support import run_entry


def test_eval_interval_is_an_epoch_and_at_least_four_evaluations() -> None:
    assert eval_interval(None, steps_per_epoch=11, total_steps=165) == 11  # 15 epochs: one each
    assert eval_interval(None, steps_per_epoch=145, total_steps=145) == 37  # one pass: 4 evaluations
    assert eval_interval(None, steps_per_epoch=100, total_steps=300) == 75  # 3 epochs: still 4
    assert eval_interval(None, steps_per_epoch=1, total_steps=2) == 1
    assert eval_interval(7, steps_per_epoch=11, total_steps=165) == 7  # as requested
    for spe, total in ((3, 3), (10, 25), (145, 145), (11, 165), (1000, 1001)):
        every = eval_interval(None, spe, total)
        evaluations = len({s for s in range(1, total + 1) if s % every == 0 or s == total})
        assert evaluations >= min(MIN_EVALS, total)


def _named(model: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    return list(model.named_parameters())


def test_selection_keeps_restores_and_round_trips_the_best() -> None:
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    sel = Selection(every=2, total_steps=6, keep_best=True)
    assert [s for s in range(1, 7) if sel.due(s)] == [2, 4, 6]
    weights: dict[int, torch.Tensor] = {}
    for step, bpt in ((2, 3.0), (4, 2.5), (6, float("nan"))):
        with torch.no_grad():
            model.weight.add_(1.0)
        weights[step] = model.weight.detach().clone()
        assert sel.record(step, bpt, _named(model)) == (step != 6)  # nan is never the best
    assert sel.best_step == 4 and sel.best_bpt == 2.5
    state = sel.state_dict()
    other = Selection(every=2, total_steps=6, keep_best=True)
    other.load_state_dict(state)
    assert other.restore(_named(model), last_step=6) == 4
    torch.testing.assert_close(model.weight.detach(), weights[4])
    summary = other.summary()
    assert summary["best_step"] == 4 and [s for s, _ in summary["curve"]] == [2, 4, 6]
    assert math.isnan(summary["curve"][-1][1])
    # the best being the last step, or keep_best off, changes nothing
    assert other.restore(_named(model), last_step=4) is None
    off = Selection(every=2, total_steps=6, keep_best=False)
    off.record(2, 1.0, _named(model))
    assert off.best_weights is None and off.restore(_named(model), last_step=6) is None
    other.load_state_dict(None)  # a checkpoint from before selection existed: nothing restored
    assert other.best_step == 4


def test_summary_thins_a_long_curve_but_keeps_first_best_and_last() -> None:
    model = torch.nn.Linear(2, 1)
    sel = Selection(every=1, total_steps=5000, keep_best=False)
    for step in range(1, 5001):
        sel.record(step, 2.0 if step == 1234 else 3.0 + step * 1e-6, _named(model))
    steps = [s for s, _ in sel.summary()["curve"]]
    assert len(steps) <= SUMMARY_POINTS and steps == sorted(steps)
    assert {1, 1234, 5000} <= set(steps) and sel.summary()["best_step"] == 1234


def _val_lines(root: Path) -> list[tuple[int, float]]:
    lines = (root / "output" / "data" / "metrics.jsonl").read_text().splitlines()
    recs = [json.loads(x) for x in lines if x.strip()]
    return [(int(r["step"]), float(r["val_bpt"])) for r in recs if "val_bpt" in r]


# 8 rows trained 30 epochs at a learning rate high enough that the tiny model's validation BPT
# (other sums) stops improving after ~15 epochs and jumps about after: the last step is not the best.
OVERFIT = {
    "scu": "off",
    "epochs": 30,
    "batch_size": 4,
    "grad_accum": 1,
    "learning_rate": 0.1,
    "lora_r": 16,
    "lr_scheduler": "constant",
    "lora_dropout": 0.0,
    "log_every": 5,
    "checkpoint_every": 1000,
    "task_eval_rows": 0,
}


@pytest.mark.slow
def test_keep_best_writes_the_best_validated_adapter(make_root: Callable[..., Path]) -> None:
    """Same seed and data, keep_best on and off: the same validation curve (evaluating changes no
    training step); on, the adapter written is the curve's minimum, an early step; off, the last.
    Fails if the best weights are not restored, or restored from the wrong step."""
    evals = {}
    for keep in (True, False):
        root = make_root(f"keep-{keep}", n_train=8, n_val=16, keep_best=keep, **OVERFIT)
        proc = run_entry(root)
        assert proc.returncode == 0, proc.stderr[-3000:]
        report = json.loads((root / "model" / "eval.json").read_text())
        sel = report["selection"]
        curve = [(int(s), float(b)) for s, b in sel["curve"]]
        assert [s for s, _ in curve] == list(range(2, 61, 2))  # an epoch = 2 steps; 60 steps
        logged = _val_lines(root)  # the same numbers in metrics.jsonl
        assert [s for s, _ in logged] == [s for s, _ in curve]
        assert [b for _, b in logged] == pytest.approx([b for _, b in curve], abs=1e-4)
        best_step, best = min(curve, key=lambda c: c[1])
        assert sel["best_step"] == best_step and best_step < 60
        assert curve[-1][1] > best + 0.01
        kept = report["adapter"]["bpt"]
        if keep:
            assert sel["selected_step"] == best_step
            assert kept == pytest.approx(best, abs=1e-4)
            assert f"keeping the adapter of step {best_step}" in proc.stdout
        else:
            assert sel["selected_step"] == 60
            assert kept == pytest.approx(curve[-1][1], abs=1e-4)
        evals[keep] = curve
    assert [b for _, b in evals[True]] == pytest.approx([b for _, b in evals[False]], rel=1e-6)


@pytest.mark.slow
def test_no_validation_data_means_no_evaluations(make_root: Callable[..., Path]) -> None:
    root = make_root("noval", n_train=16, n_val=0, validation_fraction=0.0, max_steps=6, batch_size=4)
    proc = run_entry(root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _val_lines(root) == []
    assert "selection" not in json.loads((root / "model" / "eval.json").read_text())


def test_validation_time_counts_in_no_windows_throughput() -> None:
    from scu.train_log import LogWindow

    now = [0.0]
    window = LogWindow(0, lambda: now[0])
    now[0] = 5.0  # 5 s of training steps
    with window.excluded():
        now[0] = 8.0  # a 3 s validation
    now[0] = 10.0  # 2 s more training
    assert now[0] - window.start == 7.0  # the next window's time: training only
