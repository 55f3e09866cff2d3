"""Pass 1: stream the file once, validate and normalise every line, record small per-row facts.

For each valid row the scan keeps only fixed-size facts in compact arrays (16-byte digest,
character and estimated token length, a label id when the file has labels, the record
length when spooling: 24-40 bytes a row); line numbers are rebuilt from the few lines that
were not rows. Dedup, stats and the split are computed from these afterwards. When given a spool stream it also writes
each valid row's canonical record line there, so pass 2 never parses JSON again.
"""

from __future__ import annotations

import hashlib
import json
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import orjson

from api.domain.datasets import DatasetOptions
from api.domain.enums import DatasetFormat, TaskType
from api.services.datasets import issues
from api.services.datasets.bgio import ByteSink
from api.services.datasets.formats import NORMALISERS, Normaliser, RowError, detect_format, unmatched_error
from api.services.datasets.issues import IssueCollector
from api.services.datasets.reader import INVALID_UTF8_LINE, TOO_LONG_LINE, iter_line_blocks
from api.services.datasets.records import (
    DIGEST_BYTES,
    RAW_LABEL_NULL_TAIL,
    RAW_LABEL_TAIL_PREFIX,
    RAW_PAIR_HEAD,
    RAW_PAIR_MID,
    encode_normalised,
    encode_record,
    estimate_tokens,
)

NO_LABEL: Final = 0xFFFFFFFF
# A JSON string escape takes at most 6 bytes per character (\uXXXX); field names, other
# fields and whitespace get a generous allowance on top.
_LINE_OVERHEAD_BYTES: Final = 1 << 16

# Formats whose rows are exactly two text fields: (user field, assistant field).
PAIR_FIELDS: Final[dict[DatasetFormat, tuple[str, str]]] = {
    DatasetFormat.INPUT_TARGET: ("input", "target"),
    DatasetFormat.PROMPT_COMPLETION: ("prompt", "completion"),
}


@dataclass
class ScanResult:
    format: DatasetFormat | None
    total_lines: int
    errors: IssueCollector
    warnings: IssueCollector
    rows: int = 0  # valid rows (duplicates included)
    digests: bytearray = field(default_factory=bytearray)  # DIGEST_BYTES per valid row
    # Lengths: uint32, or uint64 when the limits allow longer rows.
    char_lengths: array[int] = field(default_factory=lambda: array("I"))
    token_lengths: array[int] = field(default_factory=lambda: array("I"))
    # Label id per valid row (NO_LABEL when none); empty while no row has had a label.
    labels: array[int] = field(default_factory=lambda: array("I"))
    label_names: list[str] = field(default_factory=list)
    # For each line that was not a valid row: how many valid rows came before it.
    gaps: array[int] = field(default_factory=lambda: array("Q"))
    # Byte length of each spooled record line (without its newline); only when spooling.
    record_lengths: array[int] = field(default_factory=lambda: array("Q"))
    # Classification: whether rows carry a 'label' field (None until decided).
    label_field_mode: bool | None = None

    @property
    def valid_rows(self) -> int:
        return self.rows

    def line_numbers(self, row_indices: npt.NDArray[np.intp]) -> list[int]:
        """1-based file line numbers of the given valid rows."""
        gaps = np.frombuffer(self.gaps, dtype=np.uint64)
        shift = np.searchsorted(gaps, row_indices.astype(np.uint64), side="right")
        return [int(x) for x in row_indices + 1 + shift]

    def label_ids(self) -> npt.NDArray[np.uint32]:
        if not self.labels:
            return np.full(self.rows, NO_LABEL, dtype=np.uint32)
        return np.frombuffer(self.labels, dtype=np.uint32)


def max_line_bytes(options: DatasetOptions) -> int:
    limits = options.limits
    return 6 * (limits.max_input_chars + limits.max_target_chars) + _LINE_OVERHEAD_BYTES


