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


# The default target share of the adapter's bits; see target_s.
TARGET_S = 0.5


def target_s() -> float:
    """S* = 0.5: the adapter may cost as many bits per token as the data it codes (ParamBPT =
    DataBPT, an even two-part code).

    Chosen by measurement on SmolLM2-135M (``benchmarks/scu_quality.py`` and the README table), one
    setting for both regimes: on a one-pass run it costs 0.009 bits of held-out BPT against
    lambda = 0 (S* 0.3: 0.036; the natural S of lambda = 0 there is ~0.7), and on 3 rows x 12 epochs,
    where lambda = 0 overfits, it is 0.067 bits better than lambda = 0 (S* 0.8: 0.062, 0.2: 0.035,
    0.042: 0.005). Tighter targets (a rule S* = 0.3 / passes was tried) erase most of the adapter on
    small data: ParamBPT divides by the tokens of one epoch, so an adapter trained on a few hundred
    tokens costs hundreds of bits per token and any S* far below 1 is a strong shrinkage.
    """
    return TARGET_S


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
