"""One training job end to end: data -> smart defaults -> model -> train -> eval -> outputs."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shutil
import signal
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import torch

from scu import data as data_mod
from scu.config import ResolvedConfig, TrainConfig, resolve
from scu.data import Conversation
from scu.defaults import Facts
from scu.distributed import DistInfo, barrier, init_distributed, shutdown
from scu.evaluate import evaluate_adapter
from scu.metrics_format import format_eval_line
from scu.modeling import apply_lora, load_base_model, load_tokenizer, model_facts, qlora_available
from scu.paths import EXIT_INTERRUPTED, EXIT_OK, ContractPaths
from scu.task_eval import GenerationStopped, run_task_eval
from scu.task_metrics import summary_line
from scu.trainer import StopFlag, TrainingDiverged, TrainResult, train

log = logging.getLogger("scu.job")

DUMP_LOGITS_ENV = "FASTUNER_SCU_DUMP_LOGITS"  # test hook: save final in-training logits here
BASE_MODEL_CHANNELS = ("base_model", "model")


class JobError(ValueError):
    """A user-facing problem (bad data, missing model); its text goes to output/failure."""


def resolve_base_model(cfg: TrainConfig, paths: ContractPaths) -> str:
    if cfg.base_model:
        return cfg.base_model
    for name in BASE_MODEL_CHANNELS:
        channel = paths.channel(name)
        if (channel / "config.json").exists():
            return str(channel)
    raise JobError(
        "No base model: set the base_model hyperparameter (a local path or hub id) or provide a "
        "'base_model' input channel holding a Hugging Face model folder."
    )


def _write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _p95(lengths: list[int]) -> int:
    if not lengths:
        return 1
    ordered = sorted(lengths)
    return ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]


def run_job(paths: ContractPaths, cfg: TrainConfig) -> int:
    info, device = init_distributed()
    stop = StopFlag()

    def on_term(signum: int, _frame: FrameType | None) -> None:
        log.warning("received signal %d: will checkpoint and stop", signum)
        stop.set()

    previous = {s: signal.signal(s, on_term) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        return _run(paths, cfg, info, device, stop)
    finally:
        shutdown(info)
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@dataclass(frozen=True)
class Prepared:
    """The data of a run, tokenized, and the config resolved from it."""

    rcfg: ResolvedConfig
    examples: list[data_mod.Example]
    val_examples: list[data_mod.Example]
    n_tokens: int  # target tokens trained per epoch (N of ParamBPT)
    summary: dict[str, Any]  # rows, tokens and truncation per split
    max_positions: int


def _run(paths: ContractPaths, cfg: TrainConfig, info: DistInfo, device: torch.device, stop: StopFlag) -> int:
    """Set up (data, config, model) -> fit -> validate."""
    base = resolve_base_model(cfg, paths)
    tokenizer = load_tokenizer(base)
    prep = _prepare(paths, cfg, base, tokenizer, info, device)
    torch.manual_seed(prep.rcfg.seed)  # the LoRA init draws from the global RNG: same seed, same run
    rcfg = prep.rcfg
    base_model = load_base_model(base, rcfg.precision, rcfg.method, device, rcfg.gradient_checkpointing)
    model, targets = apply_lora(
        base_model, rcfg.lora_r, rcfg.lora_alpha, rcfg.lora_dropout, rcfg.target_modules
    )
    prep = dataclasses.replace(prep, rcfg=rcfg.model_copy(update={"target_modules": targets}))
    if info.is_main:
        _announce(paths, base, prep, info)
    pad_id = int(tokenizer.pad_token_id)
    result = train(
        prep.rcfg, model, prep.examples, prep.n_tokens, pad_id, device, info, paths, stop, prep.val_examples
    )
    if result.status == "interrupted":
        if info.is_main:
            _write_status(paths, "interrupted", result)
            print(
                f"[scu] interrupted at step {result.global_step}/{result.total_steps}: checkpoint saved",
                flush=True,
            )
        return EXIT_INTERRUPTED
    _validate(paths, model, tokenizer, prep, result, pad_id, device, info, stop)
    return EXIT_OK


def _write_status(paths: ContractPaths, status: str, result: TrainResult) -> None:
    _write_json(
        paths.status_file, {"status": status, "step": result.global_step, "total_steps": result.total_steps}
    )


def _read_rows(paths: ContractPaths, cfg: TrainConfig) -> tuple[list[Conversation], list[Conversation], str]:
    """(train rows, validation rows, where validation came from: "validation" or "holdout")."""
    train_rows = data_mod.read_channel(paths.channel("train"))
    if not train_rows:
        raise JobError(f"No training rows: expected one or more *.jsonl files in {paths.channel('train')}.")
    val_rows = data_mod.read_channel(paths.channel("validation"))
    if val_rows:
        return train_rows, val_rows, "validation"
    train_rows, val_rows = data_mod.split_holdout(train_rows, cfg.validation_fraction, cfg.seed)
    return train_rows, val_rows, "holdout"


def _prepare(
    paths: ContractPaths, cfg: TrainConfig, base: str, tokenizer: Any, info: DistInfo, device: torch.device
) -> Prepared:
    """Read and tokenize the data, resolve the smart defaults from it and build the examples."""
    train_rows, val_rows, val_source = _read_rows(paths, cfg)
    enc_train = data_mod.encode_rows(tokenizer, train_rows)
    enc_val = data_mod.encode_rows(tokenizer, val_rows)
    n_params, max_pos = model_facts(base)
    facts = Facts(
        n_params=n_params,
        train_rows=len(train_rows),
        train_tokens=sum(len(t) for _, t in enc_train),
        p95_row_tokens=_p95([len(p) + len(t) for p, t in enc_train]),
        max_positions=max_pos,
        cuda=device.type == "cuda",
        world_size=info.world_size,
        text_rows=all(data_mod.is_text(r) for r in train_rows),
        validation_tokens=sum(len(t) for _, t in enc_val),
    )
    bf16_ok = device.type == "cuda" and torch.cuda.is_bf16_supported()
    rcfg = resolve(cfg, facts, base, qlora_available=qlora_available(), bf16_ok=bf16_ok)
    if cfg.method == "qlora" and rcfg.method != "qlora":
        log.warning("method=qlora needs CUDA and bitsandbytes; falling back to LoRA on %s", device)
    examples, stats = data_mod.build_examples(enc_train, rcfg.block_size, rcfg.train_on_inputs)
    if rcfg.packing:
        examples = data_mod.pack(examples, rcfg.block_size)
    n_tokens = sum(sum(1 for x in ex.labels[1:] if x != data_mod.IGNORE) for ex in examples)
    if n_tokens == 0:
        raise JobError(
            "The training data has no target tokens to learn from (all assistant targets are empty)."
        )
    if n_tokens != facts.train_tokens or len(examples) != facts.train_rows:
        # N of ParamBPT and every token-based default count the tokens actually trained (after
        # truncation to the block), the passes behind S* count the sequences (after packing); the
        # block size itself depends only on the row lengths.
        facts = dataclasses.replace(facts, train_tokens=n_tokens, train_examples=len(examples))
        rcfg = resolve(cfg, facts, base, qlora_available=qlora_available(), bf16_ok=bf16_ok)
    val_examples, val_stats = data_mod.build_examples(enc_val, rcfg.block_size, train_on_inputs=False)
    rcfg = rcfg.model_copy(update={"data_sha256": data_mod.examples_sha256(examples)})
    summary = {"train": stats.summary(), "validation": val_stats.summary(), "validation_source": val_source}
    return Prepared(rcfg, examples, val_examples, n_tokens, summary, max_pos)


def _announce(paths: ContractPaths, base: str, prep: Prepared, info: DistInfo) -> None:
    """``model/fastuner_config.json`` and the ``[scu] config:`` line (rank 0)."""
    rcfg = prep.rcfg
    _write_json(paths.model_dir / "fastuner_config.json", {**rcfg.model_dump(), "data": prep.summary})
    print(
        f"[scu] config: base={base} params={rcfg.n_params} method={rcfg.method} r={rcfg.lora_r} "
        f"alpha={rcfg.lora_alpha} lr={rcfg.learning_rate:g} batch={rcfg.batch_size}x{rcfg.grad_accum}"
        f"x{info.world_size} block={rcfg.block_size} epochs={rcfg.epochs:g} scu={rcfg.scu} "
        f"target_s={rcfg.target_s:g} N={prep.n_tokens} rows={len(prep.examples)} precision={rcfg.precision}",
        flush=True,
    )


def _validate(
    paths: ContractPaths,
    model: Any,
    tokenizer: Any,
    prep: Prepared,
    result: TrainResult,
    pad_id: int,
    device: torch.device,
    info: DistInfo,
    stop: StopFlag,
) -> None:
    """Held-out BPT base vs adapter (all ranks), then the adapter, task metrics and eval.json (rank 0)."""
    rcfg = prep.rcfg
    report = evaluate_adapter(model, prep.val_examples, rcfg.eval_batch_size, pad_id, device, info)
    adapter_bpt = report.get("adapter", {}).get("bpt") if report.get("tokens") else 0.0
    if adapter_bpt is None or not math.isfinite(float(adapter_bpt)):  # same on every rank
        raise TrainingDiverged(
            result.global_step,
            result.total_steps,
            float(adapter_bpt) if adapter_bpt is not None else float("nan"),
            float(result.last.get("param_bpt", float("nan"))),
            where=f"the trained adapter's held-out loss is non-finite after step {result.global_step}",
        )
    if info.is_main:
        source = prep.summary["validation_source"]
        report.update(source=source, steps=result.global_step, scu=rcfg.scu, target_s=rcfg.target_s)
        if result.selection:  # the validation curve during training and the adapter kept
            report["selection"] = {
                **result.selection,
                "selected_step": result.selected_step or result.global_step,
            }
        model.save_pretrained(paths.model_dir)  # before the task generation, which may be cut short
        task = _task_metrics(paths, model, tokenizer, rcfg, prep.max_positions, device, stop)
        if task is not None:
            report["task"] = task
        _finish(paths, model, rcfg, report, prep.val_examples or prep.examples, pad_id, device)
        _write_status(paths, "completed", result)
    barrier(info)


def _task_metrics(
    paths: ContractPaths,
    model: Any,
    tokenizer: Any,
    rcfg: ResolvedConfig,
    max_positions: int,
    device: torch.device,
    stop: StopFlag,
) -> dict[str, Any] | None:
    """Greedy generation on held-out rows, base vs adapter (rank 0 only; the others wait at the
    final barrier). ``None`` when disabled, when there is no row to generate for, or when SIGTERM
    comes meanwhile (the trained adapter is complete: the job still ends completed)."""
    try:
        task = run_task_eval(
            model,
            tokenizer,
            {name: paths.channel(name) for name in ("train", "validation", "test")},
            requested=rcfg.task_type or "auto",
            limit=rcfg.task_eval_rows,
            validation_fraction=rcfg.validation_fraction,
            seed=rcfg.seed,
            max_positions=max_positions,
            device=device,
            stop=lambda: stop.is_set,
        )
    except GenerationStopped:
        log.warning("stop requested: task metrics skipped")
        return None
    except Exception:  # the adapter is trained and kept; only its task metrics are missing
        log.exception("task metrics failed; eval.json gets none")
        return None
    if task is not None:
        print(
            f"[scu-task] {task['kind']} on {task['split']}: {summary_line(task)} in {task['seconds']:.1f}s",
            flush=True,
        )
    return task


def _finish(
    paths: ContractPaths,
    model: Any,
    rcfg: ResolvedConfig,
    report: dict[str, Any],
    probe: list[data_mod.Example],
    pad_id: int,
    device: torch.device,
) -> None:
    """eval.json, the eval line, metrics.jsonl beside the adapter (saved already), the logits hook."""
    _write_json(paths.model_dir / "eval.json", report)
    if report["tokens"]:
        print(
            format_eval_line(
                {
                    "tokens": report["tokens"],
                    "base_bpt": report["base"]["bpt"],
                    "adapter_bpt": report["adapter"]["bpt"],
                    "base_ppl": report["base"]["perplexity"],
                    "adapter_ppl": report["adapter"]["perplexity"],
                }
            ),
            flush=True,
        )
    if paths.metrics_file.exists():
        shutil.copyfile(paths.metrics_file, paths.model_dir / "metrics.jsonl")
    dump = os.environ.get(DUMP_LOGITS_ENV)
    if dump:
        batch = data_mod.collate(probe[: rcfg.eval_batch_size], pad_id)
        model.eval()
        with torch.no_grad():
            logits = model(
                input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device)
            ).logits
        torch.save({**batch, "logits": logits.float().cpu()}, dump)
