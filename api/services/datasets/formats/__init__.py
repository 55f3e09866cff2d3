"""The input formats: detection and normalisation of one parsed row into a training record.

Conversational formats become a list of chat messages (OpenAI's shape); the last message is
from the assistant and every assistant message with weight 1 is a training target. The
formats (one module each, registered in :mod:`.registry`): ``input_target``,
``prompt_completion``, ``instruction`` and ``text`` (:mod:`.flat`), ``chat`` (:mod:`.chat`,
tools in :mod:`.tools`) and ``sharegpt`` (:mod:`.sharegpt`).

Preference pairs ({prompt?, chosen, rejected}, plain or conversational) are recognised and
refused (no DPO yet). A row that fits no format gets an error naming its keys and the nearest
format with what it lacks.

Normalisers return a :class:`Normalised` record or raise :class:`RowError` (a stable issue code
and a short detail). Extra fields are ignored; the optional ``label`` field is handled by the
validator.
"""

from api.services.datasets.formats.base import Message, Normalised, Normaliser, Row, RowError
from api.services.datasets.formats.registry import (
    NORMALISERS,
    SPEC,
    SPECS,
    FormatSpec,
    detect_format,
    unmatched_error,
)

__all__ = [
    "NORMALISERS",
    "SPEC",
    "SPECS",
    "FormatSpec",
    "Message",
    "Normalised",
    "Normaliser",
    "Row",
    "RowError",
    "detect_format",
    "unmatched_error",
]
