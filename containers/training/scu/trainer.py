"""The training loop: gradient accumulation, SCU regulariser and controller, DDP, logging,
checkpoints and SIGTERM handling. Exact resume: the data order depends only on (seed, epoch) and
the dropout RNG is re-seeded from (seed, rank, step) at every optimizer step."""

from __future__ import annotations

import contextlib
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

from scu import controllers, defaults
from scu.checkpoint import Position, fingerprint_of, latest_checkpoint, load_checkpoint, save_checkpoint
from scu.config import ResolvedConfig
from scu.controllers import Measurements
from scu.data import IGNORE, Example, collate, rank_batches
from scu.distributed import DistInfo, all_reduce_sum, any_rank, barrier
from scu.evaluate import ce_over, forward_ce_sum, keeps_target_logits
from scu.modeling import named_trainable_parameters
from scu.paths import ContractPaths
from scu.regulariser import (
    LN2,
    LoraFactor,
    add_penalty_grad,
    lora_factors,
    param_bpt,
    proximal_shrink,
)
from scu.selection import Selection, eval_interval
from scu.train_log import LogWindow, MetricsWriter, StepOutcome, make_clock

log = logging.getLogger("scu.trainer")

FUSED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
STEP_SLEEP_ENV = "FASTUNER_SCU_TEST_STEP_SLEEP"  # test hook: seconds to sleep per optimizer step


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
    selection: dict[str, Any] = field(default_factory=dict)  # Selection.summary(); empty: no validation
    selected_step: int | None = None  # the step whose adapter was restored at the end (keep_best)


def plan_steps(cfg: ResolvedConfig, n_examples: int, info: DistInfo) -> tuple[int, int]:
    """(micro-batches per epoch on each rank, total optimizer steps)."""
    per_epoch = defaults.micro_batches_per_epoch(n_examples, cfg.batch_size, info.world_size)
    steps = defaults.steps_per_epoch(n_examples, cfg.batch_size, info.world_size, cfg.grad_accum)
    total = cfg.max_steps or max(1, math.ceil(cfg.epochs * steps))
    return per_epoch, total


def seed_step(device: torch.device, seed: int) -> None:
    """Seed the generators this step draws from (dropout), so a resumed run repeats the masks.

    Only this device's and the CPU's: ``torch.manual_seed`` also queues seeds for every other
    backend, formatting a stack trace each time CUDA is not initialised (~1 ms a step at the
    trainer's stack depth on CPU); the CPU generator gets the same seed either way."""
    torch.default_generator.manual_seed(seed)
    if device.type == "cuda":
        torch.cuda.manual_seed(seed)  # the current device's generator


def make_optimizer(params: list[torch.nn.Parameter], lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW, fused (one kernel over all tensors) where torch has it for these parameters: on CPU
    and CUDA in fp32/fp16/bf16, as HF Trainer's default ``adamw_torch_fused``. The per-tensor loop
    took 41 ms a step for SmolLM2-135M's 420 LoRA tensors on one CPU thread, fused 10 ms."""
    fused = all(p.device.type in ("cpu", "cuda") and p.dtype in FUSED_DTYPES for p in params)
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=fused or None)


def adam_step_sizes(
    optimizer: torch.optim.Optimizer, factors: list[LoraFactor], lr: float
) -> list[tuple[float, float]]:
    """(eta_A, eta_B) per LoRA factor: the step Adam takes per unit of gradient on that tensor,
    lr / (sqrt(mean v_hat) + eps) from its second moments after this step (0 for a tensor the
    optimizer does not train). The proximal penalty steps with it, so that lambda weighs the
    penalty against the data on the scale Adam moves the weights, without Adam's normalisation
    capping its effect. One host sync for all tensors."""
    group = optimizer.param_groups[0]
    beta2, eps = group["betas"][1], group["eps"]
    tensors = [t for f in factors for t in (f.a, f.b)]
    states = [optimizer.state.get(t, {}) for t in tensors]
    trained = [i for i, st in enumerate(states) if "exp_avg_sq" in st]
    etas = [0.0] * len(tensors)
    if trained:
        sums = torch._foreach_norm([states[i]["exp_avg_sq"].float() for i in trained], 1)
        means = torch.stack([s.to(sums[0].device) for s in sums]).cpu().tolist()
        step = float(states[trained[0]]["step"])  # one count for all: every tensor steps together
        for i, total in zip(trained, means, strict=True):
            v_hat = total / tensors[i].numel() / (1.0 - beta2**step)
            etas[i] = lr / (math.sqrt(v_hat) + eps)
    return [(etas[2 * j], etas[2 * j + 1]) for j in range(len(factors))]


