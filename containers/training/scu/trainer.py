"""The training loop: gradient accumulation, SCU regulariser and controller, DDP, logging,
checkpoints and SIGTERM handling. Exact resume: the data order depends only on (seed, epoch) and
the dropout RNG is re-seeded from (seed, rank, step) at every optimizer step."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel
from transformers import get_scheduler

from scu.checkpoint import Position, fingerprint_of, latest_checkpoint, load_checkpoint, save_checkpoint
from scu.config import ResolvedConfig
from scu.controller import ControllerConfig, PIController, s_ratio
from scu.data import IGNORE, Example, collate, rank_batches
from scu.distributed import DistInfo, all_reduce_sum, any_rank, barrier
from scu.evaluate import causal_ce_sum
from scu.metrics_format import format_train_line
from scu.modeling import trainable_parameters
from scu.paths import ContractPaths
from scu.regulariser import LN2, add_penalty_grad, lora_factors, param_bpt

log = logging.getLogger("scu.trainer")

STEP_SLEEP_ENV = "FASTUNER_SCU_TEST_STEP_SLEEP"  # test hook: seconds to sleep per optimizer step
CLOCK_ENV = "FASTUNER_SCU_CLOCK"  # "process": tokens_per_s per CPU second (benchmarks on busy hosts)


class StopFlag:
    """Set from the SIGTERM handler; the loop polls it between micro-batches."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def set(self) -> None:
        self._event.set()

    @property
    def is_set(self) -> bool:
        return self._event.is_set()


class TrainingDiverged(RuntimeError):
    """The loss (data or parameter bits) became NaN or infinite: the run is lost, and no adapter is
    written. The message is the job's failure reason."""

    def __init__(
        self, step: int, total_steps: int, data_bpt: float, param_bpt: float, *, where: str = ""
    ) -> None:
        what = where or f"the loss became non-finite at step {step} of {total_steps}"
        super().__init__(
            f"Training diverged: {what} (data_bpt={data_bpt}, param_bpt={param_bpt}); no adapter was saved. "
            "Lower learning_rate or lambda_max, keep max_grad_norm > 0, or check the base model's weights."
        )
        self.step = step


@dataclass
class TrainResult:
    status: str  # "completed" | "interrupted"
    global_step: int
    total_steps: int
    last: dict[str, float] = field(default_factory=dict)


