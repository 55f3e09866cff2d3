"""λ controllers: one small interface, one registry (torch-free).

The trainer asks a :class:`LambdaController` for the λ of the next optimizer step, feeds it each
step's :class:`Measurements`, reports its Ŝ and ``unreachable`` flag in the metrics and saves its
``state_dict()`` in every checkpoint. The ``scu`` hyperparameter names the controller; any name
given to :func:`register` is accepted. Built in: ``on`` (the PI loop of :mod:`scu.controller`),
``off`` (λ = 0) and ``fixed`` (λ = ``lambda_fixed``)::

    from scu import controllers

    controllers.register("halve", lambda cfg, total_steps: MyController(cfg.lambda_init))
    # then train with the hyperparameter scu=halve
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from scu.controller import ControllerConfig, PIController

if TYPE_CHECKING:
    from scu.config import ResolvedConfig, TrainConfig


@dataclass(frozen=True)
class Measurements:
    """One optimizer step, as every rank agrees on it (after the all-reduce)."""

    step: int  # optimizer steps done, this one included (1-based)
    total_steps: int
    data_bpt: float
    param_bpt: float  # of the adapter after this step


class LambdaController(Protocol):
    """What the trainer needs from a λ controller."""

    @property
    def lam(self) -> float:
        """λ for the next optimizer step (and the ``lambda`` of the metrics)."""
        ...

    @property
    def s_hat(self) -> float | None:
        """The smoothed S of the metrics; ``None`` reports the step's own S."""
        ...

    @property
    def unreachable(self) -> int:
        """+1 / -1 while the target S cannot be reached from above / below, else 0."""
        ...

    def update(self, measured: Measurements) -> str | None:
        """Take one step's measurements; returns a warning for the log, if there is one."""
        ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


Factory = Callable[["ResolvedConfig", int], LambdaController]  # (config, total optimizer steps)
Check = Callable[["TrainConfig"], None]  # raises ValueError for settings the controller refuses


@dataclass(frozen=True)
class _Entry:
    factory: Factory
    check: Check | None


_REGISTRY: dict[str, _Entry] = {}


def register(name: str, factory: Factory, check: Check | None = None) -> None:
    """Make ``scu=<name>`` build its controller with ``factory`` (``check`` validates the config)."""
    key = name.strip().lower()
    if not key or key in _REGISTRY:
        raise ValueError(f"controller name {name!r} is empty or taken")
    _REGISTRY[key] = _Entry(factory, check)


def unregister(name: str) -> None:
    _REGISTRY.pop(name.strip().lower(), None)


def names() -> list[str]:
    return sorted(_REGISTRY)


def known(name: str) -> str:
    """``name`` if a controller is registered under it, else ValueError."""
    if name not in _REGISTRY:
        raise ValueError(f"must name a registered controller: {', '.join(names())}")
    return name


def check(cfg: TrainConfig) -> None:
    """Refuse settings that the controller ``cfg.scu`` names cannot use (ValueError)."""
    entry = _REGISTRY.get(cfg.scu)
    if entry is not None and entry.check is not None:
        entry.check(cfg)


def build(cfg: ResolvedConfig, total_steps: int) -> LambdaController:
    """The controller that ``cfg.scu`` names, for a run of ``total_steps`` optimizer steps."""
    return _REGISTRY[cfg.scu].factory(cfg, total_steps)


# ------------------------------------------------------------------ built in: on, off, fixed


def pi_controller(cfg: ResolvedConfig, total_steps: int) -> PIController:
    """The PI loop configured from the hyperparameters."""
    return PIController(
        ControllerConfig(
            target_s=cfg.target_s,
            kp=cfg.kp,
            ki=cfg.ki,
            ema_alpha=cfg.ema_alpha,
            deadband=cfg.deadband,
            band=cfg.band,
            lambda_init=cfg.lambda_init,
            lambda_min=cfg.lambda_min,
            lambda_max=cfg.lambda_max,
            warmup_steps=math.ceil(cfg.controller_warmup * total_steps),
            saturation_window=max(5, min(20, total_steps // 5)),
        )
    )


class PILambda:
    """``scu=on``: the PI loop sets λ at every step and warns when the target is out of reach."""

    def __init__(self, pi: PIController) -> None:
        self.pi = pi
        self._flagged = pi.unreachable

    @property
    def lam(self) -> float:
        return self.pi.lam

    @property
    def s_hat(self) -> float | None:
        return self.pi.state.s_hat

    @property
    def unreachable(self) -> int:
        return self.pi.unreachable

    def update(self, measured: Measurements) -> str | None:
        self.pi.update(measured.data_bpt, measured.param_bpt)
        before, self._flagged = self._flagged, self.pi.unreachable
        return None if self._flagged == before else unreachable_note(self.pi)

    def state_dict(self) -> dict[str, Any]:
        return self.pi.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.pi.load_state_dict(state)
        self._flagged = self.pi.unreachable


def unreachable_note(pi: PIController) -> str:
    """The warning for a change of ``pi.unreachable`` (λ reached or left a bound for a window)."""
    cfg, s_hat, now = pi.config, pi.state.s_hat, pi.unreachable
    if now == 0:
        return f"lambda left its bound (S_hat {s_hat:.4g}, target {cfg.target_s:g})"
    if now > 0:
        bound, value = "maximum", cfg.lambda_max
        hint = "S stays above the target even at the strongest allowed regularisation: raise lambda_max or target_s"
    else:
        bound, value = "minimum", cfg.lambda_min
        hint = "S stays below the target with almost no regularisation: lower target_s or lambda_min"
    return (
        f"target S*={cfg.target_s:g} unreachable, lambda pinned at its {bound} {value:g} for "
        f"{cfg.saturation_window} steps (S_hat {s_hat:.4g}); {hint}"
    )


class ConstantLambda:
    """``scu=off`` / ``scu=fixed``: λ never moves; Ŝ is still tracked as the PI loop tracks it."""

    def __init__(self, lam: float, tracker: PIController) -> None:
        self._lam = lam
        self.tracker = tracker

    @property
    def lam(self) -> float:
        return self._lam

    @property
    def s_hat(self) -> float | None:
        return self.tracker.state.s_hat

    @property
    def unreachable(self) -> int:
        return 0

    def update(self, measured: Measurements) -> str | None:
        self.tracker.update(measured.data_bpt, measured.param_bpt)
        return None

    def state_dict(self) -> dict[str, Any]:
        return self.tracker.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.tracker.load_state_dict(state)


def _needs_lambda_fixed(cfg: TrainConfig) -> None:
    if cfg.lambda_fixed is None:
        raise ValueError("scu=fixed needs lambda_fixed (the constant lambda)")


register("on", lambda cfg, steps: PILambda(pi_controller(cfg, steps)))
register("off", lambda cfg, steps: ConstantLambda(0.0, pi_controller(cfg, steps)))
register(
    "fixed",
    lambda cfg, steps: ConstantLambda(float(cfg.lambda_fixed or 0.0), pi_controller(cfg, steps)),
    _needs_lambda_fixed,
)
