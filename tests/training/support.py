"""Helpers for the SCU engine tests: an /opt/ml-shaped root and a runner that executes the real
entry (``python -m scu.entry train``) as a subprocess."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
ENGINE_SRC = REPO / "containers" / "training"
if str(ENGINE_SRC) not in sys.path:
    sys.path.insert(0, str(ENGINE_SRC))


# Every projection of the tiny Llama: what LoRA targets by default (attention and MLP).
TINY_PROJECTIONS = ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]


# A chat template that handles tools (it mentions ``tools`` and ``tool_calls``): tool calls render
# as ``<call>name {json}</call>``; the tools list goes in a system block.
TOOLS_TEMPLATE = (
    "{{ bos_token }}{% if tools %}<|system|>\n{% for t in tools %}{{ t['function']['name'] }};{% endfor %}</s>\n"
    "{% endif %}{% for m in messages %}<|{{ m['role'] }}|>\n"
    "{% if m.tool_calls %}{% for c in m.tool_calls %}<call>{{ c.function.name }} "
    "{{ c.function.arguments | tojson }}</call>{% endfor %}{% else %}{{ m['content'] }}{% endif %}</s>\n"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def chat(system: str, user: str, assistant: str) -> list[dict[str, str]]:
    turns = {"system": system, "user": user, "assistant": assistant}
    return [{"role": role, "content": content} for role, content in turns.items()]


def make_rows(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """``n`` one-turn additions in the chat record shape (with a null label and an ignored key)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b = rng.randint(0, 50), rng.randint(0, 50)
        messages = chat("You add numbers.", f"What is {a} plus {b}?", f"{a} plus {b} is {a + b}.")
        rows.append({"messages": messages, "label": None, "extra_key": "ignored"})
    return rows


def write_root(root: Path, hyperparameters: dict[str, Any], n_train: int = 64, n_val: int = 16) -> Path:
    (root / "input" / "config").mkdir(parents=True, exist_ok=True)
    for channel, n, seed in (("train", n_train, 0), ("validation", n_val, 1)):
        if n:
            d = root / "input" / "data" / channel
            d.mkdir(parents=True, exist_ok=True)
            (d / "part-0.jsonl").write_text(
                "".join(json.dumps(r) + "\n" for r in make_rows(n, seed)), encoding="utf-8"
            )
    # SageMaker stringifies every hyperparameter value.
    hp = {k: str(v) for k, v in hyperparameters.items()}
    (root / "input" / "config" / "hyperparameters.json").write_text(json.dumps(hp), encoding="utf-8")
    return root


def entry_env(root: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["OPT_ML_ROOT"] = str(root)
    env["PYTHONPATH"] = os.pathsep.join([str(ENGINE_SRC), env.get("PYTHONPATH", "")])
    env.setdefault("OMP_NUM_THREADS", "1")
    env["HF_HUB_OFFLINE"] = "1"
    env.update(extra or {})
    return env


def start_entry(root: Path, log: Path, step_sleep: float) -> subprocess.Popen[bytes]:
    """The entry in the background, output to ``log``, each optimizer step slowed by ``step_sleep`` s."""
    with log.open("w") as fh:
        return subprocess.Popen(
            [sys.executable, "-m", "scu.entry", "train"],
            env=entry_env(root, {"FASTUNER_SCU_TEST_STEP_SLEEP": str(step_sleep)}),
            stdout=fh,
            stderr=subprocess.STDOUT,
        )


def run_entry(
    root: Path, extra_env: dict[str, str] | None = None, timeout: float = 240
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "scu.entry", "train"],
        env=entry_env(root, extra_env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
