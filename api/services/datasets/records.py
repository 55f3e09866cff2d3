"""The training record: its canonical JSON line, its digest, and a token-count estimate.

A normalised row is written as one compact JSON line with a fixed key order. Record schema
version 2 (manifest ``schema_version`` 2) has two shapes::

    {"messages":[{"role":"user","content":"..."},{"role":"assistant","content":"..."}],"label":null}
    {"text":"...","label":null}

A chat message is ``{"role", "content"}`` plus, only where they apply, ``name``, ``weight``
(only ``0``: an assistant message that is context, not trained; absent means 1),
``tool_calls`` (OpenAI's shape, ``arguments`` a JSON string; ``content`` is then null or a
string) and ``tool_call_id``; roles are system, user, assistant and tool. A conversation with
tools has ``"tools":[{"type":"function","function":{...}}]`` between ``messages`` and
``label``. Version 1 (manifest ``schema_version`` 1) is the plain subset: role/content
messages only, and a plain row is written byte for byte as in version 1 (same digests, same
``content_sha256``).

The same line is the canonical encoding that dedup hashes: JSON string quoting separates the
fields (so ("ab","c") and ("a","bc") differ) and roles and the label are part of it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from json.encoder import encode_basestring
from typing import Final

from api.services.datasets.formats.base import Message, Normalised

RECORD_SCHEMA_VERSION: Final = 2

DIGEST_BYTES: Final = 16
"""Row digests are SHA-256 truncated to 128 bits (collision odds ~n^2/2^129)."""

CONTENT_HASH_DOMAIN: Final = b"fastuner-dataset-v1\n"

_HEAD: Final = '{"messages":['
PAIR_HEAD: Final = '{"messages":[{"role":"user","content":'
PAIR_MID: Final = '},{"role":"assistant","content":'
LABEL_TAIL_PREFIX: Final = '}],"label":'
LABEL_NULL_TAIL: Final = '}],"label":null}'

# The same layout with the string quotes included, for text already known to need no JSON
# escaping (see ``encode_pair_unescaped``).
RAW_PAIR_HEAD: Final = PAIR_HEAD + '"'
RAW_PAIR_MID: Final = '"' + PAIR_MID + '"'
RAW_LABEL_NULL_TAIL: Final = '"' + LABEL_NULL_TAIL
RAW_LABEL_TAIL_PREFIX: Final = '"' + LABEL_TAIL_PREFIX + '"'


def _quote(text: str) -> str:
    return f'"{text}"'


def encode_record(messages: list[Message], label: str | None, *, escape: bool = True) -> str:
    """The canonical compact JSON line (without the newline) for one normalised row.

    ``escape=False`` skips JSON string escaping: only for strings known to need none (no
    ``"``, ``\\`` or control character), e.g. parsed from a line without a backslash.
    """
    enc = encode_basestring if escape else _quote
    tail = "null}" if label is None else enc(label) + "}"
    if len(messages) == 2 and messages[0][0] == "user" and messages[1][0] == "assistant":
        user, assistant = enc(messages[0][1]), enc(messages[1][1])
        return f"{PAIR_HEAD}{user}{PAIR_MID}{assistant}{LABEL_TAIL_PREFIX}{tail}"
    parts = ",".join(f'{{"role":{enc(role)},"content":{enc(content)}}}' for role, content in messages)
    return f'{_HEAD}{parts}],"label":{tail}'


def encode_normalised(row: Normalised, label: str | None, *, escape: bool = True) -> str:
    """The canonical line of any normalised row (``escape=False`` as in :func:`encode_record`,
    honoured only for plain chat rows; the other shapes are always escaped)."""
    if row.plain:
        messages = [(m["role"], m["content"]) for m in row.messages]
        return encode_record(messages, label, escape=escape)
    if row.text is not None:
        tail = "null}" if label is None else encode_basestring(label) + "}"
        return f'{{"text":{encode_basestring(row.text)},"label":{tail}'
    obj: dict[str, object] = {"messages": row.messages}
    if row.tools:
        obj["tools"] = row.tools
    obj["label"] = label
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def encode_pair_unescaped(user: str, assistant: str, label: str | None) -> str:
    """``encode_record`` for a user/assistant pair whose strings need no JSON escaping.

    Valid only when no string contains ``"``, ``\\`` or a control character, e.g. strings
    parsed from a JSON line that holds no backslash (a raw JSON string can hold none of
    those): the validator's fast path for the pair formats.
    """
    tail = RAW_LABEL_NULL_TAIL if label is None else f'{RAW_LABEL_TAIL_PREFIX}{label}"}}'
    return f"{RAW_PAIR_HEAD}{user}{RAW_PAIR_MID}{assistant}{tail}"


def row_digests(lines: Iterable[bytes]) -> bytes:
    """The dedup keys of encoded record lines (without their newline), concatenated."""
    sha256 = hashlib.sha256
    return b"".join([sha256(line).digest()[:DIGEST_BYTES] for line in lines])


def content_sha256(unique_digests: bytes) -> str:
    """``content_sha256`` of a dataset.

    SHA-256 over a version tag followed by the 16-byte digests of the unique normalised
    records, concatenated in first-occurrence (file) order. The same file content gives the
    same hash; it does not depend on the split seed or ratios, and reordering rows changes it
    (row order feeds the seeded split).
    """
    h = hashlib.sha256(CONTENT_HASH_DOMAIN)
    h.update(unique_digests)
    return h.hexdigest()


def estimate_tokens(text: str) -> int:
    """Rough token count of ``text``: an ESTIMATE, not a tokenizer.

    Heuristic: ASCII characters count 1/4 token each (the usual ~4 characters per BPE token
    for English prose and code) and every non-ASCII character counts one token (about right
    for CJK, high for accented Latin or Cyrillic). Rounded up. Real counts differ by model.
    """
    n = len(text)
    if text.isascii():
        return (n + 3) >> 2
    ascii_chars = len(text.encode("ascii", "ignore"))
    return ((ascii_chars + 3) >> 2) + (n - ascii_chars)
