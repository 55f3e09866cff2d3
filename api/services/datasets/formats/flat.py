"""Formats whose rows are flat text fields: one user turn and its answer, or a document.

* ``input_target`` {input, target}: user ``input`` / assistant ``target``
* ``prompt_completion`` {prompt, completion}: user ``prompt`` / assistant ``completion``
* ``instruction`` {instruction, input?, output}: user ``instruction`` (+ ``"\\n\\n" + input``
  when ``input`` is non-blank) / assistant ``output``
* ``text`` {text}: continued pre-training: no messages, every token is trained (the engine
  packs such datasets by default).
"""

from __future__ import annotations

from api.services.datasets.formats.base import Normalised, Row, required_text, wrong_type


def _pair(user: str, assistant: str) -> Normalised:
    return Normalised([{"role": "user", "content": user}, {"role": "assistant", "content": assistant}])


def normalise_input_target(row: Row) -> Normalised:
    return _pair(required_text(row, "input"), required_text(row, "target"))


def normalise_prompt_completion(row: Row) -> Normalised:
    return _pair(required_text(row, "prompt"), required_text(row, "completion"))


def normalise_instruction(row: Row) -> Normalised:
    user = required_text(row, "instruction")
    extra = row.get("input")
    if extra is not None and type(extra) is not str:
        raise wrong_type(extra, str, "'input'")
    if extra and not extra.isspace():
        user = f"{user}\n\n{extra}"
    return _pair(user, required_text(row, "output"))


def normalise_text(row: Row) -> Normalised:
    return Normalised(messages=[], text=required_text(row, "text"), plain=False)
