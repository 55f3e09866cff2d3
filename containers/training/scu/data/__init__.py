"""The engine's data: read JSONL channels (:mod:`scu.data.records`), render conversations
(:mod:`scu.data.render`), tokenize with loss masks (:mod:`scu.data.encode`), truncate, pack, batch
and split (:mod:`scu.data.examples`). Every public name is importable from here."""

from scu.data.encode import Encoded, encode_prompt, encode_rows
from scu.data.examples import (
    IGNORE,
    DataStats,
    Example,
    build_examples,
    collate,
    examples_sha256,
    pack,
    rank_batches,
    split_holdout,
)
from scu.data.records import ROLES, Conversation, DataError, is_text, read_channel
from scu.data.render import FALLBACK_TOOLS_HEADER, fallback_messages, template_supports_tools

__all__ = [
    "FALLBACK_TOOLS_HEADER",
    "IGNORE",
    "ROLES",
    "Conversation",
    "DataError",
    "DataStats",
    "Encoded",
    "Example",
    "build_examples",
    "collate",
    "encode_prompt",
    "encode_rows",
    "examples_sha256",
    "fallback_messages",
    "is_text",
    "pack",
    "rank_batches",
    "read_channel",
    "split_holdout",
    "template_supports_tools",
]
