"""The built-in lambda controllers behind scu.controllers' interface: on (the PI loop) warns once
per unreachable episode; off and fixed hold lambda and still track S_hat; all round-trip their state."""

from __future__ import annotations

import pytest
from scu.controller import ControllerConfig, PIController
from scu.controllers import ConstantLambda, LambdaController, Measurements, PILambda


def pi(**kw: float) -> PIController:
    return PIController(ControllerConfig(target_s=0.05, saturation_window=5, **kw))  # type: ignore[arg-type]


def feed(c: LambdaController, s: float, steps: int, start: int = 1) -> list[str]:
    """``steps`` updates at S = ``s`` (DataBPT 3); the warnings they returned."""
    notes = []
    for step in range(start, start + steps):
        note = c.update(Measurements(step, 100, 3.0, 3.0 * s / (1.0 - s)))
        if note:
            notes.append(note)
    return notes


def test_on_warns_once_when_the_target_is_out_of_reach_and_once_when_back() -> None:
    c = PILambda(pi(lambda_max=0.02))
    notes = feed(c, 0.5, 30)  # S ten times the target: lambda climbs to its maximum and stays
    assert c.lam == 0.02 and c.unreachable == 1
    assert len(notes) == 1 and notes[0].startswith("target S*=0.05 unreachable, lambda pinned at its maximum")
    back = feed(c, 0.001, 30, start=31)
    assert back[0].startswith("lambda left its bound") and c.unreachable != 1


def test_on_resumed_on_a_bound_does_not_warn_again() -> None:
    first = PILambda(pi(lambda_max=0.02))
    feed(first, 0.5, 30)
    resumed = PILambda(pi(lambda_max=0.02))
    resumed.load_state_dict(first.state_dict())
    assert resumed.lam == first.lam and resumed.s_hat == first.s_hat
    assert feed(resumed, 0.5, 5, start=31) == []


@pytest.mark.parametrize("lam", [0.0, 0.7])
def test_off_and_fixed_hold_lambda_and_track_s_hat_like_the_pi_loop(lam: float) -> None:
    c, reference = ConstantLambda(lam, pi()), pi()
    assert feed(c, 0.3, 10) == [] and c.lam == lam and c.unreachable == 0
    for _ in range(10):
        reference.update(3.0, 3.0 * 0.3 / 0.7)
    assert c.s_hat == pytest.approx(reference.state.s_hat)
    again = ConstantLambda(lam, pi())
    again.load_state_dict(c.state_dict())
    assert again.s_hat == c.s_hat and again.lam == lam
