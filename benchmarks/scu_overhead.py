"""SCU overhead benchmark: tokens/s of the SCU engine with the regulariser on vs off (same loop),
and vs a Hugging Face ``Trainer`` + PEFT run on the same model, data and LoRA settings; plus how
well the controller holds S near its target (fraction of post-warm-up steps with the smoothed Ŝ
inside the target band S*·exp(±band)).

    python benchmarks/scu_overhead.py                  # small CPU defaults, a few minutes
    python benchmarks/scu_overhead.py --hidden 512 --layers 8 --steps 400 --repeats 3

Every run is a separate subprocess with the same thread count. Each ratio compares two runs made at
the same time, one core each (``--schedule pairs``, the default on >= 2 cores: separate runs on
this 2-core box swing +-15 % with the host's load, a pair's two runs see the same load), and the
median over ``--repeats`` pairs is reported with every pair's ratio: SCU on vs off, and SCU on vs
HF ``Trainer`` + PEFT, which reads the engine's batches in the engine's order. Throughput =
non-padding tokens per second, median over the post-warm-up steps; by default per CPU-second of
the training process (``--clock cpu``, with one thread) so that other load on a shared host does
not skew the ratios; ``--clock wall`` for wall-clock.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
ENGINE = REPO / "containers" / "training"


def _env(threads: int, root: Path | None = None, clock: str = "cpu") -> dict[str, str]:
    env = dict(os.environ)
    if clock == "cpu":
        env["FASTUNER_SCU_CLOCK"] = "process"
    env["PYTHONPATH"] = os.pathsep.join([str(ENGINE), str(REPO), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = str(threads)
    env["MKL_NUM_THREADS"] = str(threads)
    env["HF_HUB_OFFLINE"] = "1"
    env["TOKENIZERS_PARALLELISM"] = "false"
    if root is not None:
        env["OPT_ML_ROOT"] = str(root)
    return env


def synthetic_rows(n: int, seed: int = 0) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    words = [
        "alpha",
        "beta",
        "gamma",
        "delta",
        "model",
        "adapter",
        "token",
        "gradient",
        "prior",
        "bits",
        "lambda",
        "control",
        "unit",
    ]
    rows = []
    for _ in range(n):
        a, b = rng.randint(0, 999), rng.randint(0, 999)
        filler = " ".join(rng.choice(words) for _ in range(rng.randint(2, 8)))
        rows.append(
            {
                "messages": [
                    {"role": "system", "content": "You are a careful calculator."},
                    {"role": "user", "content": f"{filler}. What is {a} plus {b}?"},
                    {"role": "assistant", "content": f"{a} plus {b} is {a + b}."},
                ],
                "label": None,
            }
        )
    return rows


def write_root(root: Path, rows: list[dict[str, Any]], hp: dict[str, Any]) -> None:
    (root / "input" / "data" / "train").mkdir(parents=True)
    (root / "input" / "data" / "validation").mkdir(parents=True)
    (root / "input" / "config").mkdir(parents=True)
    split = max(1, len(rows) // 20)
    (root / "input" / "data" / "train" / "train.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in rows[split:])
    )
    (root / "input" / "data" / "validation" / "val.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in rows[:split])
    )
    (root / "input" / "config" / "hyperparameters.json").write_text(
        json.dumps({k: str(v) for k, v in hp.items()})
    )


def run_engine(
    work: Path, name: str, rows: list[dict[str, Any]], hp: dict[str, Any], threads: int, clock: str
) -> dict[str, Any]:
    root = work / name
    write_root(root, rows, hp)
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "scu.entry", "train"],
        env=_env(threads, root, clock),
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed:\n{proc.stderr[-4000:]}")
    metrics = [json.loads(x) for x in (root / "model" / "metrics.jsonl").read_text().splitlines()]
    cfg = json.loads((root / "model" / "fastuner_config.json").read_text())
    return {"metrics": metrics, "config": cfg, "wall_s": time.perf_counter() - t0}


def post_warmup(values: list[float], warmup_frac: float) -> list[float]:
    return values[int(len(values) * warmup_frac) :] or values


def run_hf(root: Path, cfg_path: Path, args: argparse.Namespace) -> list[float]:
    """One HF Trainer + PEFT run in a subprocess (same thread count and clock) on the data under
    ``root`` with the engine settings in ``cfg_path``: its window series."""
    proc = subprocess.run(
        [
            sys.executable,
            __file__,
            "--hf-config",
            str(cfg_path),
            "--hf-root",
            str(root),
            "--steps",
            str(args.steps),
            "--window",
            str(args.log_every),
        ],
        env=_env(args.threads, clock=args.clock),
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise SystemExit(f"HF baseline failed:\n{proc.stderr[-4000:]}")
    series: list[float] = json.loads(proc.stdout.strip().splitlines()[-1])["tokens_per_s"]
    return series


def hf_worker(args: argparse.Namespace) -> None:
    """Runs in a subprocess: HF Trainer + PEFT with the engine's resolved LoRA settings."""
    import torch
    from peft import LoraConfig, get_peft_model
    from scu.data import build_examples, collate, encode_rows, rank_batches, read_channel
    from scu.modeling import load_tokenizer
    from transformers import AutoModelForCausalLM, Trainer, TrainerCallback, TrainingArguments

    cfg = json.loads(Path(args.hf_config).read_text())
    root = Path(args.hf_root)
    tok = load_tokenizer(cfg["base_model"])
    rows = read_channel(root / "input" / "data" / "train")
    examples, _ = build_examples(encode_rows(tok, rows), cfg["block_size"], cfg["train_on_inputs"])
    # the engine's order (rank_batches per epoch), read sequentially: both runs see the same
    # sequences in the same batches, so tokens per step match step for step (within the first
    # epoch; the engine's short last batch of an epoch shifts the batches after it)
    order: list[int] = []
    epoch = 0
    while len(order) < args.steps * cfg["grad_accum"] * cfg["batch_size"]:
        order += [i for b in rank_batches(len(examples), cfg["batch_size"], cfg["seed"], epoch) for i in b]
        epoch += 1
    dataset = [{"input_ids": examples[i].input_ids, "labels": examples[i].labels} for i in order]

    class Items(torch.utils.data.Dataset[dict[str, Any]]):
        def __len__(self) -> int:
            return len(dataset)

        def __getitem__(self, i: int) -> dict[str, Any]:
            return dataset[i]

    def collator(batch: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        from scu.data import Example

        return collate([Example(b["input_ids"], b["labels"]) for b in batch], tok.pad_token_id)

    torch.manual_seed(cfg["seed"])
    model = AutoModelForCausalLM.from_pretrained(cfg["base_model"], dtype=torch.float32)
    model = get_peft_model(
        model,
        LoraConfig(
            r=cfg["lora_r"],
            lora_alpha=cfg["lora_alpha"],
            lora_dropout=cfg["lora_dropout"],
            target_modules=cfg["target_modules"],
            task_type="CAUSAL_LM",
        ),
    )
    step_tokens: list[int] = []
    step_times: list[float] = []

    class Counting(Trainer):
        def _get_train_sampler(self, train_dataset: Any = None) -> Any:
            return torch.utils.data.SequentialSampler(dataset)

        def training_step(self, model: Any, inputs: dict[str, Any], num_items_in_batch: Any = None) -> Any:
            step_tokens.append(int(inputs["attention_mask"].sum()))
            return super().training_step(model, inputs, num_items_in_batch)

    clock = time.process_time if os.environ.get("FASTUNER_SCU_CLOCK") == "process" else time.perf_counter

    class Clock(TrainerCallback):
        def on_step_end(self, *a: Any, **k: Any) -> None:
            step_times.append(clock())

    targs = TrainingArguments(
        output_dir=str(root / "hf_out"),
        per_device_train_batch_size=cfg["batch_size"],
        gradient_accumulation_steps=cfg["grad_accum"],
        max_steps=args.steps,
        learning_rate=cfg["learning_rate"],
        lr_scheduler_type=cfg["lr_scheduler"],
        warmup_steps=math.ceil(cfg["warmup_ratio"] * args.steps),
        weight_decay=cfg["weight_decay"],
        max_grad_norm=cfg["max_grad_norm"],
        logging_steps=10**6,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        dataloader_num_workers=0,
        remove_unused_columns=False,
        disable_tqdm=True,
        seed=cfg["seed"],
    )
    trainer = Counting(
        model=model, args=targs, train_dataset=Items(), data_collator=collator, callbacks=[Clock()]
    )
    trainer.train()
    # windows of `window` optimizer steps, end to end (data loading and collation included), the
    # same estimator as the engine's log windows: tokens in the window / (end_last - end_before)
    per_step = []
    accum, window = cfg["grad_accum"], args.window
    for start in range(1, len(step_times) - window + 1, window):
        toks = sum(step_tokens[start * accum : (start + window) * accum])
        per_step.append(toks / max(step_times[start + window - 1] - step_times[start - 1], 1e-9))
    print(json.dumps({"tokens_per_s": per_step}))


def ab_same_loop(
    model_path: str, rows: list[dict[str, Any]], steps: int, batch: int, threads: int
) -> tuple[float, float]:
    """Interleaved A/B in one process: the engine's step (forward, CE, backward, clip, the penalty's
    gradient, AdamW, ParamBPT measured) alternating SCU on (lambda=10) and off (lambda=0, no penalty
    gradient). Alternating cancels drift from other load."""
    import torch
    from scu.data import build_examples, collate, encode_rows
    from scu.evaluate import causal_ce_sum
    from scu.modeling import apply_lora, load_base_model, load_tokenizer, trainable_parameters
    from scu.regulariser import add_penalty_grad, lora_factors, param_bpt
    from scu.trainer import make_optimizer

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    tok = load_tokenizer(model_path)
    examples, stats = build_examples(encode_rows(tok, [r["messages"] for r in rows]), 512, False)
    model = load_base_model(model_path, "fp32", "lora", torch.device("cpu"), False)
    model, _ = apply_lora(model, 8, 16, 0.05, None)
    model.train()
    params = trainable_parameters(model)
    factors = lora_factors(model)
    opt = make_optimizer(params, 1e-4, 0.0)  # as the trainer: fused where torch has it
    times: dict[bool, list[float]] = {True: [], False: []}
    tokens: dict[bool, int] = {True: 0, False: 0}
    for i in range(steps + 10):
        on = i % 2 == 1
        b = collate(examples[(i * batch) % len(examples) :][:batch] or examples[:batch], tok.pad_token_id)
        t0 = time.process_time()
        out = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"])
        ce, n = causal_ce_sum(out.logits, b["labels"])
        (ce / max(n, 1)).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        if on:  # as the trainer: the penalty's gradient joins after clipping
            add_penalty_grad(factors, params, 0.01, stats.loss_tokens, 10.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        with torch.no_grad():  # both modes measure ParamBPT after the step, as the trainer does
            param_bpt(factors, 0.01, stats.loss_tokens)
        dt = time.process_time() - t0
        if i >= 10:  # warm-up
            times[on].append(dt)
            tokens[on] += int(b["attention_mask"].sum())
    return tokens[True] / sum(times[True]), tokens[False] / sum(times[False])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="model folder (default: build a small random Llama)")
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--rows", type=int, default=1500)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--warmup-frac", type=float, default=0.2, help="fraction of steps treated as warm-up")
    p.add_argument(
        "--clock",
        choices=["cpu", "wall"],
        default="cpu",
        help="cpu: tokens per CPU-second of the training process (robust on a shared host; pair with "
        "--threads 1); wall: tokens per wall-clock second",
    )
    p.add_argument(
        "--ab-steps", type=int, default=200, help="steps of the interleaved same-loop A/B (0: skip)"
    )
    p.add_argument("--log-every", type=int, default=5, help="engine log window (steps)")
    p.add_argument("--skip-hf", action="store_true")
    p.add_argument(
        "--schedule",
        choices=["pairs", "serial"],
        default="pairs" if (os.cpu_count() or 1) >= 2 else "serial",
        help="pairs: each comparison's two runs at the same time, one core each (default with >= 2 "
        "cores; pair with --threads 1); serial: one after the other",
    )
    p.add_argument("--hf-config", help=argparse.SUPPRESS)
    p.add_argument("--hf-root", help=argparse.SUPPRESS)
    p.add_argument("--window", type=int, default=5, help=argparse.SUPPRESS)
    args = p.parse_args()
    sys.path.insert(0, str(ENGINE))
    if args.hf_config:
        hf_worker(args)
        return

    with tempfile.TemporaryDirectory(prefix="scu-overhead-") as tmp:
        work = Path(tmp)
        if args.model:
            model = args.model
        else:
            from scu.tiny import build_tiny_model

            model = str(
                build_tiny_model(
                    work / "model",
                    hidden_size=args.hidden,
                    num_layers=args.layers,
                    intermediate_size=3 * args.hidden,
                )
            )
        rows = synthetic_rows(args.rows)
        ab = None
        if args.ab_steps:
            ab = ab_same_loop(model, rows, args.ab_steps, args.batch, args.threads)
            print(
                f"  same-loop A/B ({args.ab_steps} alternating steps): on {ab[0]:.1f}, off {ab[1]:.1f} tokens/s"
            )
        base_hp = {
            "base_model": model,
            "max_steps": args.steps,
            "batch_size": args.batch,
            "grad_accum": 1,
            "log_every": args.log_every,
            "checkpoint_every": 10**6,
        }
        tps: dict[str, list[float]] = {"on": [], "off": [], "hf": []}
        ratios: dict[str, list[float]] = {"off": [], "hf": []}  # SCU on / X, one per pair
        runs: dict[str, dict[str, Any]] = {}
        cfg_path, hf_root = work / "resolved.json", work / "on-0-off"  # HF: repeat 0 first "on" run
        pool = ThreadPoolExecutor(2) if args.schedule == "pairs" else None

        def one(mode: str, name: str) -> float:
            if mode == "hf":  # its resolved settings and data
                series = run_hf(hf_root, cfg_path, args)
            else:
                run = run_engine(work, name, rows, {**base_hp, "scu": mode}, args.threads, args.clock)
                series = [m["tokens_per_s"] for m in run["metrics"]]
                runs.setdefault(mode, run)
            return statistics.median(post_warmup(series, args.warmup_frac))

        others = ["off"] if args.skip_hf else ["off", "hf"]
        for rep in range(args.repeats):
            for other in others:
                if other == "hf" and not cfg_path.exists():
                    cfg_path.write_text(json.dumps(runs["on"]["config"]))
                if pool:  # both at once, one core each: the host's drift falls on both alike
                    futures = [
                        pool.submit(one, "on", f"on-{rep}-{other}"),
                        pool.submit(one, other, f"{other}-{rep}"),
                    ]
                    on_v, other_v = (f.result() for f in futures)
                else:
                    on_v, other_v = one("on", f"on-{rep}-{other}"), one(other, f"{other}-{rep}")
                tps["on"].append(on_v)
                tps[other].append(other_v)
                ratios[other].append(on_v / other_v)
                print(
                    f"  repeat {rep}: on {on_v:9.1f} | {other:3s} {other_v:9.1f} tokens/s  ratio {on_v / other_v:.3f}",
                    flush=True,
                )
        if pool:
            pool.shutdown()
        on, off = statistics.median(tps["on"]), statistics.median(tps["off"])
        hf = statistics.median(tps["hf"]) if tps["hf"] else None

        cfg = runs["on"]["config"]
        steps = runs["on"]["metrics"]
        settled = post_warmup(steps, args.warmup_frac)
        inside = sum(abs(math.log(max(m["s_hat"], 1e-12) / cfg["target_s"])) <= cfg["band"] for m in settled)
        print()
        print(
            f"model: {cfg['n_params']:,} params, LoRA r={cfg['lora_r']}, batch {cfg['batch_size']}, "
            f"block {cfg['block_size']}, {args.steps} steps, {args.threads} thread(s), {args.clock} clock, "
            f"N={cfg['train_tokens']}"
        )
        print(f"{'run':28s} {'tokens/s':>10s} {'ratio':>8s} {'target':>8s}")
        schedule = "concurrent pairs" if args.schedule == "pairs" else "one after the other"
        print(f"{'SCU off (lambda=0)':28s} {off:10.1f} {'':>8s}")
        print(
            f"{'SCU on':28s} {on:10.1f} {statistics.median(ratios['off']):8.3f} {'>=0.97':>8s}  (on / off: median "
            f"of {len(ratios['off'])} pairs, {schedule}: {', '.join(f'{r:.3f}' for r in ratios['off'])})"
        )
        if ab:
            print(
                f"{'SCU on, same-loop A/B':28s} {ab[0]:10.1f} {ab[0] / ab[1]:8.3f} {'>=0.97':>8s}  (on / off, alternating steps)"
            )
        if hf:
            print(
                f"{'HF Trainer + PEFT':28s} {hf:10.1f} {statistics.median(ratios['hf']):8.3f} {'>=1.00':>8s}  (SCU on "
                f"/ HF: median of {len(ratios['hf'])} pairs, {schedule}: {', '.join(f'{r:.3f}' for r in ratios['hf'])})"
            )
        last = steps[-1]
        print(
            f"controller: target S*={cfg['target_s']:.4g}, band ±{cfg['band']:g} (log); "
            f"{inside}/{len(settled)} logged post-warm-up steps with Ŝ in band ({inside / len(settled):.1%}); "
            f"first Ŝ={steps[0]['s_hat']:.4g}, final Ŝ={last['s_hat']:.4g}, final lambda={last['lambda']:.4g}"
        )


if __name__ == "__main__":
    main()
