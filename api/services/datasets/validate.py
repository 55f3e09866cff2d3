"""Pass 1: stream the file once, validate and normalise every line, record small per-row facts.

For each valid row the scan keeps only fixed-size facts in compact arrays (16-byte digest,
character and estimated token length, a label id when the file has labels, the record
length when spooling: 24-40 bytes a row); line numbers are rebuilt from the few lines that
were not rows. Dedup, stats and the split are computed from these afterwards. When given a spool stream it also writes
each valid row's canonical record line there, so pass 2 never parses JSON again.
"""

from __future__ import annotations

import json
from array import array
from collections.abc import Callable
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
from api.services.datasets.formats import (
    NORMALISERS,
    SPEC,
    Normaliser,
    Row,
    RowError,
    detect_format,
    unmatched_error,
)
from api.services.datasets.issues import IssueCollector
from api.services.datasets.reader import INVALID_UTF8_LINE, TOO_LONG_LINE, iter_line_blocks
from api.services.datasets.records import (
    encode_normalised,
    encode_pair_unescaped,
    encode_record,
    estimate_tokens,
    row_digests,
)

NO_LABEL: Final = 0xFFFFFFFF
# A JSON string escape takes at most 6 bytes per character (\uXXXX); field names, other
# fields and whitespace get a generous allowance on top.
_LINE_OVERHEAD_BYTES: Final = 1 << 16

_loads: Final = orjson.loads  # strict RFC 8259, rejects trailing garbage

# What a valid row contributes: (record line, characters, estimated tokens, label).
_Fact = tuple[str, int, int, str | None]


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

    @classmethod
    def empty(
        cls, options: DatasetOptions, fmt: DatasetFormat | None, label_field_mode: bool | None
    ) -> ScanResult:
        """A result with no lines yet, its length arrays wide enough for ``options.limits``."""
        limits = options.limits
        res = cls(
            format=fmt,
            total_lines=0,
            errors=IssueCollector(limits.max_errors_shown),
            warnings=IssueCollector(limits.max_errors_shown),
            label_field_mode=label_field_mode,
        )
        if limits.max_input_chars + limits.max_target_chars >= 1 << 32:  # may not fit in uint32
            res.char_lengths, res.token_lengths = array("Q"), array("Q")
        return res

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
    res = ScanResult.empty(options, fmt or options.format, label_field_mode)
    scanner = _Scanner(res, options)
    lineno = 0
    for first_lineno, block in iter_line_blocks(source, max_line_bytes(options), start=start, end=end):
        lineno, records = scanner.block(block, first_lineno - 1)
        res.digests += row_digests(records)
        if spool is not None:
            res.record_lengths.extend(map(len, records))
            if res.errors:
                spool = None  # the file will not be usable; stop spooling
            elif records:
                records.append(b"")
                spool.write(b"\n".join(records))
    res.total_lines = lineno
    res.rows = scanner.rows
    return res


