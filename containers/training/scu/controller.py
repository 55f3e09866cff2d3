"""The SCU controller for lambda: a positional PI on log(lambda) (torch-free, serialisable).

At each optimizer step, from that step's DataBPT and ParamBPT:

    D_hat = EMA(DataBPT)                      (alpha 0.1; ParamBPT is smooth and is not smoothed)
    S_hat = ParamBPT / (D_hat + ParamBPT)
    r     = ln(S_hat / S*)                     (relative error: the same gain for every S*)
    trend = ln ParamBPT - ln ParamBPT_prev     (clipped to +-1)
    e     = clip(r + horizon * max(trend, 0), -1, +1)  (S_hat predicted 2 steps ahead while the
                                                adapter grows: brakes before S_hat overshoots)
    I     = clip(I + Ki * (1 + max(0, min(r, e)) / gain_scale) * e, +-ln(lambda_max / lambda_min))
              unless |e| <= deadband (hold), during warm-up (frozen), while S_hat is below S* and
              the adapter grows to it by itself within closing_steps (r < 0 < r + closing_steps *
              trend: conditional integration), or lambda sits on a bound and e pushes further
              (anti-windup)
    ln lambda = clip(ln lambda_0 + Kp * e + I, ln lambda_min, ln lambda_max)

Above the target the integral gain grows with the error (gain_scale 0.2: 2.5x at r = 0.3), so a
short run reaches lambda* in a few steps; below it, it does not, because there the adapter is
usually still growing from B = 0 and a fast descent winds lambda far down. Measured on SmolLM2
(docs, 19 one-pass steps, S* 0.5): acting on r alone, S_hat overshot to 0.60 and was in band 0 %
of the last half; with the prediction, in band 100 % (lambda 0.018).

lambda_0 = 0.01 by default: the plain Gaussian-prior point lambda = 1 over-regularises the first
steps so hard (a fixed lambda = 1 holds S near 0.01 where lambda = 0 reaches 0.7 on SmolLM2) that
short runs never recover: measured at S* 0.5 on a 42-step sub-epoch run, lambda_0 = 1 ended 0.079
bits worse than lambda = 0 (S_hat reached only 0.2), lambda_0 = 0.01 0.009 bits. There is no leak: the integral is what holds the
target against a drifting plant. (The earlier incremental form lambda <- lambda * exp(Kp e + I)
integrated e twice, had no proportional action and limit-cycled; see tests/training/test_controller.)

``unreachable`` reports a target the loop cannot reach: +1 after lambda has sat on lambda_max for
``saturation_window`` consecutive post-warm-up steps with S_hat still above the deadband, -1 for
lambda_min with S_hat below it, else 0. ``in_band()`` (|ln(S_hat/S*)| <= band, 0.1 by default) is
what the engine reports as tracking; the smaller deadband only keeps noise out of the integral.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class ControllerConfig:
    target_s: float
    kp: float = 0.5
    ki: float = 0.2
    ema_alpha: float = 0.1
    deadband: float = 0.02  # log units: |e| <= deadband holds the integral
    band: float = 0.1  # log units: S_hat within S* * exp(+-band) is "in band" (reported)
    lambda_init: float = 0.01
    lambda_min: float = 1e-4
    lambda_max: float = 10.0
    warmup_steps: int = 0  # integration frozen for these many updates
    saturation_window: int = 20
    horizon: float = 2.0  # steps: the loop acts on S_hat predicted this far ahead (0: on S_hat now)
    closing_steps: float = 10.0  # the adapter reaching S* on its own within this many steps holds I
    gain_scale: float = 0.2  # log units: the integral gain grows as Ki * (1 + |e| / gain_scale)

    def __post_init__(self) -> None:
        if not 0.0 < self.target_s < 1.0:
            raise ValueError("target_s must be in (0, 1)")
        if not 0.0 < self.ema_alpha <= 1.0:
            raise ValueError("ema_alpha must be in (0, 1]")
        if not 0.0 < self.lambda_min <= self.lambda_max:
            raise ValueError("need 0 < lambda_min <= lambda_max")
        if (
            min(
                self.band,
                self.deadband,
                self.kp,
                self.ki,
                self.warmup_steps,
                self.horizon,
                self.closing_steps,
            )
            < 0
        ):
            raise ValueError("kp, ki, band, deadband, warmup_steps, horizon and closing_steps must be >= 0")
        if self.gain_scale <= 0:
            raise ValueError("gain_scale must be > 0")
        if self.saturation_window < 1:
            raise ValueError("saturation_window must be >= 1")

    @property
    def i_max(self) -> float:
        return math.log(self.lambda_max / self.lambda_min)


@dataclass
class ControllerState:
    lam: float
    integral: float = 0.0
    data_ema: float | None = None
    s_hat: float | None = None
    updates: int = 0
    skipped: int = 0
    at_bound: int = 0  # consecutive post-warm-up updates with lambda on a bound, pushing out
    param_bpt: float = 0.0  # the last update's ParamBPT (its trend gives the predicted error)

    def to_dict(self) -> dict[str, float | int | None]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, float | int | None]) -> ControllerState:
        def opt(key: str) -> float | None:
            value = data.get(key)
            return None if value is None else float(value)

        if "data_ema" not in data:
            raise ValueError("controller state from an older engine (no data_ema): cannot resume it")
        return cls(
            lam=float(data["lam"]),  # type: ignore[arg-type]
            integral=float(data.get("integral") or 0.0),
            data_ema=opt("data_ema"),
            s_hat=opt("s_hat"),
            updates=int(data.get("updates") or 0),
            skipped=int(data.get("skipped") or 0),
            at_bound=int(data.get("at_bound") or 0),
            param_bpt=float(data.get("param_bpt") or 0.0),
        )


def raw_error(s_hat: float, target: float) -> float:
    """ln(S_hat / S*), -inf while S_hat is 0."""
    return math.log(s_hat / target) if s_hat > 0 else -math.inf


def s_ratio(data_bpt: float, param_bpt: float) -> float:
    """S = ParamBPT / (DataBPT + ParamBPT)."""
    total = data_bpt + param_bpt
    return param_bpt / total if total > 0 else float("nan")


@dataclass
class PIController:
    config: ControllerConfig
    state: ControllerState = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.state is None:
            self.state = ControllerState(lam=self._lambda(0.0, 0.0))

    @property
    def lam(self) -> float:
        return self.state.lam

    @property
    def log_error(self) -> float | None:
        """ln(S_hat / S*) (unclipped; -inf while ParamBPT is 0), None before the first update."""
        s_hat = self.state.s_hat
        return None if s_hat is None else raw_error(s_hat, self.config.target_s)

    def in_band(self) -> bool:
        err = self.log_error
        return err is not None and abs(err) <= self.config.band

    @property
    def unreachable(self) -> int:
        """+1 / -1 while lambda has sat on lambda_max / lambda_min for a whole window, else 0."""
        if self.state.at_bound < self.config.saturation_window:
            return 0
        return 1 if self.state.lam >= self.config.lambda_max else -1

    def _lambda(self, err: float, integral: float) -> float:
        cfg = self.config
        log_lam = math.log(cfg.lambda_init) + cfg.kp * err + integral
        return min(max(math.exp(log_lam), cfg.lambda_min), cfg.lambda_max)

    def update(self, data_bpt: float, param_bpt: float) -> float:
        """Feed the last optimizer step's DataBPT and ParamBPT; returns lambda for the next step."""
        cfg, st = self.config, self.state
        if not (math.isfinite(data_bpt) and math.isfinite(param_bpt)) or data_bpt < 0 or param_bpt < 0:
            st.skipped += 1
            return st.lam
        st.data_ema = (
            data_bpt
            if st.data_ema is None
            else cfg.ema_alpha * data_bpt + (1.0 - cfg.ema_alpha) * st.data_ema
        )
        st.s_hat = s_ratio(st.data_ema, param_bpt)
        if not math.isfinite(st.s_hat):  # DataBPT and ParamBPT both 0: nothing to act on
            st.skipped += 1
            return st.lam
        st.updates += 1
        trend = self._trend(param_bpt)
        raw = raw_error(st.s_hat, cfg.target_s)
        # brake early, release late: only growth is extrapolated (above S*, a shrinking adapter
        # slows as the step size decays, and extrapolating its shrinkage left S_hat above the
        # band on SmolLM2's small data)
        err = min(max(raw + cfg.horizon * max(trend, 0.0), -1.0), 1.0)
        warm = st.updates <= cfg.warmup_steps
        pushing_up = st.lam >= cfg.lambda_max and err > cfg.deadband
        pushing_down = st.lam <= cfg.lambda_min and err < -cfg.deadband
        # conditional integration: below S* while the adapter grows to it on its own within
        # closing_steps (but not within the horizon), lambda is not what holds S back, and
        # integrating would wind lambda down (on a simulated 150-step run, 40 rising steps wound it
        # 4x below where it had to be). Above S* it always integrates: S_hat on SmolLM2's small
        # data shrank toward S* too slowly to get there while the step size decayed.
        closing = raw < 0 and err < 0 and raw + cfg.closing_steps * trend > 0
        if not (warm or closing) and abs(err) > cfg.deadband and not (pushing_up or pushing_down):
            # above S* (now, not only in the prediction): the further, the faster. Only upward:
            # below S* the adapter is usually still growing, and a fast descent winds lambda down
            # to where it takes the rest of a run to climb back (simulated 150-step run)
            far = min(raw, err) / cfg.gain_scale if raw > 0 and err > 0 else 0.0
            gain = cfg.ki * (1.0 + far)
            st.integral = min(max(st.integral + gain * err, -cfg.i_max), cfg.i_max)
        st.at_bound = st.at_bound + 1 if (pushing_up or pushing_down) and not warm else 0
        st.lam = self._lambda(err, st.integral)
        return st.lam

    def _trend(self, param_bpt: float) -> float:
        """This step's change of ln ParamBPT (clipped to +-1; 0 while either ParamBPT is 0).

        ParamBPT is smooth, so the loop acts on S_hat predicted ``horizon`` steps ahead,
        ln(S_hat/S*) + horizon * trend: it brakes the adapter's growth before S_hat reaches the
        target (Adam's momentum keeps it growing for steps after lambda rises) without amplifying
        DataBPT noise, and the prediction grows with ParamBPT, so the feedback stays negative."""
        st = self.state
        trend = 0.0
        if st.param_bpt > 0 and param_bpt > 0:
            trend = min(max(math.log(param_bpt) - math.log(st.param_bpt), -1.0), 1.0)
        st.param_bpt = param_bpt
        return trend

    def state_dict(self) -> dict[str, float | int | None]:
        return self.state.to_dict()

    def load_state_dict(self, data: dict[str, float | int | None]) -> None:
        self.state = ControllerState.from_dict(data)
