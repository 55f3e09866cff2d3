"""The training engine's metric lines, as its stdout (and so CloudWatch) carries them."""

from __future__ import annotations

from scu.metrics_format import format_train_line


def train_record(
    step: int, loss_bpt: float, *, unreachable: int = 0, lam: float = 1.02, steps_per_epoch: int = 100
) -> dict[str, float]:
    """One record with every key of the engine's line (``scu.metrics_format.TRAIN_KEYS``)."""
    return {
        "step": step,
        "epoch": step / steps_per_epoch,
        "loss_bpt": loss_bpt,
        "data_bpt": loss_bpt - lam * 0.012,
        "param_bpt": 0.012,
        "s": 0.0036,
        "s_hat": 0.0035,
        "target_s": 0.004,
        "band": 0.1,
        "lambda": lam,
        "unreachable": unreachable,
        "lr": 2e-4,
        "tokens_per_s": 812.3,
        "eta_s": 41,
    }


def train_line(step: int, loss_bpt: float, **record: float) -> str:
    return format_train_line(train_record(step, loss_bpt, **record))  # type: ignore[arg-type]
