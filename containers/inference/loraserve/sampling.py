"""Next-token choice: greedy argmax, or temperature/top-k/top-p sampling per sequence."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from loraserve.schemas import GenerationParameters


class Sampler:
    """Next-token choice for one sequence: greedy, or temperature/top-k/top-p sampling with its own
    generator (a ``seed`` makes it reproducible whatever else shares the batch)."""

    def __init__(self, params: GenerationParameters) -> None:
        self.temperature = params.temperature
        self.top_p = params.top_p
        self.top_k = params.top_k or 0
        self.generator: torch.Generator | None = None
        if self.temperature > 0:
            self.generator = torch.Generator(device="cpu")
            if params.seed is not None:
                self.generator.manual_seed(params.seed)
            else:
                self.generator.seed()

    @property
    def greedy(self) -> bool:
        return self.generator is None

    def sample(self, logits: torch.Tensor) -> int:
        """``logits``: one row (vocabulary), float32 on the CPU."""
        assert self.generator is not None
        x = logits / self.temperature
        if 0 < self.top_k < x.shape[-1]:
            kth = torch.topk(x, self.top_k).values[-1]
            x = x.masked_fill(x < kth, float("-inf"))
        if self.top_p < 1.0:
            sorted_x, order = torch.sort(x)  # ascending, as transformers' TopPLogitsWarper
            cumulative = sorted_x.softmax(-1).cumsum(-1)
            drop = cumulative <= 1 - self.top_p
            drop[-1] = False  # keep at least the most likely token
            x = x.masked_fill(torch.zeros_like(drop).scatter(0, order, drop), float("-inf"))
        return int(torch.multinomial(x.softmax(-1), 1, generator=self.generator).item())


@torch.inference_mode()
def pick_tokens(logits: torch.Tensor, samplers: Sequence[Sampler]) -> list[int]:
    """One next token per row: argmax for greedy rows, each sampled row with its own generator."""
    chosen: list[int] = logits.argmax(-1).tolist()
    for i, sampler in enumerate(samplers):
        if not sampler.greedy:
            chosen[i] = sampler.sample(logits[i].float().cpu())
    return chosen
