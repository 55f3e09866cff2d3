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


# S* is capped here: the rule is measured up to 15 passes, and near S* = 1 the controller's error
# ln(S/S*) barely moves with ParamBPT (d ln S / d ln ParamBPT = 1 - S).
TARGET_S_MAX = 0.95


def passes(n_epochs: float, max_steps: int | None, steps_per_epoch: int) -> float:
    """How many times the run goes over its training data: the epochs, or ``max_steps`` in epochs."""
    if max_steps is None:
        return n_epochs
    return max_steps / max(1, steps_per_epoch)


def target_s(n_passes: float = 1.0) -> float:
    """S* = P / (P + 1) for a run of P passes over its data (P at least 1, S* at most 0.95).

    The rule: the adapter may cost as many bits per *trained* token as the data it codes. ParamBPT
    divides the adapter's bits by N, the target tokens of one epoch, but a run of P passes trains on
    P * N tokens, so ParamBPT / P = DataBPT, i.e. S = ParamBPT / (DataBPT + ParamBPT) = P / (P + 1):
    0.5 for one pass (an even two-part code), 0.75 for 3 epochs, 0.91 for 10, 0.94 for 15.

    Chosen by measurement on SmolLM2-135M (``benchmarks/scu_quality.py --quick``, 3 seeds, every
    cell in the README): on one pass S* 0.5 costs 0.012 bits of held-out BPT against lambda = 0 and
    holds Ŝ in band in every run, while 0.6 and 0.7 cost slightly less but are never reached in 19
    steps (Ŝ of lambda = 0 there is ~0.68) and 0.3 costs 0.036. On 3 rows x 10 epochs, where
    lambda = 0 overfits, S* 0.5 / 0.7 / 0.85 / 0.91 end at 4.413 / 4.396 / 4.393 / 4.393 (the rule
    gives 0.91; 0.02 bits better than 0.5, paired) with Ŝ in band in every run at 0.85 and 0.91.
    A fixed S* cannot serve both: on few data passed many times every S* far below 1 is a strong
    shrinkage (an adapter trained on a few hundred tokens costs hundreds of bits per token).
    Fewer than one pass counts as one (S* 0.3 on one pass already cost 0.036 bits).
    """
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
