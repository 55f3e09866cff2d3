"""The SCU PI controller for lambda (torch-free, serialisable).

At each optimizer step: S_hat = a*S + (1-a)*S_hat; e = S_hat - S*. Inside the deadband lambda is
held and the integral leaks; outside it the integral leaks and integrates (clamped to +-i_max,
frozen when lambda sits on a bound and e pushes further: anti-windup), u = Kp*e + I and
lambda = clip(lambda * exp(u), lambda_min, lambda_max).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class ControllerConfig:
    target_s: float
    kp: float = 0.8
    ki: float = 0.15
    ema_alpha: float = 0.1
    deadband: float = 0.002
    i_leak: float = 0.995
    i_max: float = 0.2
    lambda_init: float = 1.0
    lambda_min: float = 1e-4
    lambda_max: float = 10.0

    def __post_init__(self) -> None:
        if not 0.0 < self.ema_alpha <= 1.0:
            raise ValueError("ema_alpha must be in (0, 1]")
        if not 0.0 < self.lambda_min <= self.lambda_max:
            raise ValueError("need 0 < lambda_min <= lambda_max")
        if self.deadband < 0 or self.i_max < 0:
            raise ValueError("deadband and i_max must be >= 0")


@dataclass
class ControllerState:
    lam: float
    integral: float = 0.0
    s_hat: float | None = None
    updates: int = 0
    skipped: int = 0

    def to_dict(self) -> dict[str, float | int | None]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, float | int | None]) -> ControllerState:
        return cls(
            lam=float(data["lam"]),  # type: ignore[arg-type]
            integral=float(data.get("integral", 0.0) or 0.0),
            s_hat=None if data.get("s_hat") is None else float(data["s_hat"]),  # type: ignore[arg-type]
            updates=int(data.get("updates", 0) or 0),
            skipped=int(data.get("skipped", 0) or 0),
        )


@dataclass
class PIController:
    config: ControllerConfig
    state: ControllerState = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.state is None:
            lam = min(max(self.config.lambda_init, self.config.lambda_min), self.config.lambda_max)
            self.state = ControllerState(lam=lam)

    @property
    def lam(self) -> float:
        return self.state.lam

    @property
    def error(self) -> float | None:
        return None if self.state.s_hat is None else self.state.s_hat - self.config.target_s

    def in_deadband(self) -> bool:
        err = self.error
        return err is not None and abs(err) <= self.config.deadband

    def update(self, s: float) -> float:
        """Feed the measured S of the last optimizer step; returns the lambda for the next one."""
        cfg, st = self.config, self.state
        if not math.isfinite(s):
            st.skipped += 1
            return st.lam
        st.s_hat = s if st.s_hat is None else cfg.ema_alpha * s + (1.0 - cfg.ema_alpha) * st.s_hat
        err = st.s_hat - cfg.target_s
        st.updates += 1
        st.integral *= cfg.i_leak
        if abs(err) <= cfg.deadband:
            return st.lam
        pushing_up = st.lam >= cfg.lambda_max and err > 0
        pushing_down = st.lam <= cfg.lambda_min and err < 0
        if not (pushing_up or pushing_down):
            st.integral = min(max(st.integral + cfg.ki * err, -cfg.i_max), cfg.i_max)
        u = cfg.kp * err + st.integral
        st.lam = min(max(st.lam * math.exp(u), cfg.lambda_min), cfg.lambda_max)
        return st.lam

    def state_dict(self) -> dict[str, float | int | None]:
        return self.state.to_dict()

    def load_state_dict(self, data: dict[str, float | int | None]) -> None:
        self.state = ControllerState.from_dict(data)


def s_ratio(data_bpt: float, param_bpt: float) -> float:
    """S = ParamBPT / (DataBPT + ParamBPT)."""
    total = data_bpt + param_bpt
    return param_bpt / total if total > 0 else float("nan")
