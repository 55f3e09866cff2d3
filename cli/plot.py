"""PNG plot of a job's metrics (needs matplotlib: extra `plot`).

Three panels over the optimizer step: DataBPT, ParamBPT and the regularised loss in bits per token;
S and Ŝ with the controller's target band shaded; λ on a log scale. Steps where the target was
unreachable (λ pinned on a bound for a whole window) are shaded on every panel.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from api.domain.finetune import MetricPoint
from api.domain.metrics import loss_bpt, target_band, unreachable_flag

NAN = float("nan")


@dataclass
class Series:
    """The plotted values, one per point (NaN where a record lacks it)."""

    steps: list[int]
    loss_bpt: list[float]
    data_bpt: list[float]
    param_bpt: list[float]
    val_bpt: list[float]  # held-out, NaN on the steps the engine did not evaluate
    s: list[float]
    s_hat: list[float]
    lam: list[float]
    band_low: list[float]
    band_target: list[float]
    band_high: list[float]
    # (first step, last step, +1 | -1) of each run of records with the target unreachable
    unreachable: list[tuple[int, int, int]] = field(default_factory=list)

    @property
    def has_band(self) -> bool:
        return any(math.isfinite(v) for v in self.band_target)


def series(points: list[MetricPoint]) -> Series:
    def get(key: str) -> list[float]:
        return [p.values.get(key, NAN) for p in points]

    bands = [target_band(p.values) for p in points]
    runs: list[tuple[int, int, int]] = []
    previous = 0
    for p in points:
        flag = unreachable_flag(p.values)
        if flag and flag == previous:
            runs[-1] = (runs[-1][0], p.step, flag)
        elif flag:
            runs.append((p.step, p.step, flag))
        previous = flag
    return Series(
        steps=[p.step for p in points],
        loss_bpt=[v if (v := loss_bpt(p.values)) is not None else NAN for p in points],
        data_bpt=get("data_bpt"),
        param_bpt=get("param_bpt"),
        val_bpt=get("val_bpt"),
        s=get("s"),
        s_hat=get("s_hat"),
        lam=get("lambda"),
        band_low=[b[0] if b else NAN for b in bands],
        band_target=[b[1] if b else NAN for b in bands],
        band_high=[b[2] if b else NAN for b in bands],
        unreachable=runs,
    )


def plot_metrics(points: list[MetricPoint], path: Path, *, target_s: float | None, title: str) -> None:
    """Write the PNG; ``target_s`` draws the target where the records carry none (older engines)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise SystemExit("plotting needs matplotlib: pip install 'fastuner[plot]'") from exc
    if not points:
        raise SystemExit("no metrics recorded yet")
    d = series(points)
    fig, axes = plt.subplots(3, 1, figsize=(8, 10), sharex=True)
    _plot_bits(axes[0], d)
    _plot_s(axes[1], d, target_s)
    _plot_lambda(axes[2], d)
    _mark_unreachable(axes, d)
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_bits(ax: Any, d: Series) -> None:
    """Loss and DataBPT; ParamBPT (orders of magnitude below) on its own right axis."""
    ax.plot(d.steps, d.loss_bpt, label="loss = DataBPT + λ·ParamBPT", color="tab:blue")
    ax.plot(d.steps, d.data_bpt, label="DataBPT", color="tab:orange", alpha=0.85)
    val = [(s, v) for s, v in zip(d.steps, d.val_bpt, strict=True) if math.isfinite(v)]
    if val:
        ax.plot(*zip(*val, strict=True), label="validation BPT", color="tab:green", marker="o", markersize=3)
    ax.set_ylabel("bits per token")
    right = ax.twinx()
    right.plot(d.steps, d.param_bpt, label="ParamBPT (right axis)", color="tab:purple", linestyle=":")
    right.set_ylabel("ParamBPT, bits per token")
    lines = ax.get_legend_handles_labels()
    more = right.get_legend_handles_labels()
    ax.legend(lines[0] + more[0], lines[1] + more[1], loc="upper right", fontsize="small")


def _plot_s(ax: Any, d: Series, target_s: float | None) -> None:
    """S and Ŝ against the target band (or the given target when the records carry none)."""
    if d.has_band:
        ax.fill_between(
            d.steps, d.band_low, d.band_high, color="tab:green", alpha=0.2, step="mid", label="target band"
        )
        ax.plot(d.steps, d.band_target, color="tab:green", linestyle="--", linewidth=1, label="target S*")
    elif target_s is not None:
        ax.axhline(target_s, color="tab:green", linestyle="--", label=f"target S* = {target_s:g}")
    ax.plot(d.steps, d.s, label="S", color="tab:gray", alpha=0.6)
    if any(math.isfinite(v) for v in d.s_hat):
        ax.plot(d.steps, d.s_hat, label="Ŝ (controlled)", color="tab:blue")
    ax.set_ylabel("S = ParamBPT/(DataBPT+ParamBPT)")
    ax.legend(loc="upper right", fontsize="small")


def _plot_lambda(ax: Any, d: Series) -> None:
    ax.plot(d.steps, d.lam, color="tab:green", label="λ")
    ax.set_yscale("log")
    ax.set_ylabel("λ")
    ax.set_xlabel("optimizer step")


def _mark_unreachable(axes: Any, d: Series) -> None:
    """Shade the unreachable runs on every axis and mark λ pinned at its bound."""
    labelled: set[int] = set()
    for first, last, flag in d.unreachable:
        color = "tab:red" if flag > 0 else "tab:cyan"
        label = "unreachable: λ at max" if flag > 0 else "unreachable: λ at min"
        for a in axes:
            if first == last:
                a.axvline(first, color=color, alpha=0.3)
            else:
                a.axvspan(first, last, color=color, alpha=0.12, linewidth=0)
        pinned = [(s, v) for s, v in zip(d.steps, d.lam, strict=True) if first <= s <= last]
        marker = "^" if flag > 0 else "v"
        xs, ys = [s for s, _ in pinned], [v for _, v in pinned]
        axes[2].scatter(
            xs, ys, color=color, marker=marker, zorder=3, label=None if flag in labelled else label
        )
        labelled.add(flag)
    axes[2].legend(loc="upper right", fontsize="small")