class _Scanner:
    """Turns lines into row facts in a :class:`ScanResult`, holding the decisions a scan makes
    at its first suitable row: the format (auto mode) and, for classification, whether rows
    carry a ``label`` field (else the target text is the label; when they do, a row without
    one is a missing_label error)."""

    __slots__ = ("classify", "convert", "label_ids", "limits", "res", "rows")

    def __init__(self, res: ScanResult, options: DatasetOptions) -> None:
        self.res = res
        self.limits = _Limits(options)
        self.classify = options.task_type is TaskType.CLASSIFICATION
        self.label_ids: dict[str, int] = {}
        self.rows = 0
        self.convert: Converter = self._first_row
        if res.format is not None:
            self._use(res.format)

    def _use(self, fmt: DatasetFormat) -> None:
        self.res.format = fmt
        spec = SPEC[fmt]
        normalise = NORMALISERS[fmt]
        if spec.pair is not None:
            self.convert = _pair_converter(self, spec.pair, normalise)
        else:
            self.convert = _normalised_converter(self, normalise, verbatim=spec.verbatim)

    def block(self, lines: list[str], lineno: int) -> tuple[int, list[bytes]]:
        """Scan the lines after line ``lineno``: the number of the last line, and the record
        line of each valid row."""
        records: list[bytes] = []
        res, label_ids, convert = self.res, self.label_ids, self.convert
        add_error, add_gap, add_record = res.errors.add, res.gaps.append, records.append
        add_chars, add_tokens = res.char_lengths.append, res.token_lengths.append
        labels, rows = res.labels, self.rows
        for line in lines:
            lineno += 1
            if not line or line.isspace():
                self._not_a_row(line, lineno)
                add_gap(rows)
                continue
            try:
                try:
                    obj = _loads(line)
                except (ValueError, RecursionError):
                    obj = _parse_slow(line)  # the precise message (and what stdlib json accepts)
                if type(obj) is not dict:
                    raise RowError(issues.NOT_OBJECT, f"a JSON {type(obj).__name__}, not an object")
                fact = convert(obj, line, lineno)
                if fact is None:  # too long: reported
                    add_gap(rows)
                    continue
                encoded, chars, tokens, label = fact
                record = encoded.encode()
            except RowError as exc:
                add_error(exc.code, lineno, exc.detail)
                add_gap(rows)
                continue
            except UnicodeEncodeError:
                add_error(issues.INVALID_UTF8, lineno, "text holds a lone surrogate escape")
                add_gap(rows)
                continue
            add_record(record)
            add_chars(chars)
            add_tokens(tokens)
            if label is not None:
                lid = label_ids.get(label)
                if lid is None or len(labels) < rows:
                    lid = self._label_id(label, rows)
                labels.append(lid)
            elif labels:
                labels.append(NO_LABEL)
            rows += 1
        self.rows = rows
        return lineno, records

    def _not_a_row(self, line: str, lineno: int) -> None:
        if line == INVALID_UTF8_LINE:
            self.res.errors.add(issues.INVALID_UTF8, lineno, "bytes are not valid UTF-8")
        elif line == TOO_LONG_LINE:
            self.res.errors.add(issues.LINE_TOO_LONG, lineno)
        else:
            self.res.warnings.add(issues.BLANK_LINE, lineno)

    def _first_row(self, obj: Row, line: str, lineno: int) -> _Fact | None:
        """Auto mode: detect the format at the first row that has one, then convert."""
        if self.res.format is None:
            fmt = detect_format(obj)
            if fmt is None:
                raise unmatched_error(obj)
            self._use(fmt)
        return self.convert(obj, line, lineno)

    def class_label(self, label: str | None, reply: str) -> str:
        """The class of a classification row: its ``label``, or else its final ``reply``."""
        res = self.res
        if res.label_field_mode is None:
            res.label_field_mode = label is not None
        if label is not None:
            return label
        if res.label_field_mode:
            raise RowError(issues.MISSING_LABEL, "no 'label' field")
        label = reply.strip()
        if not label:
            raise RowError(issues.EMPTY_TEXT, "the final assistant message has no text to use as the label")
        return label

    def _label_id(self, label: str, rows: int) -> int:
        """The id of a new label (or of the first label after unlabelled rows, padded)."""
        labels, names = self.res.labels, self.res.label_names
        lid = self.label_ids.get(label)
        if lid is None:
            lid = self.label_ids[label] = len(names)
            names.append(label)
        if len(labels) < rows:
            labels.extend([NO_LABEL] * (rows - len(labels)))
        return lid


Converter = Callable[[Row, str, int], _Fact | None]
"""(parsed row, its line, line number) -> the row's facts; None when too long (reported)."""


