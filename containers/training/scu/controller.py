"""The SCU controller for lambda: a positional PI on log(lambda) (torch-free, serialisable).

At each optimizer step, from that step's DataBPT and ParamBPT:

    D_hat = EMA(DataBPT)                      (alpha 0.1; ParamBPT is smooth and is not smoothed)
    S_hat = ParamBPT / (D_hat + ParamBPT)
    e     = clip(ln(S_hat / S*), -1, +1)       (relative error: the same gain for every S*)
    I     = clip(I + Ki * e, +-ln(lambda_max / lambda_min))
              unless |e| <= deadband (hold), during warm-up (frozen), or lambda sits on a bound and
              e pushes further (anti-windup)
    ln lambda = clip(ln lambda_0 + Kp * e + I, ln lambda_min, ln lambda_max)

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

    def __post_init__(self) -> None:
        if not 0.0 < self.target_s < 1.0:
            raise ValueError("target_s must be in (0, 1)")
        if not 0.0 < self.ema_alpha <= 1.0:
            raise ValueError("ema_alpha must be in (0, 1]")
        if not 0.0 < self.lambda_min <= self.lambda_max:
            raise ValueError("need 0 < lambda_min <= lambda_max")
        if self.band < 0 or self.deadband < 0 or self.kp < 0 or self.ki < 0 or self.warmup_steps < 0:
            raise ValueError("kp, ki, deadband and warmup_steps must be >= 0")
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
        )


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
        if s_hat is None:
            return None
        return math.log(s_hat / self.config.target_s) if s_hat > 0 else -math.inf

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
        raw = self.log_error
        assert raw is not None
        err = min(max(raw, -1.0), 1.0)
        warm = st.updates <= cfg.warmup_steps
        pushing_up = st.lam >= cfg.lambda_max and err > cfg.deadband
        pushing_down = st.lam <= cfg.lambda_min and err < -cfg.deadband
        if not warm and abs(err) > cfg.deadband and not (pushing_up or pushing_down):
            st.integral = min(max(st.integral + cfg.ki * err, -cfg.i_max), cfg.i_max)
        st.at_bound = st.at_bound + 1 if (pushing_up or pushing_down) and not warm else 0
        st.lam = self._lambda(err, st.integral)
        return st.lam

    def state_dict(self) -> dict[str, float | int | None]:
        return self.state.to_dict()

    def load_state_dict(self, data: dict[str, float | int | None]) -> None:
        self.state = ControllerState.from_dict(data)
