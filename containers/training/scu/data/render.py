"""Render a conversation as text pieces, masked or trained, through the chat template or the fallback.

**Which tokens are trained.** Every assistant message with weight 1 is a target; everything else
(system, user and tool messages, assistant messages with weight 0, the template's scaffolding
such as ``<|im_start|>assistant\\n`` before each reply) is masked (label -100) unless
``train_on_inputs``. With a chat template the conversation is rendered by the template and each
target is located by rendering prefixes: the prompt for assistant message *i* is
``template(messages[:i], add_generation_prompt=True)``, its target is what
``template(messages[:i+1])`` adds after that, up to and including the last EOS token in it
(whatever the template puts after the EOS, e.g. a newline, is masked scaffolding; without an
EOS the whole addition is trained and the final target gets an EOS appended). A one-turn row
gives exactly prompt + reply + EOS. Tokenizers without a chat template use::

    <bos>### System:\\n{content}\\n\\n### User:\\n{content}\\n\\n### Assistant:\\n{reply}<eos>\\n\\n### User:...

**Tool calling.** When the template's source handles tools (it mentions both ``tools`` and
``tool_calls``) the conversation goes to it as it is: ``tools=`` the record's tools, assistant
``tool_calls`` with their ``arguments`` parsed to objects, ``tool`` messages with their
``tool_call_id``/``name``. Otherwise (and without a template) a fallback rendering is used:

* the tools are appended to the system message (one is added first when there is none)::

      # Tools
      You may call one or more of these functions. To call one, reply with
      <tool_call>{"name": <function name>, "arguments": <arguments object>}</tool_call>
      <tools>
      {"type": "function", "function": {...}}
      </tools>

* an assistant tool call becomes assistant text: its content (if any), a newline, then one
  ``<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>`` per call (that text is the
  target, so the call's JSON is learnt);
* tool results become a user turn (consecutive results merged into one), each as
  ``<tool_response>\\n{content}\\n</tool_response>`` (masked, like any user turn).

A template that rejects the (native or fallback) conversation raises :class:`DataError` naming the
row: that model cannot express it (e.g. a template that refuses a system message cannot take tools).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from scu.data.records import DataError

_TOOLS_RE = re.compile(r"\btools\b")


def has_tools(row: Sequence[dict[str, Any]]) -> bool:
    return bool(getattr(row, "tools", None)) or any(m.get("tool_calls") or m["role"] == "tool" for m in row)


def template_source(tokenizer: Any, tools: bool) -> str | None:
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):  # named templates: prefer "tool_use" for tool conversations
        return template.get("tool_use") if tools and "tool_use" in template else template.get("default")
    return template if isinstance(template, str) and template else None


def template_supports_tools(source: str | None) -> bool:
    """Whether a chat template's source handles tool calling (mentions ``tools`` and ``tool_calls``)."""
    return bool(source) and bool(_TOOLS_RE.search(source or "")) and "tool_calls" in (source or "")


def _arguments(raw: Any) -> Any:
    if isinstance(raw, str):
        try:
            return json.loads(raw)
        except ValueError:
            return raw
    return raw


def _call_json(call: dict[str, Any]) -> str:
    fn = call["function"]
    return json.dumps(
        {"name": fn["name"], "arguments": _arguments(fn.get("arguments", {}))}, ensure_ascii=False
    )


FALLBACK_TOOLS_HEADER = (
    "# Tools\nYou may call one or more of these functions. To call one, reply with\n"
    '<tool_call>{"name": <function name>, "arguments": <arguments object>}</tool_call>\n'
)


