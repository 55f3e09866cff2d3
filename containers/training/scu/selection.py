"""Validation during training and the choice of the adapter to keep.

Every ``eval_every`` optimizer steps (and at the last step) the trainer measures the held-out BPT of
the adapter on the validation examples. With ``keep_best`` the adapter written at the end is the
evaluated one with the lowest validation BPT, not necessarily the last: on small data trained for
many epochs the adapter that generalises best is often an early one (the quality benchmark's
11 rows x 15 epochs: lambda = 0 is best at epoch 2 and 2.7 bits worse by the end). The state
(the curve, the best step and its weights) travels in the checkpoint, so a resumed run keeps the
same choice. Torch-only: no control-plane imports."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch

MIN_EVALS = 4  # automatic interval: at least this many evaluations a run, and one an epoch
SUMMARY_POINTS = 200  # eval.json's curve at most this long (metrics.jsonl has every point)


def eval_interval(requested: int | None, steps_per_epoch: int, total_steps: int) -> int:
    """Optimizer steps between validation evaluations: ``requested`` when set, else one epoch,
    shortened so that a run of few epochs is still evaluated ``MIN_EVALS`` times."""
    if requested:
        return requested
    return max(1, min(steps_per_epoch, math.ceil(total_steps / MIN_EVALS)))


@dataclass
class Selection:
    """The validation curve so far and the best adapter on it (weights on the CPU)."""

    every: int
    total_steps: int
    keep_best: bool
    curve: list[tuple[int, float]] = field(default_factory=list)
    best_step: int | None = None
    best_bpt: float = math.inf
    best_weights: dict[str, torch.Tensor] | None = None

    def due(self, step: int) -> bool:
        return step % self.every == 0 or step >= self.total_steps

    def record(self, step: int, bpt: float, params: Iterable[tuple[str, torch.nn.Parameter]]) -> bool:
        """Add ``step``'s validation BPT; True when it is the best so far (a non-finite one never
        is). With ``keep_best`` the adapter's weights are copied when it is."""
        self.curve.append((step, bpt))
        if not (math.isfinite(bpt) and bpt < self.best_bpt):
            return False
        self.best_step, self.best_bpt = step, bpt
        if self.keep_best:
            self.best_weights = {name: p.detach().to("cpu", copy=True) for name, p in params}
        return True

    def restore(self, params: Iterable[tuple[str, torch.nn.Parameter]], last_step: int) -> int | None:
        """Load the best adapter into ``params`` when it is not the last step's; returns its step
        (None when nothing changed)."""
        if not self.keep_best or self.best_weights is None or self.best_step in (None, last_step):
            return None
        named = dict(params)
        if set(named) != set(self.best_weights):
            raise ValueError("the saved best adapter does not match the model's trainable parameters")
        with torch.no_grad():
            for name, p in named.items():
                p.copy_(self.best_weights[name].to(p.device, p.dtype))
        return self.best_step

    def summary(self) -> dict[str, Any]:
        """What eval.json reports about the choice; a curve longer than ``SUMMARY_POINTS`` is
        thinned evenly, keeping the first, best and last points."""
        points = self.curve
        if len(points) > SUMMARY_POINTS:
            stride = math.ceil(len(points) / (SUMMARY_POINTS - 2))
            keep = set(range(0, len(points), stride)) | {len(points) - 1}
            keep |= {i for i, (s, _) in enumerate(points) if s == self.best_step}
            points = [points[i] for i in sorted(keep)]
        return {
            "eval_every": self.every,
            "keep_best": self.keep_best,
            "curve": [[s, b] for s, b in points],
            "best_step": self.best_step,
            "best_bpt": self.best_bpt if math.isfinite(self.best_bpt) else None,
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "curve": list(self.curve),
            "best_step": self.best_step,
            "best_bpt": self.best_bpt,
            "best_weights": self.best_weights,
        }

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        if not state:
            return
        self.curve = [(int(s), float(b)) for s, b in state.get("curve", [])]
        self.best_step = state.get("best_step")
        self.best_bpt = float(state.get("best_bpt", math.inf))
        self.best_weights = state.get("best_weights")