@dataclass(frozen=True)
class Job:
    """What one training run is given."""

    cfg: ResolvedConfig
    model: Any
    examples: list[Example]
    n_tokens: int  # N of ParamBPT: target tokens trained per epoch (global)
    pad_id: int
    device: torch.device
    info: DistInfo
    paths: ContractPaths
    stop: StopFlag
    val_examples: list[Example] = field(default_factory=list)  # evaluated during training


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
    val_examples: list[Example] | None = None,
) -> TrainResult:
    """Train ``model`` (a PEFT LoRA model) from the latest checkpoint, if any, to the last step.

    The penalty lambda * ParamBPT * ln 2 (nats/token) is part of the loss, but its gradient joins
    the data gradient *after* clipping, so clipping never scales it (a clip that included it scaled
    every step ~60x at lambda = 10); AdamW then steps on the sum. (A decoupled update, w -= lr *
    grad(penalty) after the step as AdamW decouples weight decay, was tried: it is a plain gradient
    step on a penalty whose curvature grows as 1/(sigma^2 N), and it diverged to NaN at lambda = 10
    on small data where this form stays stable.)

    With ``val_examples`` the adapter is evaluated on them every ``eval_every`` steps and at the
    end, and with ``keep_best`` the best one on them is restored before returning (scu.selection)."""
    job = Job(cfg, model, examples, n_tokens, pad_id, device, info, paths, stop, list(val_examples or []))
    return Trainer(job).fit()


