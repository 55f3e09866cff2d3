"""Tokenize rendered conversations into ``(prompt_ids, target_ids)`` with the mask of trained tokens
(which tokens are trained: :mod:`scu.data.render`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from scu.data.records import is_text
from scu.data.render import fallback_segments, has_tools, plan, template_segments, template_source


class Encoded(tuple[list[int], list[int]]):
    """``(prompt_ids, target_ids)`` of one row; ``mask[i]``: whether ``target_ids[i]`` is trained.

    ``prompt_ids`` are the tokens before the first trained token; ``mask`` is ``None`` when every
    target token is trained (single-turn rows, text rows).
    """

    mask: list[bool] | None

    def __new__(cls, prompt: list[int], target: list[int], mask: list[bool] | None = None) -> Encoded:
        self = super().__new__(cls, (prompt, target))
        self.mask = None if mask is None or all(mask) else mask
        return self


def encode_rows(tokenizer: Any, rows: Sequence[Sequence[dict[str, Any]]]) -> list[Encoded]:
    """One :class:`Encoded` ``(prompt_ids, target_ids)`` per row, untruncated.

    Each trained turn ends with EOS (see the module docstring); ``Encoded.mask`` marks the masked
    tokens between trained turns of a multi-turn row.
    """
    eos_id = tokenizer.eos_token_id
    eos = [eos_id] if eos_id is not None else []
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    eos_text = tokenizer.eos_token or ""
    out: list[Encoded] = []
    step = 512
    for start in range(0, len(rows), step):
        chunk = rows[start : start + step]
        plans: list[tuple[list[int], list[tuple[str, int]]]] = []
        for n, row in enumerate(chunk, start):
            if is_text(row):
                plans.append((bos, [(row[0]["content"], 2)]))
                continue
            source = template_source(tokenizer, has_tools(row))
            if source:
                pieces = template_segments(tokenizer, source, row, n)
                plans.append(([], _merge(pieces)))
            else:
                plans.append((bos, _merge(fallback_segments(row, eos_text))))
        texts = [text for _, pieces in plans for text, _ in pieces]
        ids = tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
        k = 0
        for head, pieces in plans:
            tokens: list[int] = list(head)
            trained: list[bool] = [False] * len(head)
            for _, kind in pieces:
                piece = list(ids[k])
                k += 1
                if kind == 0:
                    tokens.extend(piece)
                    trained.extend([False] * len(piece))
                    continue
                cut = _last_index(piece, eos_id)
                learn, rest = (piece, []) if cut is None else (piece[: cut + 1], piece[cut + 1 :])
                if cut is None and kind == 2:
                    learn = learn + eos
                tokens.extend(learn)
                trained.extend([True] * len(learn))
                if kind == 1:
                    tokens.extend(rest)
                    trained.extend([False] * len(rest))
            first = trained.index(True) if True in trained else len(tokens)
            out.append(Encoded(tokens[:first], tokens[first:], trained[first:]))
    return out


def _merge(pieces: list[tuple[str, int]]) -> list[tuple[str, int]]:
    """Join neighbouring masked pieces (one tokenizer call each, as one string) and drop empty ones."""
    out: list[tuple[str, int]] = []
    for text, kind in pieces:
        if kind == 0 and out and out[-1][1] == 0:
            out[-1] = (out[-1][0] + text, 0)
        elif text or kind == 2:
            out.append((text, kind))
    return out


def _last_index(ids: list[int], value: int | None) -> int | None:
    if value is None:
        return None
    for i in range(len(ids) - 1, -1, -1):
        if ids[i] == value:
            return i
    return None


def encode_prompt(tokenizer: Any, row: Sequence[dict[str, Any]]) -> list[int]:
    """Token ids of the prompt that asks for the final assistant turn of ``row``, rendered as
    training renders it (template or fallback, tools included): for generation-based evaluation."""
    tools = has_tools(row)
    source = template_source(tokenizer, tools)
    if source:
        msgs, _, tmpl_tools = plan(row, source)
        kwargs: dict[str, Any] = {"tools": tmpl_tools} if tmpl_tools else {}
        text = tokenizer.apply_chat_template(
            msgs[:-1], add_generation_prompt=True, tokenize=False, chat_template=source, **kwargs
        )
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])
    pieces = fallback_segments(row, tokenizer.eos_token or "")
    text = "".join(t for t, _ in pieces[:-1])
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    return bos + list(tokenizer(text, add_special_tokens=False)["input_ids"])
