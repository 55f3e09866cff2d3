"""How people read an adapter's task metrics (``eval_metrics["task"]``, written by the engine):
the one-line summary of ``finetune --wait`` and the tables of ``adapters get``.

``task`` = ``{"kind": "generation"|"classification", "rows", "max_new_tokens", "seconds",
"base": {...}, "adapter": {...}, "labels": [...] (classification), "samples": [...]}`` with
``exact_match`` (generation) or ``accuracy`` and ``macro_f1`` (classification), each in [0, 1].
Anything missing or malformed is shown as ``?`` rather than failing the command.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rich.markup import escape
from rich.table import Table

from cli.output import table

METRICS = {
    "generation": [("exact_match", "exact match")],
    "classification": [("accuracy", "accuracy"), ("macro_f1", "macro-F1")],
}
SAMPLES_SHOWN = 4
SAMPLE_CHARS = 60
LABELS_SHOWN = 20


def task_of(eval_metrics: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The ``task`` dict of an adapter's eval metrics, or ``None`` when there is none."""
    task = (eval_metrics or {}).get("task")
    return task if isinstance(task, dict) else None


def _metrics(task: Mapping[str, Any]) -> list[tuple[str, str]]:
    return METRICS.get(str(task.get("kind")), METRICS["generation"])


def _side(task: Mapping[str, Any], side: str) -> Mapping[str, Any]:
    value = task.get(side)
    return value if isinstance(value, Mapping) else {}


def pct(value: Any) -> str:
    if isinstance(value, int | float) and not isinstance(value, bool) and value == value:
        return f"{100 * value:.0f}%"
    return "?"


def comparison(task: Mapping[str, Any]) -> str:
    """e.g. ``exact match 3% → 91%`` or ``accuracy 50% → 94%, macro-F1 33% → 94%``."""
    base, adapter = _side(task, "base"), _side(task, "adapter")
    return ", ".join(f"{name} {pct(base.get(key))} → {pct(adapter.get(key))}" for key, name in _metrics(task))


def summary_line(task: Mapping[str, Any]) -> str:
    """e.g. ``exact match 3% → 91% (200 held-out rows)`` (plain text, no markup)."""
    rows = task.get("rows")
    return f"{comparison(task)} ({rows if isinstance(rows, int) else '?'} held-out rows)"


def metrics_table(task: Mapping[str, Any]) -> Table:
    """One row per metric: base vs adapter."""
    base, adapter = _side(task, "base"), _side(task, "adapter")
    rows = [(name, pct(base.get(key)), pct(adapter.get(key))) for key, name in _metrics(task)]
    return table(None, ["task metric", "base", "adapter"], rows)


def about(task: Mapping[str, Any]) -> str:
    """e.g. ``classification · 200 rows of test · ≤ 8 new tokens · 12.3 s · labels: a, b``."""
    parts = [
        str(task.get("kind", "?")),
        f"{task.get('rows', '?')} rows of {task.get('split', 'held-out data')}",
    ]
    if isinstance(task.get("max_new_tokens"), int):
        parts.append(f"≤ {task['max_new_tokens']} new tokens")
    if isinstance(task.get("seconds"), int | float):
        parts.append(f"{task['seconds']:.1f} s")
    labels = task.get("labels")
    if isinstance(labels, list) and labels:
        shown = ", ".join(str(x) for x in labels[:LABELS_SHOWN])
        more = f" (+{len(labels) - LABELS_SHOWN} more)" if len(labels) > LABELS_SHOWN else ""
        parts.append(f"labels: {shown}{more}")
    return escape(" · ".join(parts))


def _short(value: Any) -> str:
    text = " ".join(str(value if value is not None else "").split())
    return escape(text if len(text) <= SAMPLE_CHARS else text[: SAMPLE_CHARS - 1] + "…")


def samples_table(task: Mapping[str, Any]) -> Table | None:
    """The first few samples side by side (prompt, target, base, adapter), or ``None``."""
    samples = task.get("samples")
    if not isinstance(samples, list):
        return None
    rows = [
        tuple(_short(s.get(k)) for k in ("prompt", "target", "base", "adapter"))
        for s in samples[:SAMPLES_SHOWN]
        if isinstance(s, Mapping)
    ]
    if not rows:
        return None
    return table(None, ["prompt", "target", "base", "adapter"], rows)
