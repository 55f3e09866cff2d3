"""The metric line format printed by the engine, and SageMaker ``MetricDefinitions`` for it.

Torch-free: the control plane imports this module. One line per log step::

    [scu] step=10 epoch=0.500 loss_bpt=3.35 data_bpt=3.33 param_bpt=0.012 s=0.0036 s_hat=0.0035 \
target_s=0.004 band=0.1 lambda=1.02 unreachable=0 lr=2.0e-04 tokens_per_s=812.3 eta_s=41

Every quantity is in bits per token: ``loss_bpt`` = DataBPT + lambda * ParamBPT (the regularised
objective), ``data_bpt`` the window's mean target-token cross-entropy, ``param_bpt`` the adapter's
update ||dW||^2 / (2 sigma^2 N ln 2) at the logged step. ``s`` is the raw S of the last step,
``s_hat`` the smoothed S the controller acts on; the controller's target band is
``target_s * exp(+-band)``. ``unreachable`` is +1 while lambda has sat on lambda_max (S stays above
target even at the strongest allowed regularisation) or -1 on lambda_min (S stays below target
even with almost none) for a whole window after warm-up, else 0; scu=off/fixed always log 0.
``val_bpt`` (only on the lines of steps where it was measured: every ``eval_every`` steps and the
last) is the adapter's held-out BPT on the validation set.

and one line at the end with the held-out evaluation::

    [scu-eval] tokens=5120 base_bpt=4.91 adapter_bpt=3.87 base_ppl=30.1 adapter_ppl=14.6

The same keys are written, one JSON object per line, to ``metrics.jsonl``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

PREFIX = "[scu]"
EVAL_PREFIX = "[scu-eval]"

# key -> printf-style format; the order is the order on the line.
TRAIN_KEYS: dict[str, str] = {
    "step": "{:d}",
    "epoch": "{:.3f}",
    "loss_bpt": "{:.4f}",
    "data_bpt": "{:.4f}",
    "param_bpt": "{:.4g}",
    "s": "{:.4g}",
    "s_hat": "{:.4g}",
    "target_s": "{:.4g}",
    "band": "{:.3g}",
    "lambda": "{:.4g}",
    "unreachable": "{:d}",
    "lr": "{:.1e}",
    "tokens_per_s": "{:.1f}",
    "eta_s": "{:d}",
    "val_bpt": "{:.4f}",  # only on the steps where the validation set was evaluated
}
EVAL_KEYS: dict[str, str] = {
    "tokens": "{:d}",
    "base_bpt": "{:.4f}",
    "adapter_bpt": "{:.4f}",
    "base_ppl": "{:.4g}",
    "adapter_ppl": "{:.4g}",
}

NUMBER = r"[-+]?(?:[0-9]*\.)?[0-9]+(?:[eE][-+]?[0-9]+)?"


def _regex(prefix: str, key: str) -> str:
    # `\b` keeps `s=` from matching inside `tokens_per_s=` / `eta_s=` (`_` is a word character).
    return rf"{re.escape(prefix)} .*\b{key}=({NUMBER})"


METRIC_DEFINITIONS: list[dict[str, str]] = [
    {"Name": f"train:{key}", "Regex": _regex(PREFIX, key)} for key in TRAIN_KEYS
] + [{"Name": f"validation:{key}", "Regex": _regex(EVAL_PREFIX, key)} for key in EVAL_KEYS]


def _fmt(fmt: str, value: object) -> str:
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if fmt == "{:d}":
        return fmt.format(int(value))  # type: ignore[call-overload]
    return fmt.format(float(value))  # type: ignore[arg-type]


def _format(prefix: str, keys: Mapping[str, str], record: Mapping[str, object]) -> str:
    parts = [prefix] + [f"{key}={_fmt(fmt, record[key])}" for key, fmt in keys.items() if key in record]
    return " ".join(parts)


def format_train_line(record: Mapping[str, object]) -> str:
    return _format(PREFIX, TRAIN_KEYS, record)


def format_eval_line(record: Mapping[str, object]) -> str:
    return _format(EVAL_PREFIX, EVAL_KEYS, record)


_PAIR = re.compile(r"(\w+)=(\S+)")


def parse_line(line: str) -> dict[str, float] | None:
    """Parse a ``[scu]`` or ``[scu-eval]`` line back to numbers (None for other lines)."""
    line = line.strip()
    if not (line.startswith(PREFIX + " ") or line.startswith(EVAL_PREFIX + " ")):
        return None
    return {key: float(value) for key, value in _PAIR.findall(line)}


def parse_with_definitions(line: str) -> dict[str, float]:
    """What SageMaker would extract from one log line with ``METRIC_DEFINITIONS``."""
    out: dict[str, float] = {}
    for definition in METRIC_DEFINITIONS:
        match = re.search(definition["Regex"], line)
        if match:
            out[definition["Name"]] = float(match.group(1))
    return out
