"""Offline, deterministic data for ``scu_quality.py``: two domains of "continue this" chat records,
split by topic into disjoint train / select / report groups, and seeded training samples sized in
target tokens exactly as the engine counts them.

* ``docs``: CPython's documentation topics (``pydoc_data.topics``), whitespace-normalised prose.
* ``code``: CPython's top-level standard-library modules (``sysconfig.get_paths()["stdlib"]/*.py``).

Each record is ``{"messages": [{"role": "user", "content": "Continue this ... (name):\\n<context>"},
{"role": "assistant", "content": "<continuation>"}], "label": null}``: a short context (about 160
characters) so most tokens are targets (about 600 characters of prose, 520 of code). Topics (doc topic or module name)
are ordered by ``zlib.crc32`` and dealt greedily: the report group until it holds ``report_tokens``
target tokens, then the select group (for early stopping) until ``select_tokens``, the rest is
train. So the three groups never share a topic. Torch-free except :func:`measure`, which uses the
engine's own encoding (``scu.data.encode_rows`` / ``build_examples``).
"""

from __future__ import annotations

import hashlib
import json
import random
import sysconfig
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DOMAINS = ("docs", "code")
CONTEXT_CHARS = 160
TARGET_CHARS = {"docs": 600, "code": 520}  # code has more tokens per character
MIN_TARGET_CHARS = 200
MAX_RECORDS_PER_MODULE = 20  # the stdlib is large: spread the code domain over many modules
SKIP_MODULES = {"this", "antigravity", "__hello__", "__phello__", "__future__"}
GROUPS = ("train", "select", "report")
SLACK = 0.2


@dataclass(frozen=True)
class Record:
    topic: str
    row: dict[str, Any]  # the chat row written to the engine's channel


@dataclass(frozen=True)
class Measured:
    """A record with its token counts after the engine's truncation at ``block``."""

    record: Record
    prompt_tokens: int
    target_tokens: int  # loss-bearing tokens, as the engine counts N
    truncated: bool  # longer than the block before truncation

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.target_tokens


def _chat(instruction: str, context: str, target: str) -> dict[str, Any]:
    return {
        "messages": [
            {"role": "user", "content": f"{instruction}:\n{context}"},
            {"role": "assistant", "content": target},
        ],
        "label": None,
    }


def _word_cut(text: str, at: int) -> int:
    """The first space at or after ``at`` (or the end)."""
    cut = text.find(" ", at)
    return len(text) if cut < 0 else cut


def _prose_chunks(text: str) -> Iterator[tuple[str, str]]:
    pos = 0
    while pos < len(text):
        ctx_end = _word_cut(text, pos + CONTEXT_CHARS)
        tgt_end = _word_cut(text, ctx_end + TARGET_CHARS["docs"])
        context, target = text[pos:ctx_end].strip(), text[ctx_end:tgt_end].strip()
        if len(target) < MIN_TARGET_CHARS:
            return
        yield context, target
        pos = tgt_end + 1


def _code_chunks(source: str) -> Iterator[tuple[str, str]]:
    lines = [ln[:200] for ln in source.splitlines()]
    i = 0
    while i < len(lines):
        ctx: list[str] = []
        while i < len(lines) and (not ctx or sum(len(x) + 1 for x in ctx) < CONTEXT_CHARS):
            ctx.append(lines[i])
            i += 1
        tgt: list[str] = []
        while i < len(lines) and sum(len(x) + 1 for x in tgt) < TARGET_CHARS["code"]:
            tgt.append(lines[i])
            i += 1
        target = "\n".join(tgt).rstrip()
        if len(target.strip()) < MIN_TARGET_CHARS:
            return
        yield "\n".join(ctx).rstrip(), target


def doc_records() -> list[Record]:
    from pydoc_data.topics import topics

    out: list[Record] = []
    for name in sorted(topics):
        text = " ".join(topics[name].split())
        for context, target in _prose_chunks(text):
            out.append(
                Record(name, _chat(f"Continue this passage from the Python docs ({name})", context, target))
            )
    return out


