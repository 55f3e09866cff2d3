"""Parse ``hyperparameters.json`` (SageMaker stringifies every value) into a ``TrainConfig``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from scu.config import TrainConfig


class HyperparameterError(ValueError):
    """A user-facing, one-paragraph explanation of what is wrong with the hyperparameters."""


# SageMaker framework estimators and HPO jobs add their own keys; they are not ours to validate.
_IGNORED_PREFIXES = ("sagemaker_", "_")


MAX_VALUE_DEPTH = 8  # a hyperparameter value is a scalar or a flat list (target_modules)


def _json_value(text: str) -> Any:
    """``json.loads`` of one value; raises ``json.JSONDecodeError`` for bad JSON and
    HyperparameterError for nesting deeper than any hyperparameter has (never RecursionError)."""
    try:
        value = json.loads(text)
    except RecursionError:
        value = None
    else:
        stack: list[tuple[Any, int]] = [(value, 0)]
        while stack:
            item, level = stack.pop()
            if isinstance(item, list | dict):
                if level >= MAX_VALUE_DEPTH:
                    break
                children = item.values() if isinstance(item, dict) else item
                stack.extend((c, level + 1) for c in children)
        else:
            return value
    raise HyperparameterError(
        f"Invalid hyperparameters: a value is nested deeper than {MAX_VALUE_DEPTH} levels of JSON arrays/objects."
    )


def _unwrap(value: Any) -> Any:
    """Undo JSON-encoding of strings (``"\\"x\\""`` -> ``x``); leave plain strings to pydantic."""
    while isinstance(value, str):
        text = value.strip()
        if len(text) >= 2 and text[0] == text[-1] == '"':
            try:
                value = _json_value(text)
                continue
            except json.JSONDecodeError:
                return value
        if text[:1] == "[":
            try:
                return _json_value(text)
            except json.JSONDecodeError:
                return value
        return text
    return value


def parse_hyperparameters(raw: dict[str, Any]) -> TrainConfig:
    known = set(TrainConfig.model_fields)
    values: dict[str, Any] = {}
    unknown: list[str] = []
    for key, value in raw.items():
        if key.startswith(_IGNORED_PREFIXES):
            continue
        if key not in known:
            unknown.append(key)
            continue
        values[key] = _unwrap(value)
    problems: list[str] = []
    if unknown:
        problems.append(
            f"unknown hyperparameter(s) {', '.join(sorted(unknown))} (allowed: {', '.join(sorted(known))})"
        )
    try:
        cfg = TrainConfig(**values)
    except ValidationError as exc:
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"]) or "hyperparameters"
            got = err.get("input")
            shown = f" (got {got!r})" if where != "hyperparameters" and not isinstance(got, dict) else ""
            problems.append(f"{where}: {err['msg']}{shown}")
        cfg = None
    if problems:
        raise HyperparameterError("Invalid hyperparameters: " + "; ".join(problems) + ".")
    assert cfg is not None
    return cfg


def load_hyperparameters(path: Path) -> TrainConfig:
    if not path.exists():
        return TrainConfig()
    try:
        raw = json.loads(path.read_text(encoding="utf-8") or "{}")
    except json.JSONDecodeError as exc:
        raise HyperparameterError(f"Invalid hyperparameters: {path} is not valid JSON ({exc}).") from None
    except RecursionError:
        raise HyperparameterError(f"Invalid hyperparameters: {path} is nested too deeply.") from None
    if not isinstance(raw, dict):
        raise HyperparameterError(f"Invalid hyperparameters: {path} must hold a JSON object.")
    return parse_hyperparameters(raw)