def make_controller(cfg: ResolvedConfig, total_steps: int) -> PIController:
    return PIController(
        ControllerConfig(
            target_s=cfg.target_s,
            kp=cfg.kp,
            ki=cfg.ki,
            ema_alpha=cfg.ema_alpha,
            deadband=cfg.deadband,
            band=cfg.band,
            lambda_init=cfg.lambda_init,
            lambda_min=cfg.lambda_min,
            lambda_max=cfg.lambda_max,
            warmup_steps=math.ceil(cfg.controller_warmup * total_steps),
            saturation_window=max(5, min(20, total_steps // 5)),
        )
    )


def current_lambda(cfg: ResolvedConfig, controller: PIController) -> float:
    if cfg.scu == "off":
        return 0.0
    if cfg.scu == "fixed":
        return float(cfg.lambda_fixed or 0.0)
    return controller.lam


def plan_steps(cfg: ResolvedConfig, n_examples: int, info: DistInfo) -> tuple[int, int]:
    """(micro-batches per epoch on each rank, total optimizer steps)."""
    per_epoch = len(rank_batches(n_examples, cfg.batch_size, cfg.seed, 0, info.rank, info.world_size))
    steps_per_epoch = math.ceil(per_epoch / cfg.grad_accum)
    total = cfg.max_steps or max(1, math.ceil(cfg.epochs * steps_per_epoch))
    return per_epoch, total


class MetricsWriter:
    def __init__(self, paths: ContractPaths, enabled: bool) -> None:
        self.paths = paths
        self.enabled = enabled

    def truncate_after(self, step: int) -> None:
        """On resume, drop lines logged after the checkpoint we restart from."""
        path = self.paths.metrics_file
        if not self.enabled or not path.exists():
            return
        keep = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
        keep = [ln for ln in keep if json.loads(ln).get("step", 0) <= step]
        path.write_text("".join(ln + "\n" for ln in keep), encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        print(format_train_line(record), flush=True)
        self.paths.output_data_dir.mkdir(parents=True, exist_ok=True)
        with self.paths.metrics_file.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")


def train(
    cfg: ResolvedConfig,
    model: Any,
    examples: list[Example],
    n_tokens: int,
    pad_id: int,
    device: torch.device,
    info: DistInfo,
    paths: ContractPaths,
    stop: StopFlag,
) -> TrainResult:
    """The penalty lambda * ParamBPT * ln 2 (nats/token) is part of the loss, but its gradient joins
    the data gradient *after* clipping, so clipping never scales it (a clip that included it scaled
    every step ~60x at lambda = 10); AdamW then steps on the sum. (A decoupled update, w -= lr *
    grad(penalty) after the step as AdamW decouples weight decay, was tried: it is a plain gradient
    step on a penalty whose curvature grows as 1/(sigma^2 N), and it diverged to NaN at lambda = 10
    on small data where this form stays stable.)"""
    params = trainable_parameters(model)
    factors = lora_factors(model)
    per_epoch, total_steps = plan_steps(cfg, len(examples), info)
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    scheduler = get_scheduler(
        cfg.lr_scheduler if cfg.lr_scheduler != "constant" else "constant_with_warmup",
        optimizer,
        num_warmup_steps=math.ceil(cfg.warmup_ratio * total_steps),
        num_training_steps=total_steps,
    )
    controller = make_controller(cfg, total_steps)
    fingerprint = fingerprint_of(cfg.model_dump())
    pos = Position()
    ckpt = latest_checkpoint(paths.checkpoint_dir)
    if ckpt is not None:
        pos, ctrl_state = load_checkpoint(ckpt, model, optimizer, scheduler, fingerprint)
        controller.load_state_dict(ctrl_state)
        if info.is_main:
            print(f"[scu] resuming from {ckpt.name} at step {pos.global_step}", flush=True)
    writer = MetricsWriter(paths, info.is_main)
    writer.truncate_after(pos.global_step)

    ddp: torch.nn.Module = model
    if info.enabled:
        ddp = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=False
        )
    scaler = torch.amp.GradScaler("cuda") if cfg.precision == "fp16" and device.type == "cuda" else None
    step_sleep = float(os.environ.get(STEP_SLEEP_ENV, "0") or 0)
    clock = time.process_time if os.environ.get(CLOCK_ENV) == "process" else time.perf_counter
    model.train()

    def save(position: Position) -> None:
        if info.is_main:
            save_checkpoint(
                paths.checkpoint_dir,
                model,
                optimizer,
                scheduler,
                controller.state_dict(),
                position,
                fingerprint,
                cfg.keep_checkpoints,
            )
        barrier(info)

    window_stats = {"loss_bpt": 0.0, "data_bpt": 0.0, "n": 0, "tokens": 0.0}
    window_start = clock()
    run_start, run_start_step = clock(), pos.global_step
    last: dict[str, float] = {}
    unreachable = controller.unreachable if cfg.scu == "on" else 0

    while pos.global_step < total_steps:
        batches = rank_batches(len(examples), cfg.batch_size, cfg.seed, pos.epoch, info.rank, info.world_size)
        while pos.batch_idx < len(batches) and pos.global_step < total_steps:
            window = [
                collate([examples[i] for i in b], pad_id)
                for b in batches[pos.batch_idx : pos.batch_idx + cfg.grad_accum]
            ]
            local_targets = sum(int((w["labels"][:, 1:] != IGNORE).sum()) for w in window)
            lam = current_lambda(cfg, controller)
            torch.manual_seed((cfg.seed * 1_000_003 + info.rank * 10_007 + pos.global_step) % (2**63))
            ce_acc = torch.zeros((), dtype=torch.float64, device=device)  # no host sync per micro-batch
            input_tokens, interrupted = 0, False
            for j, mb in enumerate(window):
                # Inside an accumulation window, stop at once (the partial gradients are dropped and the
                # checkpoint is the last optimizer-step boundary); between steps the check is below.
                if j > 0 and any_rank(stop.is_set, info, device):
                    interrupted = True
                    break
                last_mb = j == len(window) - 1
                sync = contextlib.nullcontext() if (last_mb or not info.enabled) else ddp.no_sync()  # type: ignore[operator]
                with sync:
                    out = ddp(
                        input_ids=mb["input_ids"].to(device), attention_mask=mb["attention_mask"].to(device)
                    )
                    ce_sum, _ = causal_ce_sum(out.logits, mb["labels"].to(device))
                    loss = ce_sum / max(local_targets, 1)
                    (scaler.scale(loss) if scaler else loss).backward()
                ce_acc += ce_sum.detach().double()
                input_tokens += int(mb["attention_mask"].sum())  # a CPU tensor: no device sync
            if interrupted:
                optimizer.zero_grad(set_to_none=True)
                save(pos)
                return TrainResult("interrupted", pos.global_step, total_steps, last)
            if scaler:
                scaler.unscale_(optimizer)
            if cfg.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            if lam > 0.0:  # a function of the weights only, the same on every rank: no all-reduce
                add_penalty_grad(factors, params, cfg.prior_sigma, n_tokens, lam)
            lr = float(scheduler.get_last_lr()[0])
            if scaler:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            with torch.no_grad():  # after the step in every mode: the adapter the next step starts from
                pbpt = float(param_bpt(factors, cfg.prior_sigma, n_tokens))
            ce_g, tok_g, in_g = all_reduce_sum(
                [float(ce_acc), float(local_targets), float(input_tokens)], info, device
            )
            data_bpt = ce_g / max(tok_g, 1.0) / LN2
            if not (math.isfinite(data_bpt) and math.isfinite(pbpt)):  # the same on every rank
                raise TrainingDiverged(pos.global_step + 1, total_steps, data_bpt, pbpt)
            s = s_ratio(data_bpt, pbpt)
            controller.update(data_bpt, pbpt)  # tracks S_hat in every mode; lambda only with scu=on
            if cfg.scu == "on":
                unreachable = _report_unreachable(controller, unreachable, pos.global_step + 1, info)
            pos.global_step += 1
            pos.batch_idx += len(window)
            epoch_done = pos.batch_idx >= len(batches)
            if epoch_done:
                pos.epoch, pos.batch_idx = pos.epoch + 1, 0
            if step_sleep:
                time.sleep(step_sleep)

            window_stats["loss_bpt"] += data_bpt + lam * pbpt
            window_stats["data_bpt"] += data_bpt
            window_stats["n"] += 1
            window_stats["tokens"] += in_g
            if pos.global_step % cfg.log_every == 0 or pos.global_step == total_steps:
                now = clock()
                n = max(int(window_stats["n"]), 1)
                per_step = (now - run_start) / max(pos.global_step - run_start_step, 1)
                last = {
                    "step": pos.global_step,
                    "epoch": pos.epoch + pos.batch_idx / max(per_epoch, 1),
                    "loss_bpt": window_stats["loss_bpt"] / n,
                    "data_bpt": window_stats["data_bpt"] / n,
                    "param_bpt": pbpt,
                    "s": s,
                    "s_hat": controller.state.s_hat if controller.state.s_hat is not None else s,
                    "target_s": cfg.target_s,
                    "band": cfg.band,
                    "lambda": current_lambda(cfg, controller),
                    "unreachable": unreachable,
                    "lr": lr,
                    "tokens_per_s": window_stats["tokens"] / max(now - window_start, 1e-9),
                    "eta_s": round(per_step * (total_steps - pos.global_step)),
                }
                writer.write(last)
                window_stats = {"loss_bpt": 0.0, "data_bpt": 0.0, "n": 0, "tokens": 0.0}
                window_start = clock()
            stop_now = any_rank(stop.is_set, info, device)
            done = pos.global_step >= total_steps
            if stop_now or done or pos.global_step % cfg.checkpoint_every == 0:
                save(pos)  # the final step too: a restart after completion only re-runs eval
            if stop_now and pos.global_step < total_steps:
                return TrainResult("interrupted", pos.global_step, total_steps, last)
            if epoch_done:
                break  # next epoch: a new order
    return TrainResult("completed", pos.global_step, total_steps, last)


def _report_unreachable(controller: PIController, before: int, step: int, info: DistInfo) -> int:
    """Log once when lambda starts (or stops) sitting on a bound for a whole window."""
    now = controller.unreachable
    if now != before and info.is_main:
        cfg, s_hat = controller.config, controller.state.s_hat
        if now == 0:
            print(
                f"[scu-warning] step {step}: lambda left its bound (S_hat {s_hat:.4g}, target {cfg.target_s:g})"
            )
        else:
            bound, value = ("maximum", cfg.lambda_max) if now > 0 else ("minimum", cfg.lambda_min)
            hint = (
                "S stays above the target even at the strongest allowed regularisation: raise "
                "lambda_max or target_s"
                if now > 0
                else "S stays below the target with almost no regularisation: lower target_s or lambda_min"
            )
            print(
                f"[scu-warning] step {step}: target S*={cfg.target_s:g} unreachable, lambda pinned at its "
                f"{bound} {value:g} for {cfg.saturation_window} steps (S_hat {s_hat:.4g}); {hint}",
                flush=True,
            )
    return now