def _stdlib_modules() -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    return [
        p
        for p in sorted(root.glob("*.py"))
        if p.stem not in SKIP_MODULES and not p.stem.startswith(("_sysconfigdata", "test"))
    ]


def code_records() -> list[Record]:
    out: list[Record] = []
    for path in _stdlib_modules():
        chunks = list(_code_chunks(path.read_text(encoding="utf-8", errors="replace")))
        if len(chunks) > MAX_RECORDS_PER_MODULE:  # evenly spaced through the module
            step = len(chunks) / MAX_RECORDS_PER_MODULE
            chunks = [chunks[int(k * step)] for k in range(MAX_RECORDS_PER_MODULE)]
        name = path.stem
        for context, target in chunks:
            out.append(Record(name, _chat(f"Continue this code from module {name}", context, target)))
    return out


def records(domain: str) -> list[Record]:
    if domain == "docs":
        return doc_records()
    if domain == "code":
        return code_records()
    raise ValueError(f"unknown domain {domain!r} (choose from {', '.join(DOMAINS)})")


def data_hash(recs: Sequence[Record]) -> str:
    h = hashlib.sha256()
    for r in recs:
        h.update(json.dumps([r.topic, r.row], sort_keys=True).encode())
    return h.hexdigest()[:16]


def measure(tokenizer: Any, recs: Sequence[Record], block: int) -> list[Measured]:
    """Token counts per record through the engine's own encoding and truncation."""
    from scu.data import IGNORE, build_examples, encode_rows

    encoded = encode_rows(tokenizer, [r.row["messages"] for r in recs])
    examples, _ = build_examples(encoded, block, train_on_inputs=False)
    out = []
    for rec, ex, (prompt, full) in zip(recs, examples, encoded, strict=True):
        target = sum(1 for x in ex.labels[1:] if x != IGNORE)
        out.append(Measured(rec, len(ex) - target, target, len(prompt) + len(full) > block))
    return out


def split(measured: Sequence[Measured], report_tokens: int, select_tokens: int) -> dict[str, list[Measured]]:
    """Topic-disjoint train / select / report groups (see the module docstring)."""
    per_topic: dict[str, list[Measured]] = {}
    for m in measured:
        per_topic.setdefault(m.record.topic, []).append(m)
    order = sorted(per_topic, key=lambda t: (zlib.crc32(t.encode()), t))
    wanted = {"report": report_tokens, "select": select_tokens}
    assigned: dict[str, str] = {}
    # First pass: a topic joins the first unfilled group it does not overshoot by more than SLACK
    # (so one huge topic cannot eat the train pool); a second pass fills any group still short.
    for strict in (True, False):
        for topic in order:
            if topic in assigned and assigned[topic] != "train":
                continue
            size = tokens(per_topic[topic])
            have = {g: sum(tokens(per_topic[t]) for t, a in assigned.items() if a == g) for g in wanted}
            assigned[topic] = next(
                (
                    g
                    for g in ("report", "select")
                    if have[g] < wanted[g] and (not strict or have[g] + size <= wanted[g] * (1 + SLACK))
                ),
                "train",
            )
    groups: dict[str, list[Measured]] = {g: [] for g in GROUPS}
    for topic in order:
        groups[assigned[topic]].extend(per_topic[topic])
    return groups


def tokens(rows: Sequence[Measured], kind: str = "target") -> int:
    return sum(m.target_tokens if kind == "target" else m.tokens for m in rows)


def sample(rows: Sequence[Measured], target_tokens: int, key: str) -> list[Measured]:
    """A seeded sample (by ``key``) of whole rows holding at least ``target_tokens`` target tokens
    (or all rows when there are not that many)."""
    order = list(rows)
    random.Random(key).shuffle(order)
    out: list[Measured] = []
    for m in order:
        if tokens(out) >= target_tokens:
            break
        out.append(m)
    return out


def write_jsonl(path: Path, rows: Sequence[Measured]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(m.record.row) + "\n" for m in rows), encoding="utf-8")
