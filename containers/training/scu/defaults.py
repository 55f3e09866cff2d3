"""Smart defaults from the model's parameter count and the dataset's token count (torch-free).

Each rule is a plain function of numbers so it can be unit-tested and documented; every value can
be overridden by a hyperparameter.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Facts:
    n_params: int  # base model parameters, counted from its config
    train_rows: int
    train_tokens: int  # loss-bearing tokens per epoch (N of ParamBPT)
    p95_row_tokens: int  # 95th percentile of prompt+target length, tokens
    max_positions: int  # the model's context length
    cuda: bool
    world_size: int = 1
    text_rows: bool = False  # every training row is a text record (continued pre-training)
    train_examples: int = 0  # training sequences after truncation/packing (0: one per row)
    validation_tokens: int = 0  # target tokens of the validation rows (keep_best selects on them)


def lora_rank(n_params: int, train_tokens: int) -> int:
    if n_params < 300_000_000:
        r = 8
    elif n_params < 3_000_000_000:
        r = 16
    elif n_params < 15_000_000_000:
        r = 32
    else:
        r = 64
    if train_tokens < 200_000:  # little data: a small adapter is enough and overfits less
        r = min(r, 8)
    return r


def lora_alpha(rank: int) -> int:
    return 2 * rank


def learning_rate(n_params: int) -> float:
    if n_params < 50_000_000:
        return 1e-3
    if n_params < 1_000_000_000:
        return 4e-4
    if n_params < 10_000_000_000:
        return 2e-4
    return 1e-4


# The default target share of the adapter's bits without selection; see target_s.
TARGET_S = 0.5
# With selection S* is capped here: the rule is measured up to 15 passes, and near S* = 1 the
# controller's error ln(S/S*) barely moves with ParamBPT (d ln S / d ln ParamBPT = 1 - S).
TARGET_S_MAX = 0.95


def micro_batches_per_epoch(n_examples: int, batch_size: int, world_size: int = 1) -> int:
    """Micro-batches each rank runs in one epoch: its ceil(n / world) examples (the shuffled list
    wraps around to fill the last shard) in batches of ``batch_size`` (``scu.data.rank_batches``)."""
    return math.ceil(math.ceil(n_examples / max(1, world_size)) / batch_size)


def steps_per_epoch(n_examples: int, batch_size: int, world_size: int, grad_accum: int) -> int:
    """Optimizer steps in one epoch: the micro-batches, ``grad_accum`` a step (the last may be short)."""
    return math.ceil(micro_batches_per_epoch(n_examples, batch_size, world_size) / grad_accum)


def passes(n_epochs: float, max_steps: int | None, steps_per_epoch: int) -> float:
    """How many times the run goes over its training data: the epochs, or ``max_steps`` in epochs."""
    if max_steps is None:
        return n_epochs
    return max_steps / max(1, steps_per_epoch)


def target_s(n_passes: float = 1.0, selecting: bool = False) -> float:
    """S*: 0.5, or P / (P + 1) for a run of P passes when it keeps its best validated adapter.

    Without selection (``keep_best`` off or no validation rows) the SCU is the only protection
    against overfitting: S* = 0.5, the adapter may cost as many bits per token as the data it codes
    (ParamBPT = DataBPT, an even two-part code). On SmolLM2-135M (``benchmarks/scu_quality.py``,
    README "SCU quality") it costs ~0.02 bits of held-out BPT against lambda = 0 on one pass and,
    on 11 rows x 15 epochs where lambda = 0 ends 2.7 bits worse than its best epoch, ends 0.14 bits
    behind that best epoch.

    With selection the best epoch is kept anyway, and the SCU's job is not to spoil it: S* =
    P / (P + 1) (at least one pass, at most 0.95), the adapter may cost as many bits per *trained*
    token (P passes over N tokens) as the data: 0.5 for one pass, 0.75 for 3, 0.94 for 15. On the
    11 rows x 15 epochs (3 seeds, paired), with selection, 15/16 is 0.008 +- 0.004 bits better
    than lambda = 0's early-stopped adapter and 0.019 +- 0.008 better than 0.5, whose shrinkage
    already acts in the first epochs (the kept adapters are from epochs 2-5); on 3 rows x 10
    epochs 10/11 is 0.022 +- 0.005 better than 0.5. Its last-step adapter is worse than 0.5's
    (5.2 vs 4.3 bits there), which is why 0.5 stays the rule without selection.
    """
    if not selecting:
        return TARGET_S
    p = max(1.0, n_passes)
    return min(TARGET_S_MAX, p / (p + 1.0))


def block_size(p95_row_tokens: int, max_positions: int, cuda: bool) -> int:
    cap = 4096 if cuda else 1024
    want = 1 << max(6, math.ceil(math.log2(max(p95_row_tokens, 1))))
    return int(min(want, cap, max_positions))


def micro_batch_size(n_params: int, block: int, cuda: bool, qlora: bool) -> int:
    if not cuda:
        return 4 if block <= 512 else 2
    tokens = 16_384 if n_params < 1_000_000_000 else 8192 if n_params < 8_000_000_000 else 4096
    if qlora:
        tokens *= 2
    return max(1, min(64, tokens // block))


def epochs(train_tokens: int) -> float:
    if train_tokens < 1_000_000:
        return 3.0
    if train_tokens < 10_000_000:
        return 2.0
    return 1.0


def grad_accum(train_rows: int, n_epochs: float, micro: int, world_size: int) -> int:
    """Aim at 16 sequences per optimizer step, but keep at least ~60 optimizer steps in the run."""
    effective = 16
    while effective > 1 and train_rows * n_epochs / effective < 60:
        effective //= 2
    return max(1, effective // max(1, micro * world_size))


def gradient_checkpointing(n_params: int, cuda: bool) -> bool:
    return cuda and n_params >= 3_000_000_000