def _parse_slow(line: str) -> Any:
    try:
        return json.loads(line)
    except RecursionError:
        raise RowError(issues.INVALID_JSON, "nested too deeply") from None
    except ValueError as exc:
        msg = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
        raise RowError(issues.INVALID_JSON, msg) from None


def _label_of(row: dict[str, Any]) -> str | None:
    label = row.get("label")
    if label is None:
        return None
    if type(label) is not str:
        raise RowError(issues.WRONG_TYPE, "'label' must be a string")
    label = label.strip()
    if not label:
        raise RowError(issues.EMPTY_TEXT, "'label' is empty")
    return label


def scan(
    source: Path,
    options: DatasetOptions,
    spool: ByteSink | None = None,
    *,
    start: int = 0,
    end: int | None = None,
    fmt: DatasetFormat | None = None,
    label_field_mode: bool | None = None,
) -> ScanResult:
    """Validate ``source`` line by line. Never raises for bad data (I/O errors do raise).

    ``start``/``end`` scan one line-aligned byte range (line numbers then count from it);
    ``fmt`` (default ``options.format``) and ``label_field_mode`` fix what would otherwise be
    decided by the first suitable row, so that parts of a file scanned separately agree
    with a scan of the whole (see :mod:`parallel`).
    """
    limits = options.limits
    max_in = limits.max_input_chars
    max_tgt = limits.max_target_chars
    near_in = limits.near_limit_fraction * max_in
    near_tgt = limits.near_limit_fraction * max_tgt
    classify = options.task_type is TaskType.CLASSIFICATION
    errors = IssueCollector(limits.max_errors_shown)
    warnings = IssueCollector(limits.max_errors_shown)
    fmt = fmt or options.format
    res = ScanResult(format=fmt, total_lines=0, errors=errors, warnings=warnings)
    if max_in + max_tgt >= 1 << 32:  # a row's length may not fit in uint32
        res.char_lengths, res.token_lengths = array("Q"), array("Q")

    normalise: Normaliser | None = NORMALISERS[fmt] if fmt is not None else None
    pair = PAIR_FIELDS.get(fmt) if fmt is not None else None
    # Classification: label field if present; else, when the first row that normalised had
    # no label field, the target text is the label; when it had one, a row without it is an
    # error (missing_label).
    loads = orjson.loads
    sha256 = hashlib.sha256
    digests = res.digests
    add_chars = res.char_lengths.append
    add_tokens = res.token_lengths.append
    labels = res.labels
    label_ids: dict[str, int] = {}
    label_names = res.label_names
    add_gap = res.gaps.append
    add_record_length = res.record_lengths.append
    add_error = errors.add
    lineno = 0
    rows = 0
    text: str
    target: str

    res.label_field_mode = label_field_mode
    for first_lineno, block in iter_line_blocks(source, max_line_bytes(options), start=start, end=end):
        lineno = first_lineno - 1
        out: list[bytes] = []
        for line in block:
            lineno += 1
            if not line or line.isspace():
                if line == INVALID_UTF8_LINE:
                    add_error(issues.INVALID_UTF8, lineno, "bytes are not valid UTF-8")
                elif line == TOO_LONG_LINE:
                    add_error(issues.LINE_TOO_LONG, lineno)
                else:
                    warnings.add(issues.BLANK_LINE, lineno)
                add_gap(rows)
                continue
            try:
                try:
                    obj = loads(line)  # orjson: strict RFC 8259, rejects trailing garbage
                except (ValueError, RecursionError):
                    obj = _parse_slow(line)  # the precise message (and what stdlib json accepts)
                if type(obj) is not dict:
                    raise RowError(issues.NOT_OBJECT, f"a JSON {type(obj).__name__}, not an object")
                if normalise is None:
                    fmt = detect_format(obj)
                    if fmt is None:
                        raise unmatched_error(obj)
                    normalise = NORMALISERS[fmt]
                    pair = PAIR_FIELDS.get(fmt)
                    res.format = fmt
                # Fast path for the two-field formats: both fields plain non-blank strings.
                if pair is not None:
                    raw_text = obj.get(pair[0])
                    raw_target = obj.get(pair[1])
                    if (
                        type(raw_text) is str
                        and type(raw_target) is str
                        and raw_text
                        and raw_target
                        and not raw_text.isspace()
                        and not raw_target.isspace()
                    ):
                        text, target = raw_text, raw_target
                    else:
                        normalise(obj)  # raises the precise RowError
                        raise AssertionError("unreachable")  # pragma: no cover
                    norm = None
                else:
                    norm = normalise(obj)
                    if classify and norm.text is not None:
                        raise RowError(
                            issues.UNSUPPORTED_FORMAT,
                            "'text' rows are continued pre-training and have no target to classify; "
                            "use input_target with the class as the target",
                        )
                    target, others = norm.measure()
                label = _label_of(obj) if "label" in obj else None
                if classify:
                    if label_field_mode is None:
                        label_field_mode = res.label_field_mode = label is not None
                    if label is None:
                        if label_field_mode:
                            raise RowError(issues.MISSING_LABEL, "no 'label' field")
                        label = target.strip() if norm is None else norm.label_source().strip()
                        if not label:
                            raise RowError(
                                issues.EMPTY_TEXT,
                                "the final assistant message has no text to use as the label",
                            )
                tgt_len = len(target)
                if norm is None:
                    in_len = len(text)
                    if text.isascii() and target.isascii():
                        tokens = ((in_len + 3) >> 2) + ((tgt_len + 3) >> 2)
                    else:
                        tokens = estimate_tokens(text) + estimate_tokens(target)
                else:
                    in_len = 0
                    tokens = estimate_tokens(target)
                    for part in others:
                        in_len += len(part)
                        tokens += estimate_tokens(part)
                if in_len >= near_in or tgt_len >= near_tgt:
                    if in_len > max_in or tgt_len > max_tgt:
                        if in_len > max_in:
                            add_error(issues.INPUT_TOO_LONG, lineno, f"{in_len} > {max_in} characters")
                        if tgt_len > max_tgt:
                            add_error(issues.TARGET_TOO_LONG, lineno, f"{tgt_len} > {max_tgt} characters")
                        add_gap(rows)
                        continue
                    warnings.add(issues.NEAR_LIMIT, lineno)
                if norm is not None:
                    # chat strings come straight from the line: no backslash, no escaping
                    escape = fmt is not DatasetFormat.CHAT or "\\" in line
                    line_str = encode_normalised(norm, label, escape=escape)
                elif "\\" in line:
                    line_str = encode_record([("user", text), ("assistant", target)], label)
                elif label is None:  # inlined records.encode_pair_unescaped
                    line_str = f"{RAW_PAIR_HEAD}{text}{RAW_PAIR_MID}{target}{RAW_LABEL_NULL_TAIL}"
                else:
                    line_str = f'{RAW_PAIR_HEAD}{text}{RAW_PAIR_MID}{target}{RAW_LABEL_TAIL_PREFIX}{label}"}}'
                try:
                    record = line_str.encode()
                except UnicodeEncodeError:
                    raise RowError(issues.INVALID_UTF8, "text holds a lone surrogate escape") from None
            except RowError as exc:
                add_error(exc.code, lineno, exc.detail)
                add_gap(rows)
                continue
            digests += sha256(record).digest()[:DIGEST_BYTES]
            add_chars(in_len + tgt_len)
            add_tokens(tokens)
            if label is not None:
                lid = label_ids.get(label)
                if lid is None:
                    lid = label_ids[label] = len(label_names)
                    label_names.append(label)
                if len(labels) < rows:
                    labels.extend([NO_LABEL] * (rows - len(labels)))
                labels.append(lid)
            elif labels:
                labels.append(NO_LABEL)
            rows += 1
            if spool is not None:
                out.append(record)
                add_record_length(len(record))
        if spool is not None:
            if errors:
                spool = None  # the file will not be usable; stop spooling
            elif out:
                out.append(b"")
                spool.write(b"\n".join(out))
    res.total_lines = lineno
    res.rows = rows
    return res
