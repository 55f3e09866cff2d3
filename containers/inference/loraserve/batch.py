"""One decoding batch: a left-padded prefill, then one token per row per step with a KV cache.

Rows join a running batch (``merge``: the caches of both are left-padded to one length and
concatenated) and leave it (``select``) between steps; this is what lets the scheduler batch
continuously instead of waiting for a whole batch to finish.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

Row = tuple[list[int], str | None]  # prompt token ids, adapter id (None: the base model)
Router = Callable[[Sequence[str | None]], Any]  # the model to call for rows using these adapters


def _plain_dynamic(cache: Any) -> bool:
    """Whether ``cache`` is a DynamicCache of full-attention layers only: one whose rows can be
    padded, trimmed and concatenated. Sliding-window, quantised or static caches cannot (their
    positions or shapes are not per row), so such models batch without joining."""
    from transformers.cache_utils import DynamicCache, DynamicLayer

    layers: list[Any] = list(getattr(cache, "layers", None) or [])
    return (
        type(cache) is DynamicCache
        and bool(layers)
        and all(type(layer) is DynamicLayer and layer.is_initialized for layer in layers)
    )


def _left_pad(x: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    """``x`` padded with zeros on the left of ``dim`` to ``width``."""
    missing = width - x.shape[dim]
    if missing == 0:
        return x
    pad = [0, 0] * (x.dim() - 1 - (dim % x.dim())) + [missing, 0]
    return F.pad(x, pad)


class Batch:
    """Rows may use different adapters (PEFT mixed-adapter batch, ``adapter_names``; ``__base__`` = no
    adapter). Padding is masked and position ids count real tokens only, so each row computes what it
    would alone. Invariant after every forward: ``mask`` is as wide as the cache is long.
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
        self.next_pos = torch.zeros(len(rows), dtype=torch.long, device=device)
        self.cache: Any = None

    def __len__(self) -> int:
        return len(self.adapters)

    @property
    def mergeable(self) -> bool:
        """Whether rows can join this batch (after its prefill)."""
        return self.cache is not None and _plain_dynamic(self.cache)

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
    def select(self, keep: Sequence[int]) -> None:
        """Keep only the rows ``keep`` (indices into the current rows), in that order."""
        if list(keep) == list(range(len(self))):
            return
        index = torch.tensor(list(keep), dtype=torch.long, device=self.device)
        self.cache.batch_select_indices(index)
        self.mask = self.mask[index]
        self.next_pos = self.next_pos[index]
        self.adapters = [self.adapters[i] for i in keep]
        self._trim()

    def _trim(self) -> None:
        """Drop the leading columns that are padding in every row (left by rows that left), so the
        cache of a batch that never empties stays as long as its longest row, not ever longer."""
        used = self.mask.any(dim=0)
        start = int(used.int().argmax()) if bool(used.any()) else 0
        if start == 0 or not _plain_dynamic(self.cache):
            return
        for layer in self.cache.layers:
            layer.keys = layer.keys[:, :, start:]
            layer.values = layer.values[:, :, start:]
        self.mask = self.mask[:, start:]

    @torch.inference_mode()
    def merge(self, other: Batch) -> None:
        """Append ``other``'s rows after this batch's (both prefilled, both ``mergeable``)."""
        width = max(self.mask.shape[1], other.mask.shape[1])
        for mine, theirs in zip(self.cache.layers, other.cache.layers, strict=True):
            mine.keys = torch.cat([_left_pad(mine.keys, width, -2), _left_pad(theirs.keys, width, -2)])
            mine.values = torch.cat([_left_pad(mine.values, width, -2), _left_pad(theirs.values, width, -2)])
        self.mask = torch.cat([_left_pad(self.mask, width, -1), _left_pad(other.mask, width, -1)])
        self.next_pos = torch.cat([self.next_pos, other.next_pos])
        self.adapters = [*self.adapters, *other.adapters]

    @torch.inference_mode()
    def feed(self, tokens: Sequence[int]) -> torch.Tensor:
        """Feed one token per row (in row order); the logits of each row's next token."""
        new = torch.tensor(list(tokens), dtype=torch.long, device=self.device).unsqueeze(-1)
        self.mask = torch.cat([self.mask, torch.ones_like(new)], dim=-1)
        positions = self.next_pos.unsqueeze(-1)
        self.next_pos = self.next_pos + 1
        return self._forward(new, positions)