class Trainer:
    """Set up once (optimizer, schedule, controller, resume), then :meth:`fit` step by step."""

    def __init__(self, job: Job) -> None:
        cfg, info = job.cfg, job.info
        self.job, self.cfg, self.info, self.device = job, cfg, info, job.device
        self.named_params = named_trainable_parameters(job.model)  # the adapter keep_best copies
        self.params = [p for _, p in self.named_params]
        self.factors = lora_factors(job.model)
        self.per_epoch, self.total_steps = plan_steps(cfg, len(job.examples), info)
        self.optimizer = make_optimizer(self.params, cfg.learning_rate, cfg.weight_decay)
        self.scheduler = get_scheduler(
            cfg.lr_scheduler if cfg.lr_scheduler != "constant" else "constant_with_warmup",
            self.optimizer,
            num_warmup_steps=math.ceil(cfg.warmup_ratio * self.total_steps),
            num_training_steps=self.total_steps,
        )
        self.controller = controllers.build(cfg, self.total_steps)
        steps_per_epoch = math.ceil(self.per_epoch / cfg.grad_accum)
        self.selection = Selection(
            eval_interval(cfg.eval_every, steps_per_epoch, self.total_steps), self.total_steps, cfg.keep_best
        )
        self.validating = any(any(x != IGNORE for x in ex.labels[1:]) for ex in job.val_examples)
        self.fingerprint = fingerprint_of(cfg.model_dump())
        self.pos = self._resume()
        self.writer = MetricsWriter(job.paths, info.is_main)
        self.writer.truncate_after(self.pos.global_step)
        self.ddp: torch.nn.Module = job.model
        if info.enabled:
            ids = [job.device.index] if job.device.type == "cuda" else None
            self.ddp = DistributedDataParallel(job.model, device_ids=ids, find_unused_parameters=False)
        cuda_fp16 = cfg.precision == "fp16" and job.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda") if cuda_fp16 else None
        self.target_logits = keeps_target_logits(job.model)  # the LM head at target positions only
        self.step_sleep = float(os.environ.get(STEP_SLEEP_ENV, "0") or 0)
        self.window = LogWindow(self.pos.global_step, make_clock())
        self.last: dict[str, float] = {}
        job.model.train()

    def _resume(self) -> Position:
        ckpt = latest_checkpoint(self.job.paths.checkpoint_dir)
        if ckpt is None:
            return Position()
        pos, state, selection = load_checkpoint(
            ckpt, self.job.model, self.optimizer, self.scheduler, self.fingerprint
        )
        self.controller.load_state_dict(state)
        self.selection.load_state_dict(selection)
        if self.info.is_main:
            print(f"[scu] resuming from {ckpt.name} at step {pos.global_step}", flush=True)
        return pos

    def _save(self) -> None:
        if self.info.is_main:
            save_checkpoint(
                self.job.paths.checkpoint_dir,
                self.job.model,
                self.optimizer,
                self.scheduler,
                self.controller.state_dict(),
                self.pos,
                self.fingerprint,
                self.cfg.keep_checkpoints,
                self.selection.state_dict(),
            )
        barrier(self.info)

    def _result(self, status: str, selected: int | None = None) -> TrainResult:
        summary = self.selection.summary() if self.validating else {}
        return TrainResult(status, self.pos.global_step, self.total_steps, self.last, summary, selected)

    def _validate(self) -> float:
        """The adapter's validation BPT at this step (all ranks), added to the selection."""
        step = self.pos.global_step
        model = self.job.model
        model.eval()
        ce, tokens = ce_over(
            model, self.job.val_examples, self.cfg.eval_batch_size, self.job.pad_id, self.device, self.info
        )
        model.train()
        bpt = ce / max(tokens, 1) / LN2
        self.selection.record(step, bpt, self.named_params)
        return bpt

    def _finish(self) -> TrainResult:
        """The end of training: restore the best validated adapter (keep_best)."""
        selected = (
            self.selection.restore(self.named_params, self.pos.global_step) if self.validating else None
        )
        if selected is not None and self.info.is_main:
            print(
                f"[scu] keeping the adapter of step {selected}: validation BPT "
                f"{self.selection.best_bpt:.4f}, lowest of {len(self.selection.curve)} evaluations "
                f"(last step {self.pos.global_step}: {self.selection.curve[-1][1]:.4f})",
                flush=True,
            )
        return self._result("completed", selected)

    def fit(self) -> TrainResult:
        cfg, pos, examples = self.cfg, self.pos, self.job.examples
        while pos.global_step < self.total_steps:
            batches = rank_batches(
                len(examples), cfg.batch_size, cfg.seed, pos.epoch, self.info.rank, self.info.world_size
            )
            while pos.batch_idx < len(batches) and pos.global_step < self.total_steps:
                window = batches[pos.batch_idx : pos.batch_idx + cfg.grad_accum]
                outcome = self._step([collate([examples[i] for i in b], self.job.pad_id) for b in window])
                if outcome is None:  # stopped inside the accumulation window: back to its start
                    self.optimizer.zero_grad(set_to_none=True)
                    self._save()
                    return self._result("interrupted")
                pos.global_step += 1
                pos.batch_idx += len(window)
                epoch_done = pos.batch_idx >= len(batches)
                if epoch_done:
                    pos.epoch, pos.batch_idx = pos.epoch + 1, 0
                if self.step_sleep:
                    time.sleep(self.step_sleep)
                self._log(outcome)
                if self._checkpoint_or_stop():
                    return self._result("interrupted")
                if epoch_done:
                    break  # next epoch: a new order
        return self._finish()

    def _step(self, window: list[dict[str, torch.Tensor]]) -> StepOutcome | None:
        """One optimizer step over ``window``'s micro-batches; None if a stop came inside it."""
        cfg, info = self.cfg, self.info
        local_targets = sum(int((w["labels"][:, 1:] != IGNORE).sum()) for w in window)
        lam = self.controller.lam
        seed_step(self.device, (cfg.seed * 1_000_003 + info.rank * 10_007 + self.pos.global_step) % (2**63))
        accumulated = self._accumulate(window, local_targets)
        if accumulated is None:
            return None
        lr = self._apply_gradients(lam)
        with torch.no_grad():  # after the step in every mode: the adapter the next step starts from
            pbpt = float(param_bpt(self.factors, cfg.prior_sigma, self.job.n_tokens))
        ce_local, tokens_local = accumulated
        ce, targets, tokens = all_reduce_sum(
            [float(ce_local), float(local_targets), float(tokens_local)], info, self.device
        )
        data_bpt = ce / max(targets, 1.0) / LN2
        step = self.pos.global_step + 1
        if not (math.isfinite(data_bpt) and math.isfinite(pbpt)):  # the same on every rank
            raise TrainingDiverged(step, self.total_steps, data_bpt, pbpt)
        note = self.controller.update(Measurements(step, self.total_steps, data_bpt, pbpt))
        if note and info.is_main:
            print(f"[scu-warning] step {step}: {note}", flush=True)
        return StepOutcome(data_bpt, pbpt, lam, lr, tokens)

    def _accumulate(
        self, window: list[dict[str, torch.Tensor]], local_targets: int
    ) -> tuple[torch.Tensor, int] | None:
        """Forward and backward every micro-batch: (summed CE in nats, input tokens) on this rank."""
        ce_acc = torch.zeros((), dtype=torch.float64, device=self.device)  # no host sync per micro-batch
        input_tokens = 0
        for j, mb in enumerate(window):
            # Inside an accumulation window, stop at once (the partial gradients are dropped and the
            # checkpoint is the last optimizer-step boundary); between steps the check is in fit().
            if j > 0 and any_rank(self.job.stop.is_set, self.info, self.device):
                return None
            last_mb = j == len(window) - 1
            no_sync = self.info.enabled and not last_mb
            with self.ddp.no_sync() if no_sync else contextlib.nullcontext():  # type: ignore[operator]
                ce_sum, _ = forward_ce_sum(self.ddp, mb, self.device, self.target_logits)
                loss = ce_sum / max(local_targets, 1)
                (self.scaler.scale(loss) if self.scaler else loss).backward()
            ce_acc += ce_sum.detach().double()
            input_tokens += int(mb["attention_mask"].sum())  # a CPU tensor: no device sync
        return ce_acc, input_tokens

    def _apply_gradients(self, lam: float) -> float:
        """Clip the data gradient, add the penalty's (unclipped) and step; returns the step's lr."""
        cfg, scaler = self.cfg, self.scaler
        if scaler:
            scaler.unscale_(self.optimizer)
        if cfg.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.params, cfg.max_grad_norm)
        proximal = cfg.penalty == "proximal"
        if lam > 0.0 and not proximal:  # a function of the weights only, the same on every rank
            add_penalty_grad(self.factors, self.params, cfg.prior_sigma, self.job.n_tokens, lam)
        lr = float(self.scheduler.get_last_lr()[0])
        if scaler:
            scaler.step(self.optimizer)
            scaler.update()
        else:
            self.optimizer.step()
        if lam > 0.0 and proximal:
            steps = adam_step_sizes(self.optimizer, self.factors, lr)
            proximal_shrink(self.factors, steps, cfg.prior_sigma, self.job.n_tokens, lam)
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return lr

    def _log(self, outcome: StepOutcome) -> None:
        """A metrics record every ``log_every`` steps, at the end and at every validation (all
        ranks evaluate; rank 0 writes). The record's throughput is the training steps' own: the
        evaluation runs after the window is measured and is left out of the next one."""
        self.window.add(outcome)
        pos = self.pos
        due = pos.global_step % self.cfg.log_every == 0 or pos.global_step == self.total_steps
        validate = self.validating and self.selection.due(pos.global_step)
        if due or validate:
            epoch = pos.epoch + pos.batch_idx / max(self.per_epoch, 1)
            self.last = self.window.record(
                self.cfg, pos.global_step, self.total_steps, epoch, outcome, self.controller
            )
            if validate:
                with self.window.excluded():
                    self.last["val_bpt"] = self._validate()
            self.writer.write(self.last)

    def _checkpoint_or_stop(self) -> bool:
        """Checkpoint when due, on stop and at the end; True when a stop cuts the run short."""
        pos = self.pos
        stop_now = any_rank(self.job.stop.is_set, self.info, self.device)
        done = pos.global_step >= self.total_steps
        if stop_now or done or pos.global_step % self.cfg.checkpoint_every == 0:
            self._save()  # the final step too: a restart after completion only re-runs eval
        return stop_now and not done
