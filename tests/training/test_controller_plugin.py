"""A lambda controller defined only in this file plugs into the real engine: registered under a name,
accepted by the hyperparameters, driven by the trainer, saved in the checkpoints. Nothing under
api/ or containers/ knows it."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from scu import controllers
from scu.config import ResolvedConfig
from scu.controllers import Measurements
from scu.hyperparams import HyperparameterError, parse_hyperparameters
from scu.paths import EXIT_OK

NAME = "test-step"


class StepLambda:
    """A step function of the optimizer step: lambda = 0 until ``switch_at`` steps are done, then ``high``."""

    def __init__(self, switch_at: int, high: float) -> None:
        self.switch_at, self.high = switch_at, high
        self.steps = 0
        self.history: list[float] = []  # lambda after each update: what the metrics must show

    @property
    def lam(self) -> float:
        return self.high if self.steps >= self.switch_at else 0.0

    @property
    def s_hat(self) -> float | None:
        return None

    @property
    def unreachable(self) -> int:
        return 0

    def update(self, measured: Measurements) -> str | None:
        assert measured.step == self.steps + 1 and measured.data_bpt > 0
        self.steps = measured.step
        self.history.append(self.lam)
        return None

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps = int(state["steps"])


@pytest.fixture
def made() -> Iterator[list[StepLambda]]:
    """Registers ``scu=test-step`` for one test; the list collects the controllers it builds."""
    built: list[StepLambda] = []

    def factory(cfg: ResolvedConfig, total_steps: int) -> StepLambda:
        built.append(StepLambda(switch_at=total_steps // 2, high=cfg.lambda_max))
        return built[-1]

    controllers.register(NAME, factory)
    yield built
    controllers.unregister(NAME)


def test_the_hyperparameters_accept_only_registered_names(made: list[StepLambda]) -> None:
    assert parse_hyperparameters({"scu": "Test-Step"}).scu == NAME
    assert parse_hyperparameters({}).scu == "on"  # the default is unchanged
    controllers.unregister(NAME)
    with pytest.raises(HyperparameterError, match=r"scu: .*registered controller: fixed, off, on"):
        parse_hyperparameters({"scu": NAME})


@pytest.mark.slow
def test_a_test_only_controller_drives_the_real_trainer(
    made: list[StepLambda], make_root: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from scu.entry import run_train

    root = make_root(scu=NAME, max_steps=6, log_every=1, checkpoint_every=100, batch_size=4, lambda_max=2.0)
    monkeypatch.setenv("OPT_ML_ROOT", str(root))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert run_train() == EXIT_OK, (root / "output" / "failure").read_text()

    (controller,) = made
    records = [json.loads(x) for x in (root / "model" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
    assert [r["lambda"] for r in records] == controller.history == [0.0, 0.0, 2.0, 2.0, 2.0, 2.0]
    # Each step's loss uses the lambda the controller gave before it: DataBPT + lambda * ParamBPT.
    used = [0.0, *controller.history[:-1]]
    for record, lam in zip(records, used, strict=True):
        expected = record["data_bpt"] + lam * record["param_bpt"]
        assert record["loss_bpt"] == pytest.approx(expected, rel=1e-9)
        assert record["unreachable"] == 0 and record["s_hat"] == record["s"]  # s_hat None: S itself
    state = torch.load(root / "checkpoints" / "step-0000006" / "trainer_state.pt", weights_only=False)
    assert state["controller"] == {"steps": 6}
    assert json.loads((root / "model" / "eval.json").read_text())["scu"] == NAME
