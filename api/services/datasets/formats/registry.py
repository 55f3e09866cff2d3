"""The format registry: what identifies each format's rows, and its normaliser.

A new format is one :class:`FormatSpec` in :data:`SPECS` (its name is a
:class:`~api.domain.enums.DatasetFormat` value, which the API and CLI list from).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from api.domain.enums import DatasetFormat
from api.services.datasets import issues
from api.services.datasets.formats.base import (
    PREFERENCE_MESSAGE,
    MissingField,
    Normalised,
    Normaliser,
    Row,
    RowError,
    is_preference,
)
from api.services.datasets.formats.chat import normalise_chat
from api.services.datasets.formats.flat import (
    normalise_input_target,
    normalise_instruction,
    normalise_prompt_completion,
    normalise_text,
)
from api.services.datasets.formats.sharegpt import normalise_sharegpt


@dataclass(frozen=True, slots=True)
class FormatSpec:
    format: DatasetFormat
    required: tuple[str, ...]
    """Fields that identify a row of this format (all present: auto-detection picks it)."""
    normalise: Normaliser
    """Row -> :class:`Normalised`, or :class:`RowError` (:class:`MissingField` for a lacking field)."""
    hint_rank: int
    """For a row of no format: on a tie of present required fields, the lowest rank is named."""
    pair: tuple[str, str] | None = None
    """(user field, assistant field) when a row is exactly two text fields (validator fast path)."""
    verbatim: bool = False
    """Plain records hold the line's own JSON strings unchanged: without a backslash in the
    line they need no escaping."""


def _pair_spec(fmt: DatasetFormat, fields: tuple[str, str], normalise: Normaliser, rank: int) -> FormatSpec:
    """A format whose rows are exactly a user text field and an assistant text field."""
    return FormatSpec(fmt, fields, normalise, hint_rank=rank, pair=fields)


SPECS: Final[tuple[FormatSpec, ...]] = (
    # Detection order: ``instruction`` rows may also carry ``input``, so it is tried before
    # ``input_target``; ``text`` is tried last (other formats' rows may carry a ``text`` field).
    FormatSpec(DatasetFormat.CHAT, ("messages",), normalise_chat, hint_rank=3, verbatim=True),
    FormatSpec(DatasetFormat.SHAREGPT, ("conversations",), normalise_sharegpt, hint_rank=4),
    FormatSpec(DatasetFormat.INSTRUCTION, ("instruction", "output"), normalise_instruction, hint_rank=2),
    _pair_spec(DatasetFormat.PROMPT_COMPLETION, ("prompt", "completion"), normalise_prompt_completion, 1),
    _pair_spec(DatasetFormat.INPUT_TARGET, ("input", "target"), normalise_input_target, 0),
    FormatSpec(DatasetFormat.TEXT, ("text",), normalise_text, hint_rank=5),
)

SPEC: Final[dict[DatasetFormat, FormatSpec]] = {spec.format: spec for spec in SPECS}


def detect_format(row: Row) -> DatasetFormat | None:
    """The first format (in :data:`SPECS` order) whose required fields are all present.

    Preference pairs match none (see :func:`unmatched_error`).
    """
    if is_preference(row):
        return None
    for spec in SPECS:
        if all(field in row for field in spec.required):
            return spec.format
    return None


def _quoted(fields: list[str]) -> str:
    q = [repr(f) for f in fields]
    return q[0] if len(q) == 1 else ", ".join(q[:-1]) + " and " + q[-1]


def unmatched_error(row: Row) -> RowError:
    """The error for a row that matches no format: preference pairs, else the nearest format."""
    if is_preference(row):
        return RowError(issues.UNSUPPORTED_FORMAT, PREFERENCE_MESSAGE)
    keys = [str(k)[:40] for k in list(row)[:20]]
    more = ", ..." if len(row) > 20 else ""
    best = min(SPECS, key=lambda s: (-sum(k in row for k in s.required), s.hint_rank))
    lacks = [k for k in best.required if k not in row]
    shown = repr(keys)[:-1] + more + "]"
    return RowError(
        issues.MISSING_FIELD,
        f"row has keys {shown}; nearest format: {best.format.value} (needs {_quoted(lacks)})",
    )


def _missing(row: Row, fmt: DatasetFormat, field: str) -> RowError:
    other = detect_format(row)
    if other is not None and other is not fmt:
        return RowError(issues.FORMAT_MISMATCH, f"row looks like {other.value}, the file is {fmt.value}")
    return RowError(issues.MISSING_FIELD, f"{fmt.value} row has no {field!r} field")


def _checked(spec: FormatSpec) -> Normaliser:
    """The spec's normaliser refusing preference pairs (also in a file of a forced format) and
    wording a missing field (the row may be of another format)."""
    normalise, fmt = spec.normalise, spec.format

    def checked(row: Row) -> Normalised:
        if is_preference(row):
            raise RowError(issues.UNSUPPORTED_FORMAT, PREFERENCE_MESSAGE)
        try:
            return normalise(row)
        except MissingField as exc:
            raise _missing(row, fmt, exc.field) from None

    return checked


NORMALISERS: Final[dict[DatasetFormat, Normaliser]] = {spec.format: _checked(spec) for spec in SPECS}