def _pair_converter(sc: _Scanner, fields: tuple[str, str], normalise: Normaliser) -> Converter:
    """Two-field rows (input_target, prompt_completion) without building their messages."""
    user_field, assistant_field = fields
    classify, class_label, res = sc.classify, sc.class_label, sc.res
    near_in, near_tgt, past = sc.limits.near_in, sc.limits.near_tgt, sc.limits.past
    tokens_of, unescaped, escaped = estimate_tokens, encode_pair_unescaped, encode_record

    def convert(obj: Row, line: str, lineno: int) -> _Fact | None:
        text, target = obj.get(user_field), obj.get(assistant_field)
        if not (
            type(text) is str
            and type(target) is str
            and text
            and target
            and not text.isspace()
            and not target.isspace()
        ):
            normalise(obj)  # raises the precise RowError
            raise AssertionError("unreachable")  # pragma: no cover
        label = _label_of(obj) if "label" in obj else None
        if classify:
            label = class_label(label, target)
        in_len, tgt_len = len(text), len(target)
        if (in_len >= near_in or tgt_len >= near_tgt) and past(in_len, tgt_len, lineno, res):
            return None
        tokens = tokens_of(text) + tokens_of(target)
        if "\\" in line:
            return escaped([("user", text), ("assistant", target)], label), in_len + tgt_len, tokens, label
        return unescaped(text, target, label), in_len + tgt_len, tokens, label

    return convert


def _normalised_converter(sc: _Scanner, normalise: Normaliser, *, verbatim: bool) -> Converter:
    """Rows of any format, through its normaliser."""
    classify, class_label, res = sc.classify, sc.class_label, sc.res
    near_in, near_tgt, past = sc.limits.near_in, sc.limits.near_tgt, sc.limits.past
    tokens_of = estimate_tokens

    def convert(obj: Row, line: str, lineno: int) -> _Fact | None:
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
            label = class_label(label, norm.label_source())
        in_len, tgt_len = 0, len(target)
        tokens = tokens_of(target)
        for part in others:
            in_len += len(part)
            tokens += tokens_of(part)
        if (in_len >= near_in or tgt_len >= near_tgt) and past(in_len, tgt_len, lineno, res):
            return None
        encoded = encode_normalised(norm, label, escape=not verbatim or "\\" in line)
        return encoded, in_len + tgt_len, tokens, label

    return convert


class _Limits:
    """The character limits of a row's input and target, with the near-limit warning."""

    __slots__ = ("max_in", "max_tgt", "near_in", "near_tgt")

    def __init__(self, options: DatasetOptions) -> None:
        limits = options.limits
        self.max_in, self.max_tgt = limits.max_input_chars, limits.max_target_chars
        self.near_in = limits.near_limit_fraction * self.max_in
        self.near_tgt = limits.near_limit_fraction * self.max_tgt

    def past(self, in_len: int, tgt_len: int, lineno: int, res: ScanResult) -> bool:
        """Whether the row is too long (errors reported); warns when it is near a limit."""
        if in_len < self.near_in and tgt_len < self.near_tgt:
            return False
        if in_len <= self.max_in and tgt_len <= self.max_tgt:
            res.warnings.add(issues.NEAR_LIMIT, lineno)
            return False
        if in_len > self.max_in:
            res.errors.add(issues.INPUT_TOO_LONG, lineno, f"{in_len} > {self.max_in} characters")
        if tgt_len > self.max_tgt:
            res.errors.add(issues.TARGET_TOO_LONG, lineno, f"{tgt_len} > {self.max_tgt} characters")
        return True


def _parse_slow(line: str) -> Any:
    try:
        return json.loads(line)
    except RecursionError:
        raise RowError(issues.INVALID_JSON, "nested too deeply") from None
    except ValueError as exc:
        msg = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
        raise RowError(issues.INVALID_JSON, msg) from None


def _label_of(row: Row) -> str | None:
    label = row.get("label")
    if label is None:
        return None
    if type(label) is not str:
        raise RowError(issues.WRONG_TYPE, "'label' must be a string")
    label = label.strip()
    if not label:
        raise RowError(issues.EMPTY_TEXT, "'label' is empty")
    return label
