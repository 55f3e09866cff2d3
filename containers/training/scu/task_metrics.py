"""Task metrics over generated text (torch-free): exact match for generation data, accuracy and
macro-F1 for classification data.

* **Normalisation** (both kinds): Unicode NFC, strip, every run of whitespace collapsed to one
  space. Case is kept — it is often the task (e.g. "shout this" → uppercase).
* **Exact match**: the share of rows whose normalised generation equals the normalised target.
* **Classification**: a generation is mapped to a label when its normalised text equals a label or
  the (normalised) target text of a labelled row; failing that, when it equals one of them ignoring
  case and exactly one label fits. A generation that maps to no label is *unmatched*: it is wrong
  (accuracy) and a false negative for the gold label, but it is not a class of its own in the
  macro average (one stray answer would otherwise cost a whole class's F1 of 0).
* **Macro-F1** = the mean over the labels that occur among the gold labels or the matched
  predictions of F1 = 2·TP / (2·TP + FP + FN).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Sequence


def normalise(text: str) -> str:
    """NFC, stripped, internal whitespace collapsed to single spaces; case kept."""
    return " ".join(unicodedata.normalize("NFC", text).split())


def exact_match(predictions: Sequence[str], targets: Sequence[str]) -> float:
    """The share of rows whose normalised prediction equals the normalised target (0 for no rows)."""
    if len(predictions) != len(targets):
        raise ValueError("predictions and targets differ in length")
    if not targets:
        return 0.0
    hits = sum(1 for p, t in zip(predictions, targets, strict=True) if normalise(p) == normalise(t))
    return hits / len(targets)


class LabelMatcher:
    """Maps generated text to a label (see the module docstring), or ``None`` when nothing fits."""

    def __init__(self, labels: Iterable[str], aliases: Iterable[tuple[str, str]] = ()) -> None:
        """``labels``: the label set; ``aliases``: (text, label) pairs such as (target text, label)
        of labelled rows. An alias that would name two labels is dropped."""
        self.labels = sorted(set(labels))
        exact: dict[str, set[str]] = {}
        folded: dict[str, set[str]] = {}
        for text, label in [*((lb, lb) for lb in self.labels), *aliases]:
            key = normalise(text)
            if not key:
                continue
            exact.setdefault(key, set()).add(label)
            folded.setdefault(key.casefold(), set()).add(label)
        self._exact = {k: next(iter(v)) for k, v in exact.items() if len(v) == 1}
        self._folded = {k: next(iter(v)) for k, v in folded.items() if len(v) == 1}

    def match(self, text: str) -> str | None:
        key = normalise(text)
        found = self._exact.get(key)
        if found is None:
            found = self._folded.get(key.casefold())
        return found


def classification_scores(predictions: Sequence[str | None], gold: Sequence[str]) -> dict[str, float]:
    """``{"accuracy", "macro_f1"}`` of predicted labels (``None`` = unmatched) against gold labels."""
    if len(predictions) != len(gold):
        raise ValueError("predictions and gold labels differ in length")
    if not gold:
        return {"accuracy": 0.0, "macro_f1": 0.0}
    correct = sum(1 for p, g in zip(predictions, gold, strict=True) if p == g)
    classes = sorted({*gold, *(p for p in predictions if p is not None)})
    f1s = []
    for c in classes:
        tp = sum(1 for p, g in zip(predictions, gold, strict=True) if p == c and g == c)
        fp = sum(1 for p, g in zip(predictions, gold, strict=True) if p == c and g != c)
        fn = sum(1 for p, g in zip(predictions, gold, strict=True) if g == c and p != c)
        f1s.append(2 * tp / (2 * tp + fp + fn))
    return {"accuracy": correct / len(gold), "macro_f1": sum(f1s) / len(f1s)}


def summary_line(task: dict[str, object]) -> str:
    """One human line, e.g. ``exact match 3% → 91% (200 held-out rows)``."""
    kind = task.get("kind")
    rows = task.get("rows")
    base = task.get("base") if isinstance(task.get("base"), dict) else {}
    adapter = task.get("adapter") if isinstance(task.get("adapter"), dict) else {}
    assert isinstance(base, dict) and isinstance(adapter, dict)
    keys = [("accuracy", "accuracy"), ("macro_f1", "macro-F1")]
    if kind != "classification":
        keys = [("exact_match", "exact match")]
    parts = [f"{name} {_pct(base.get(key))} → {_pct(adapter.get(key))}" for key, name in keys]
    return f"{', '.join(parts)} ({rows} held-out rows)"


def _pct(value: object) -> str:
    return f"{100 * value:.0f}%" if isinstance(value, int | float) else "?"
