"""One decoding batch: a left-padded prefill, then one token per row per step with a KV cache."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

Row = tuple[list[int], str | None]  # prompt token ids, adapter id (None: the base model)
Router = Callable[[Sequence[str | None]], Any]  # the model to call for rows using these adapters


class Batch:
    """Rows may use different adapters (PEFT mixed-adapter batch, ``adapter_names``; ``__base__`` = no
    adapter). Padding is masked and position ids count real tokens only, so each row computes what it
    would alone. Rows are dropped between steps (finished, cancelled, past their deadline).
    """

    def __init__(
        self, rows: Sequence[Row], *, route: Router, pad_id: int, device: torch.device, cache_kwarg: str
    ) -> None:
        self.route = route
        self.device = device
        self.cache_kwarg = cache_kwarg
        self.adapters = [adapter for _, adapter in rows]
        width = max(len(ids) for ids, _ in rows)
        ids = torch.tensor([[pad_id] * (width - len(r)) + r for r, _ in rows], dtype=torch.long)
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r, _ in rows], dtype=torch.long)
        self.input_ids = ids.to(device)
        self.mask = mask.to(device)
        self.cache: Any = None

    def _forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        model = self.route(self.adapters)
        name = self.cache_kwarg
        kwargs: dict[str, Any] = {} if self.cache is None else {name: self.cache}
        out = model(
            input_ids=input_ids,
            attention_mask=self.mask,
            position_ids=position_ids,
            use_cache=True,
            logits_to_keep=1,
            **kwargs,
        )
        self.cache = getattr(out, name)
        logits: torch.Tensor = out.logits[:, -1, :]
        return logits

    @torch.inference_mode()
    def prefill(self) -> torch.Tensor:
        """Logits of each row's first new token, ``[rows, vocab]``."""
        positions = (self.mask.cumsum(-1) - 1).clamp(min=0)
        self.next_pos = positions[:, -1] + 1
        return self._forward(self.input_ids, positions)

    @torch.inference_mode()
    def step(self, tokens: Sequence[int], keep: Sequence[int]) -> torch.Tensor:
        """Feed ``tokens`` (one per kept row) for the rows ``keep`` (indices into the current rows)."""
        if len(keep) != len(self.adapters):
            index = torch.tensor(list(keep), dtype=torch.long, device=self.device)
            self.cache.batch_select_indices(index)
            self.mask = self.mask[index]
            self.next_pos = self.next_pos[index]
            self.adapters = [self.adapters[i] for i in keep]
        new = torch.tensor(list(tokens), dtype=torch.long, device=self.device).unsqueeze(-1)
        self.mask = torch.cat([self.mask, torch.ones_like(new)], dim=-1)
        positions = self.next_pos.unsqueeze(-1)
        self.next_pos = self.next_pos + 1
        return self._forward(new, positions)
