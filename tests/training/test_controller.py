"""The SCU controller: a positional PI on log(lambda) with a relative (log-ratio) error."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st
from scu.controller import ControllerConfig, ControllerState, PIController, s_ratio

targets = st.floats(min_value=0.003, max_value=0.2)
data_bpts = st.floats(min_value=0.1, max_value=8.0)


def fresh(target: float, **kw: float) -> PIController:
    return PIController(ControllerConfig(target_s=target, **kw))  # type: ignore[arg-type]


def param_for(target: float, data_bpt: float, ratio: float) -> float:
    """The ParamBPT that makes S = ratio * target at this DataBPT."""
    s = min(ratio * target, 0.999)
    return data_bpt * s / (1.0 - s)


@given(target=targets, d=data_bpts, ratio=st.floats(1.3, 50.0))
def test_s_above_band_raises_lambda(target: float, d: float, ratio: float) -> None:
    c = fresh(target)
    before = c.lam
    after = c.update(d, param_for(target, d, ratio))
    assert after > before


@given(target=targets, d=data_bpts, ratio=st.floats(0.0, 0.75))
def test_s_below_band_lowers_lambda(target: float, d: float, ratio: float) -> None:
    c = fresh(target)
    before = c.lam
    after = c.update(d, param_for(target, d, ratio))
    assert after < before


def test_error_is_relative_so_the_gain_does_not_depend_on_the_target() -> None:
    """S twice the target moves lambda by the same factor whatever S* is."""
    moves = []
    for target in (0.003, 0.03, 0.2):
        c = fresh(target)
        moves.append(c.update(3.0, param_for(target, 3.0, 2.0)) / c.config.lambda_init)
    assert moves[0] == pytest.approx(moves[1]) == pytest.approx(moves[2])


def test_zero_param_bpt_is_a_clipped_error_not_a_crash() -> None:
    c = fresh(0.05)
    lam = c.update(4.0, 0.0)  # B = 0 at init: S = 0, ln(S/S*) = -inf, clipped to -1
    assert c.log_error == -math.inf
    cfg = c.config
    assert lam == pytest.approx(cfg.lambda_init * math.exp(-cfg.kp - cfg.ki))  # Kp*e + Ki*e, e = -1


@given(
    target=targets,
    seq=st.lists(st.tuples(data_bpts, st.floats(0.0, 50.0)), min_size=1, max_size=200),
)
def test_bounds_hold_for_any_sequence(target: float, seq: list[tuple[float, float]]) -> None:
    c = fresh(target)
    for d, p in seq:
        c.update(d, p)
        assert c.config.lambda_min <= c.lam <= c.config.lambda_max
        assert abs(c.state.integral) <= c.config.i_max + 1e-12


@given(
    target=targets,
    d=data_bpts,
    r_a=st.floats(0.0, 20.0),
    r_b=st.floats(0.0, 20.0),
    integral=st.floats(-9.0, 9.0),
    ema=st.one_of(st.none(), data_bpts),
)
def test_update_is_monotone_in_param_bpt(
    target: float, d: float, r_a: float, r_b: float, integral: float, ema: float | None
) -> None:
    """Negative feedback from any state: a larger ParamBPT never gives a smaller lambda."""
    lo, hi = sorted((r_a, r_b))
    results = []
    for ratio in (lo, hi):
        c = fresh(target)
        c.state = ControllerState(lam=1.0, integral=integral, data_ema=ema, updates=5)
        results.append(c.update(d, param_for(target, d, ratio)))
    assert results[0] <= results[1] + 1e-12


def test_positional_form_has_proportional_action() -> None:
    """lambda = lambda0 * exp(Kp e + I): with Ki = 0 the error moves lambda at once and a zero
    error brings it straight back (an incremental form would keep the move: no P action)."""
    c = fresh(0.05, ki=0.0, lambda_init=1.0, horizon=0.0)
    up = c.update(3.0, param_for(0.05, 3.0, math.e))  # e = +1 (EMA of a constant DataBPT)
    assert up == pytest.approx(math.exp(0.5))
    back = c.update(3.0, param_for(0.05, 3.0, 1.0))
    assert back == pytest.approx(1.0)


def test_deadband_holds_the_integral() -> None:
    c = fresh(0.05)
    c.state = ControllerState(lam=c.lam, integral=0.7, data_ema=3.0, updates=10)
    c.update(3.0, param_for(0.05, 3.0, math.exp(0.01)))
    assert c.state.integral == 0.7
    assert c.in_band()


def test_warmup_freezes_the_integral() -> None:
    c = fresh(0.05, warmup_steps=5)
    for _ in range(5):
        c.update(3.0, 0.0)
    assert c.state.integral == 0.0
    assert c.lam == pytest.approx(c.config.lambda_init * math.exp(-c.config.kp))
    c.update(3.0, 0.0)
    assert c.state.integral == pytest.approx(-c.config.ki)  # below S*: the plain gain


@given(target=targets, n=st.integers(60, 300))
def test_anti_windup_at_upper_bound(target: float, n: int) -> None:
    c = fresh(target, saturation_window=20)
    for _ in range(n):
        c.update(1.0, 1e6)  # S ~ 1: far above any target; lambda climbs to lambda_max and sits
    assert c.lam == c.config.lambda_max
    # the integral stopped where lambda reached the bound: it did not keep winding up
    cfg = c.config
    max_step = cfg.ki * (1 + 1 / cfg.gain_scale)  # the integral gain at |e| = 1
    assert c.state.integral <= math.log(cfg.lambda_max / cfg.lambda_init) - cfg.kp + max_step + 1e-9
    assert c.unreachable == 1
    # so lambda leaves the bound within a few steps once S drops below the target
    for _ in range(8):
        c.update(1.0, 0.0)
    assert c.lam < c.config.lambda_max
    assert c.unreachable == 0


def test_unreachable_at_lower_bound_and_not_before_a_window() -> None:
    c = fresh(0.05, saturation_window=20)
    seen = []
    for _ in range(200):
        c.update(3.0, 0.0)
        seen.append(c.unreachable)
    assert c.lam == c.config.lambda_min
    assert seen[-1] == -1
    first = seen.index(-1)
    assert all(x == 0 for x in seen[:first]) and first >= 20


def test_non_finite_or_negative_inputs_are_skipped() -> None:
    c = fresh(0.02)
    for d, p in ((math.nan, 0.1), (3.0, math.inf), (-1.0, 0.1), (0.0, 0.0)):
        assert c.update(d, p) == pytest.approx(c.config.lambda_init)
    assert c.state.skipped == 4 and c.state.updates == 0


def test_state_round_trip_and_old_state_refused() -> None:
    c = fresh(0.02)
    for p in (0.5, 0.3, 0.1):
        c.update(3.0, p)
    d = fresh(0.02)
    d.load_state_dict(c.state_dict())
    assert d.state == c.state
    assert d.update(3.0, 0.2) == c.update(3.0, 0.2)
    with pytest.raises(ValueError, match="older engine"):
        d.load_state_dict({"lam": 1.0, "integral": 0.0, "s_hat": 0.1, "updates": 3, "skipped": 0})


def _plant_run(rng: random.Random, steps: int = 2000) -> tuple[bool, float, dict[str, float]]:
    """Simulated training: DataBPT d0 with 5 % per-step noise; ParamBPT starts at 0 (B = 0) and relaxes
    at rate ``lag`` toward P0 / (1 + gain * lambda), so S* is reached at lambda_star. Returns (settled:
    S_hat in band over the last quarter, lambda max/min over the last quarter without noise, case)."""
    case = {
        "target": math.exp(rng.uniform(math.log(0.003), math.log(0.2))),
        "lag": rng.uniform(0.02, 0.5),
        "lam_star": math.exp(rng.uniform(math.log(0.01), math.log(5.0))),
        "gain": rng.uniform(0.5, 5.0),
        "d0": rng.uniform(1.0, 5.0),
    }
    p_star = case["d0"] * case["target"] / (1 - case["target"])
    p0 = p_star * (1 + case["gain"] * case["lam_star"])
    results = []
    for noise in (0.05, 0.0):
        c = PIController(ControllerConfig(target_s=case["target"], warmup_steps=steps // 10))
        p, inside, lams = 0.0, [], []
        for _ in range(steps):
            p += case["lag"] * (p0 / (1 + case["gain"] * c.lam) - p)
            c.update(case["d0"] * (1 + noise * rng.gauss(0.0, 1.0)), p)
            inside.append(c.in_band())
            lams.append(c.lam)
        tail = slice(3 * steps // 4, None)
        results.append((all(inside[tail]), max(lams[tail]) / min(lams[tail])))
    (settled_noisy, _), (settled_clean, swing) = results
    return settled_noisy and settled_clean, swing, case


@pytest.mark.slow
def test_settles_on_simulated_plant_in_at_least_99_percent_of_300_cases() -> None:
    """S* 0.003-0.2, lag 0.02-0.5, lambda* 0.01-5, plant gain 0.5-5, 5 % DataBPT noise: S_hat ends in
    band, and without noise lambda is constant at the end (no limit cycle)."""
    rng = random.Random(20261130)
    runs = [_plant_run(rng) for _ in range(300)]
    settled = [r for r in runs if r[0]]
    failed = [r[2] for r in runs if not r[0]]
    assert len(settled) >= 297, failed[:5]
    cycling = [r[2] for r in settled if r[1] > 1.001]
    assert not cycling, cycling[:5]


def test_s_ratio() -> None:
    assert s_ratio(3.0, 1.0) == 0.25
    assert math.isnan(s_ratio(0.0, 0.0))


def test_a_growing_adapter_raises_lambda_before_s_hat_reaches_the_target() -> None:
    """The loop acts on S_hat predicted ``horizon`` steps ahead from ParamBPT's trend: below the
    target but growing 30 % a step, lambda already rises (on S_hat alone it would fall)."""
    moves = {}
    for horizon in (2.0, 0.0):
        c = fresh(0.5, horizon=horizon)
        c.state = ControllerState(lam=c.lam, data_ema=4.0, updates=10, param_bpt=2.0 / 1.3)
        before = c.lam
        moves[horizon] = c.update(4.0, 2.0) / before  # S_hat = 1/3: ln(S_hat/S*) = -0.41
    assert moves[2.0] > 1.0 > moves[0.0]


def test_integral_holds_while_the_adapter_closes_the_gap_itself() -> None:
    """Below the target but growing fast enough to reach it within ``closing_steps``: lambda is not
    what holds S back, so the integral does not wind down (it would without the rule)."""
    held = {}
    for closing in (10.0, 0.0):
        c = fresh(0.5, closing_steps=closing, horizon=0.0)
        c.state = ControllerState(lam=c.lam, integral=0.3, data_ema=4.0, updates=10, param_bpt=2.0 / 1.1)
        c.update(4.0, 2.0)  # ln(S_hat/S*) = -0.41, trend +0.095 a step: there in ~4 steps
        held[closing] = c.state.integral
    assert held[10.0] == 0.3
    assert held[0.0] < 0.3


def test_integral_gain_grows_with_the_error_above_the_target_only() -> None:
    """Above S*, I += Ki * (1 + e / gain_scale) * e: the further, the faster; below S*, Ki * e."""
    steps = []
    for ratio in (math.exp(0.1), math.exp(0.6), math.exp(-0.6)):
        c = fresh(0.05, horizon=0.0)
        c.state = ControllerState(lam=c.lam, data_ema=3.0, updates=10)
        c.update(3.0, param_for(0.05, 3.0, ratio))
        steps.append(c.state.integral)
    ki, scale = c.config.ki, c.config.gain_scale
    assert steps[0] == pytest.approx(ki * (1 + 0.1 / scale) * 0.1, rel=1e-6)
    assert steps[1] == pytest.approx(ki * (1 + 0.6 / scale) * 0.6, rel=1e-6)
    assert steps[2] == pytest.approx(-ki * 0.6, rel=1e-6)


def _growth_run(steps: int, horizon: float, seed: int) -> float:
    """A training-like plant fitted to SmolLM2-135M's measured ParamBPT (docs, 19 one-pass steps, S*
    0.5, lambda = 0 and three lambda paths): the adapter size w grows from 0 with Adam-like momentum
    and a linearly decaying step, ParamBPT = w^2; the penalty pulls w back in proportion to lambda.
    Returns the fraction of the last half of the steps with S_hat in band."""
    rng = random.Random(seed)
    c = PIController(ControllerConfig(target_s=0.5, warmup_steps=math.ceil(0.1 * steps), horizon=horizon))
    w = m = 0.0
    step_size = 0.4 * min(1.0, 28.5 / steps)
    inside = []
    for t in range(steps):
        pull = 1.0 - w / 5.0 - c.lam * w / 0.05
        m = 0.9 * m + 0.1 * min(max(pull, -1.0), 1.0)
        w = max(0.0, w + step_size * (steps - t) / steps * m / (1.0 - 0.9 ** (t + 1)))
        c.update(4.5 * (1.0 + 0.15 * rng.gauss(0.0, 1.0)), w * w)
        inside.append(c.in_band())
    half = inside[steps // 2 :]
    return sum(half) / len(half)


@pytest.mark.parametrize("steps", [19, 60, 150])
def test_holds_the_target_on_a_training_like_plant(steps: int) -> None:
    """S_hat in band for >= 80 % of the last half, as the quality benchmark asks (acting on S_hat
    alone, without the prediction, the 19-step run is in band 20-30 %). Not met everywhere: this
    plant stretched to 30 steps is in band 53-100 % over the 5 seeds (lambda* moves as the step
    decays), and with lambda* 2x lower or higher than fitted the 19-step run misses too."""
    assert min(_growth_run(steps, 2.0, seed) for seed in range(5)) >= 0.8
    if steps == 19:
        assert max(_growth_run(steps, 0.0, seed) for seed in range(5)) < 0.8


def test_above_the_target_the_integral_keeps_rising_while_the_adapter_shrinks() -> None:
    """Conditional integration holds only below S*: above it, an adapter shrinking toward S* (too
    slowly, as the step size decays) still raises lambda's integral."""
    c = fresh(0.5, horizon=0.0)
    c.state = ControllerState(lam=c.lam, integral=0.3, data_ema=2.0, updates=10, param_bpt=5.0 / 0.95)
    c.update(2.0, 5.0)  # S_hat = 0.71: ln(S_hat/S*) = +0.36, trend -0.05 a step: there in ~7 steps
    assert c.state.integral > 0.3


def test_only_growth_is_extrapolated() -> None:
    """Brake early, release late: above S* a shrinking adapter does not lower the error (its
    shrinkage slows as the step size decays); a growing one below S* raises it."""
    lams = {}
    for horizon in (2.0, 0.0):
        c = fresh(0.5, horizon=horizon)
        c.state = ControllerState(lam=c.lam, data_ema=2.0, updates=10, param_bpt=5.0 / 0.8)
        lams[horizon] = c.update(2.0, 5.0)  # above S*, ParamBPT -20 % this step
    assert lams[2.0] == lams[0.0]
