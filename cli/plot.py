"""PNG plot of a job's metrics: loss, S against its target, and λ (needs matplotlib: extra `plot`)."""

from __future__ import annotations

from pathlib import Path

from api.domain.finetune import MetricPoint


def plot_metrics(points: list[MetricPoint], path: Path, *, target_s: float | None, title: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise SystemExit("plotting needs matplotlib: pip install 'fastuner[plot]'") from exc
    if not points:
        raise SystemExit("no metrics recorded yet")
    steps = [p.step for p in points]

    def series(key: str) -> list[float]:
        return [p.values.get(key, float("nan")) for p in points]

    fig, axes = plt.subplots(3, 1, figsize=(8, 9), sharex=True)
    axes[0].plot(steps, series("loss"), label="loss")
    axes[0].plot(steps, series("data_bpt"), label="DataBPT", alpha=0.8)
    axes[0].set_ylabel("loss / bits per token")
    axes[0].legend()
    axes[1].plot(steps, series("s"), label="S")
    if target_s is not None:
        axes[1].axhline(target_s, color="tab:red", linestyle="--", label=f"target S* = {target_s:g}")
    axes[1].set_ylabel("S = ParamBPT/(DataBPT+ParamBPT)")
    axes[1].legend()
    axes[2].plot(steps, series("lambda"), color="tab:green", label="λ")
    axes[2].set_yscale("log")
    axes[2].set_ylabel("λ")
    axes[2].set_xlabel("optimizer step")
    axes[2].legend()
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
