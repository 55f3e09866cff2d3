"""What the trainer logs: one record per ``log_every`` optimizer steps, averaged over the steps since
the last record, printed in the ``key=value`` form of :mod:`scu.metrics_format` and appended to
``metrics.jsonl`` (rank 0 only)."""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from scu.config import ResolvedConfig
from scu.controller import s_ratio
from scu.controllers import LambdaController
from scu.metrics_format import format_train_line
from scu.paths import ContractPaths
from scu.regulariser import regularised_loss

CLOCK_ENV = "FASTUNER_SCU_CLOCK"  # "process": tokens_per_s per CPU second (benchmarks on busy hosts)


def make_clock() -> Callable[[], float]:
    return time.process_time if os.environ.get(CLOCK_ENV) == "process" else time.perf_counter


@dataclass(frozen=True)
class StepOutcome:
    """One optimizer step's numbers, the same on every rank."""

    data_bpt: float
    param_bpt: float  # of the adapter after the step
    lam: float  # the lambda the step used
    lr: float
    tokens: float  # non-padding input tokens over all ranks

    @property
    def s(self) -> float:
        return s_ratio(self.data_bpt, self.param_bpt)

    @property
    def loss_bpt(self) -> float:
        return regularised_loss(self.data_bpt, self.param_bpt, self.lam)


class MetricsWriter:
    def __init__(self, paths: ContractPaths, enabled: bool) -> None:
        self.paths = paths
        self.enabled = enabled

    def truncate_after(self, step: int) -> None:
        """On resume, drop lines logged after the checkpoint we restart from."""
        path = self.paths.metrics_file
        if not self.enabled or not path.exists():
            return
        keep = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
        keep = [ln for ln in keep if json.loads(ln).get("step", 0) <= step]
        path.write_text("".join(ln + "\n" for ln in keep), encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        print(format_train_line(record), flush=True)
        self.paths.output_data_dir.mkdir(parents=True, exist_ok=True)
        with self.paths.metrics_file.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")


class LogWindow:
    """Sums over the steps since the last record, and the timing of the run since (re)start."""

    def __init__(self, start_step: int, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.run_start, self.run_start_step = clock(), start_step
        self._reset()

    def _reset(self) -> None:
        self.loss_bpt = self.data_bpt = self.tokens = 0.0
        self.n = 0
        self.start = self.clock()

    @contextlib.contextmanager
    def excluded(self) -> Iterator[None]:
        """Time spent inside (a validation) counts in no window's throughput."""
        t0 = self.clock()
        try:
            yield
        finally:
            self.start += self.clock() - t0

    def add(self, step: StepOutcome) -> None:
        self.loss_bpt += step.loss_bpt
        self.data_bpt += step.data_bpt
        self.n += 1
        self.tokens += step.tokens

    def record(
        self,
        cfg: ResolvedConfig,
        step: int,
        total_steps: int,
        epoch: float,
        last: StepOutcome,
        controller: LambdaController,
    ) -> dict[str, Any]:
        """The metrics record at ``step``; it ends this window."""
        now = self.clock()
        n = max(self.n, 1)
        per_step = (now - self.run_start) / max(step - self.run_start_step, 1)
        s_hat = controller.s_hat
        out = {
            "step": step,
            "epoch": epoch,
            "loss_bpt": self.loss_bpt / n,
            "data_bpt": self.data_bpt / n,
            "param_bpt": last.param_bpt,
            "s": last.s,
            "s_hat": s_hat if s_hat is not None else last.s,
            "target_s": cfg.target_s,
            "band": cfg.band,
            "lambda": controller.lam,
            "unreachable": controller.unreachable,
            "lr": last.lr,
            "tokens_per_s": self.tokens / max(now - self.start, 1e-9),
            "eta_s": round(per_step * (total_steps - step)),
        }
        self._reset()
        return out
