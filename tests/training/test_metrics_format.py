from __future__ import annotations

import subprocess
import sys

from scu.metrics_format import (
    EVAL_KEYS,
    METRIC_DEFINITIONS,
    TRAIN_KEYS,
    format_eval_line,
    format_train_line,
    parse_line,
    parse_with_definitions,
)

from tests.training.support import ENGINE_SRC

# One value per key, in the order of the printed line.
VALUES = (10, 0.5, 3.35, 3.33, 0.012, 0.0036, 0.0035, 0.004, 0.1, 1.02, -1, 2e-4, 812.3, 41, 4.1234)
RECORD = dict(zip(TRAIN_KEYS, VALUES, strict=True))


def test_train_line_shape() -> None:
    line = format_train_line(RECORD)
    assert line == (
        "[scu] step=10 epoch=0.500 loss_bpt=3.3500 data_bpt=3.3300 param_bpt=0.012 s=0.0036 "
        "s_hat=0.0035 target_s=0.004 band=0.1 lambda=1.02 unreachable=-1 lr=2.0e-04 "
        "tokens_per_s=812.3 eta_s=41 val_bpt=4.1234"
    )
    parsed = parse_line(line)
    assert parsed is not None and set(parsed) == set(TRAIN_KEYS)


def test_val_bpt_only_where_measured() -> None:
    """Steps without a validation evaluation print no val_bpt (not a 0 or a nan)."""
    record = {k: v for k, v in RECORD.items() if k != "val_bpt"}
    line = format_train_line(record)
    assert "val_bpt" not in line and line.endswith("eta_s=41")
    assert "train:val_bpt" not in parse_with_definitions(line)
    assert parse_with_definitions(format_train_line(RECORD))["train:val_bpt"] == 4.1234


def test_definitions_extract_every_key_without_confusion() -> None:
    got = parse_with_definitions(format_train_line(RECORD))
    assert got["train:s"] == 0.0036  # not tokens_per_s / eta_s / s_hat / target_s
    assert got["train:s_hat"] == 0.0035 and got["train:target_s"] == 0.004
    assert got["train:unreachable"] == -1
    assert got["train:tokens_per_s"] == 812.3
    assert got["train:eta_s"] == 41
    assert got["train:lr"] == 2e-4
    assert got["train:step"] == 10
    assert len(got) == len(TRAIN_KEYS)
    eval_line = format_eval_line(
        {"tokens": 100, "base_bpt": 4.5, "adapter_bpt": 3.2, "base_ppl": 22.6, "adapter_ppl": 9.2}
    )
    got = parse_with_definitions(eval_line)
    assert got == {
        "validation:tokens": 100,
        "validation:base_bpt": 4.5,
        "validation:adapter_bpt": 3.2,
        "validation:base_ppl": 22.6,
        "validation:adapter_ppl": 9.2,
    }
    assert len(METRIC_DEFINITIONS) == len(TRAIN_KEYS) + len(EVAL_KEYS)
    assert all(set(d) == {"Name", "Regex"} for d in METRIC_DEFINITIONS)


def test_scientific_notation_and_other_lines() -> None:
    got = parse_with_definitions(format_train_line({**RECORD, "param_bpt": 1.5e-7, "s": 3e-9}))
    assert got["train:param_bpt"] == 1.5e-7 and got["train:s"] == 3e-9
    assert parse_line("2024 INFO something step=3") is None
    assert parse_with_definitions("INFO loss=3 step=4") == {}


def test_metrics_format_does_not_import_torch() -> None:
    code = "import sys, scu.metrics_format, scu.paths, scu.controller, scu.config, scu.hyperparams; "
    code += "assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, env={"PYTHONPATH": str(ENGINE_SRC)})
