"""Issue codes and a collector that groups problems by class for the validation report.

Codes are stable strings (clients match on them); messages are for people.
"""

from __future__ import annotations

from typing import Final

from api.domain.datasets import IssueGroup

# Errors: a row with any of these is not usable; a file with any of them is not ok.
INVALID_UTF8: Final = "invalid_utf8"
INVALID_JSON: Final = "invalid_json"
NOT_OBJECT: Final = "not_object"
LINE_TOO_LONG: Final = "line_too_long"
MISSING_FIELD: Final = "missing_field"
FORMAT_MISMATCH: Final = "format_mismatch"
WRONG_TYPE: Final = "wrong_type"
INVALID_ROLE: Final = "invalid_role"
INVALID_CONVERSATION: Final = "invalid_conversation"
INVALID_WEIGHT: Final = "invalid_weight"
INVALID_TOOLS: Final = "invalid_tools"
UNSUPPORTED_FORMAT: Final = "unsupported_format"
EMPTY_TEXT: Final = "empty_text"
MISSING_LABEL: Final = "missing_label"
INPUT_TOO_LONG: Final = "input_too_long"
TARGET_TOO_LONG: Final = "target_too_long"
TOO_FEW_ROWS: Final = "too_few_rows"

# Warnings: reported, the file is still usable.
BLANK_LINE: Final = "blank_line"
DUPLICATE: Final = "duplicate"
NEAR_LIMIT: Final = "near_limit"

MESSAGES: Final[dict[str, str]] = {
    INVALID_UTF8: "line is not valid UTF-8 (or holds a lone surrogate escape)",
    INVALID_JSON: "line is not valid JSON",
    NOT_OBJECT: "line is JSON but not an object",
    LINE_TOO_LONG: "line is longer than any row within the length limits could be; skipped unparsed",
    MISSING_FIELD: "a required field is missing",
    FORMAT_MISMATCH: "row has the fields of a different format than the file's",
    WRONG_TYPE: "a field has the wrong type",
    UNSUPPORTED_FORMAT: "row is in a format fastuner recognises but cannot train on yet",
    INVALID_ROLE: "chat message role must be system, user, assistant or tool",
    INVALID_CONVERSATION: "chat must have at least one user message, end with an assistant message and "
    "train at least one assistant message",
    INVALID_WEIGHT: "a message weight must be 0 or 1 and only on assistant messages",
    INVALID_TOOLS: "tools or tool calls are malformed",
    EMPTY_TEXT: "a text field is empty or only whitespace",
    MISSING_LABEL: "classification row has no label while the file's rows carry a 'label' field",
    INPUT_TOO_LONG: "input (all text that is not trained on; all of a text row) is longer than max_input_chars",
    TARGET_TOO_LONG: "target (the trained assistant text) is longer than max_target_chars",
    TOO_FEW_ROWS: "fewer unique valid rows than min_unique_rows",
    BLANK_LINE: "blank line ignored",
    DUPLICATE: "duplicate row dropped (same normalised record as an earlier line)",
    NEAR_LIMIT: "input or target length is at or above near_limit_fraction of its limit",
}

# Report order: roughly the order in which a line is checked.
CODE_ORDER: Final[tuple[str, ...]] = tuple(MESSAGES)


class IssueCollector:
    """Counts issues per code and keeps the first ``max_shown`` line numbers of each."""

    __slots__ = ("_counts", "_details", "_lines", "_max_shown")

    def __init__(self, max_shown: int) -> None:
        self._max_shown = max_shown
        self._counts: dict[str, int] = {}
        self._lines: dict[str, list[int]] = {}
        self._details: dict[str, tuple[int | None, str]] = {}  # first detail and its line

    def add(self, code: str, line: int | None, detail: str | None = None) -> None:
        count = self._counts.get(code)
        if count is None:
            self._counts[code] = 1
            self._lines[code] = [] if line is None else [line]
            if detail:
                self._details[code] = (line, detail)
            return
        self._counts[code] = count + 1
        if line is not None and count < self._max_shown:
            self._lines[code].append(line)

    def add_many(self, code: str, count: int, lines: list[int]) -> None:
        """Record ``count`` occurrences at once (``lines``: the first of them, in file order)."""
        if count <= 0:
            return
        self._counts[code] = self._counts.get(code, 0) + count
        shown = self._lines.setdefault(code, [])
        shown.extend(lines[: max(0, self._max_shown - len(shown))])

    def merge(self, later: IssueCollector, line_offset: int) -> None:
        """Append the issues of a later part of the file whose line 1 is ``line_offset + 1``."""
        for code, count in later._counts.items():
            shifted = [n + line_offset for n in later._lines[code]]
            self.add_many(code, count, shifted)
            if code not in self._details and code in later._details:
                line, detail = later._details[code]
                self._details[code] = (None if line is None else line + line_offset, detail)

    def __contains__(self, code: object) -> bool:
        return code in self._counts

    def __bool__(self) -> bool:
        return bool(self._counts)

    def count(self, code: str) -> int:
        return self._counts.get(code, 0)

    def groups(self) -> list[IssueGroup]:
        order = {code: i for i, code in enumerate(CODE_ORDER)}
        out: list[IssueGroup] = []
        for code in sorted(self._counts, key=lambda c: (order.get(c, len(order)), c)):
            message = MESSAGES.get(code, code)
            first = self._details.get(code)
            if first is not None:
                line, detail = first
                message = (
                    f"{message} (first: {detail})"
                    if line is None
                    else f"{message} (first: line {line}: {detail})"
                )
            count, lines = self._counts[code], self._lines[code]
            out.append(IssueGroup(code=code, message=message, count=count, lines=lines))
        return out