def fallback_messages(
    messages: Sequence[dict[str, Any]], tools: list[dict[str, Any]] | None
) -> list[tuple[dict[str, Any], int]]:
    """The documented fallback rendering of a tool conversation as system/user/assistant turns.

    Returns ``(message, source index)`` pairs (the index of the stored message it came from;
    merged tool results keep the first one's).
    """
    out: list[tuple[dict[str, Any], int]] = []
    for i, m in enumerate(messages):
        role = m["role"]
        if role == "tool":
            body = f"<tool_response>\n{m.get('content') or ''}\n</tool_response>"
            if out and out[-1][0].get("_tool_results"):
                out[-1][0]["content"] += "\n" + body
            else:
                out.append(({"role": "user", "content": body, "_tool_results": True}, i))
            continue
        msg = {k: v for k, v in m.items() if k not in ("tool_calls", "weight", "tool_call_id")}
        if m.get("tool_calls"):
            calls = "\n".join(f"<tool_call>\n{_call_json(c)}\n</tool_call>" for c in m["tool_calls"])
            msg["content"] = f"{m['content']}\n{calls}" if m.get("content") else calls
        out.append((msg, i))
    for msg, _ in out:
        msg.pop("_tool_results", None)
    if tools:
        block = (
            FALLBACK_TOOLS_HEADER
            + "<tools>\n"
            + "\n".join(json.dumps(t, ensure_ascii=False) for t in tools)
            + "\n</tools>"
        )
        if out and out[0][0]["role"] == "system":
            out[0][0]["content"] = f"{out[0][0]['content']}\n\n{block}"
        else:
            out.insert(0, ({"role": "system", "content": block}, -1))
    return out


def _native_messages(messages: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for m in messages:
        msg = {k: v for k, v in m.items() if k != "weight"}
        if msg.get("content") is None:
            msg["content"] = ""
        if m.get("tool_calls"):
            msg["tool_calls"] = [
                {
                    **c,
                    "function": {
                        **c["function"],
                        "arguments": _arguments(c["function"].get("arguments", {})),
                    },
                }
                for c in m["tool_calls"]
            ]
        out.append(msg)
    return out


def plan(
    row: Sequence[dict[str, Any]], source: str | None
) -> tuple[list[dict[str, Any]], list[bool], list[dict[str, Any]] | None]:
    """(messages to render, trained flag per message, tools to pass to the template)."""
    tools = getattr(row, "tools", None)
    if has_tools(row) and not template_supports_tools(source):
        pairs = fallback_messages(row, tools)
        msgs = [m for m, _ in pairs]
        trained = [m["role"] == "assistant" and i >= 0 and row[i].get("weight", 1) == 1 for m, i in pairs]
        return msgs, trained, None
    msgs = _native_messages(row)
    trained = [m["role"] == "assistant" and m.get("weight", 1) == 1 for m in row]
    return msgs, trained, tools


def template_segments(
    tokenizer: Any, source: str, row: Sequence[dict[str, Any]], index: int
) -> list[tuple[str, int]]:
    """Text pieces of a templated conversation with a kind: 0 masked, 1 trained turn, 2 last turn."""
    msgs, trained, tools = plan(row, source)
    kwargs: dict[str, Any] = {"tokenize": False, "chat_template": source}
    if tools:
        kwargs["tools"] = tools

    def render(part: list[dict[str, Any]], gen: bool) -> str:
        try:
            return str(tokenizer.apply_chat_template(part, add_generation_prompt=gen, **kwargs))
        except Exception as exc:  # jinja TemplateError, or a template's raise_exception()
            what = "tool calling" if has_tools(row) else "this conversation"
            raise DataError(
                f"row {index}: the base model's chat template cannot express {what}: {exc}"
            ) from None

    pieces: list[tuple[str, int]] = []
    consumed = ""
    last = len(msgs) - 1
    for i, m in enumerate(msgs):
        if m["role"] != "assistant" or (not trained[i] and i != last):
            continue
        prompt = render(msgs[:i], True)
        full = render(msgs[: i + 1], False)
        if not prompt.startswith(consumed) or not full.startswith(prompt):
            raise DataError(
                f"row {index}: the base model's chat template renders earlier turns differently once later "
                "turns are added, so the assistant turns cannot be located for training"
            )
        pieces.append((prompt[len(consumed) :], 0))
        pieces.append((full[len(prompt) :], (2 if i == last else 1) if trained[i] else 0))
        consumed = full
    return pieces


def fallback_segments(row: Sequence[dict[str, Any]], eos: str) -> list[tuple[str, int]]:
    msgs, trained, _ = plan(row, None)
    pieces: list[tuple[str, int]] = []
    last = len(msgs) - 1
    for i, m in enumerate(msgs):
        if m["role"] == "assistant":
            pieces.append(("### Assistant:\n", 0))
            pieces.append((f"{m.get('content') or ''}{eos}", (2 if i == last else 1) if trained[i] else 0))
            if i != last:
                pieces.append(("\n\n", 0))
        else:
            pieces.append((f"### {m['role'].capitalize()}:\n{m.get('content') or ''}\n\n", 0))
    return pieces
