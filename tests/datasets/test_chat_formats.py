"""Chat data end to end: validate -> upload (the REST API) -> the stored record -> the engine's
tokenisation, asserting exactly which tokens carry loss.

Formats: multi-turn chat with per-message ``weight`` and ``name``, OpenAI tool calling (native
template with ``tools=`` and the documented fallback), legacy ``functions``/``function_call``,
ShareGPT, ``text`` rows, and the refusals (preference pairs, rows that fit no format).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from scu.data import IGNORE, DataError, build_examples, encode_rows, is_text, read_channel

from api.app import create_app
from api.domain.datasets import Manifest, ValidationLimits
from api.settings import Settings
from api.storage.local import LocalStore
from tests.api.support import authorize, upload, write_jsonl
from tests.training.support import TOOLS_TEMPLATE

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}

THREE_TURNS: dict[str, Any] = {
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hi", "name": "ann"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "two plus two"},
        {"role": "assistant", "content": "five", "weight": 0},
        {"role": "user", "content": "wrong, again"},
        {"role": "assistant", "content": "four", "weight": 1},
    ]
}

TOOL_CHAT: dict[str, Any] = {
    "tools": [WEATHER_TOOL],
    "messages": [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        {"role": "assistant", "content": "It is sunny."},
    ],
}


@pytest.fixture
def client(settings_factory: Callable[..., Settings], tmp_path: Path) -> Iterator[TestClient]:
    settings = settings_factory(limits=ValidationLimits(min_unique_rows=1))
    with TestClient(
        create_app(settings, store=LocalStore(tmp_path / "objects")), raise_server_exceptions=False
    ) as c:
        authorize(c)
        yield c


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from scu.modeling import load_tokenizer
    from scu.tiny import build_tiny_model

    return load_tokenizer(str(build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")))


@pytest.fixture
def template(tokenizer: Any) -> Iterator[Callable[[str | None], None]]:
    original = tokenizer.chat_template

    def use(source: str | None) -> None:
        tokenizer.chat_template = source

    yield use
    tokenizer.chat_template = original


def _validate(
    client: TestClient, tmp_path: Path, rows: list[dict[str, Any]], **fields: Any
) -> dict[str, Any]:
    src = write_jsonl(tmp_path / "v.jsonl", rows)
    with src.open("rb") as fh:
        resp = client.post(
            "/v0/datasets/validate",
            data={"name": "v", **{k: str(v) for k, v in fields.items()}},
            files={"file": ("v.jsonl", fh, "application/x-ndjson")},
        )
    assert resp.status_code == 200, resp.text
    report: dict[str, Any] = resp.json()
    return report


def _upload(client: TestClient, tmp_path: Path, rows: list[dict[str, Any]], **fields: Any) -> Path:
    """Validate, upload (all rows to train) and return the channel folder the engine would get."""
    report = _validate(client, tmp_path, rows, split="1,0", **fields)
    assert report["ok"], report["errors"]
    resp = upload(client, write_jsonl(tmp_path / "d.jsonl", rows), split="1,0", **fields)
    assert resp.status_code == 201, resp.text
    ds = resp.json()
    store_root = tmp_path / "objects"
    [train] = [p for p in store_root.rglob("train.jsonl") if ds["id"] in str(p)]
    manifest = Manifest.model_validate_json(train.with_name("manifest.json").read_text())
    assert manifest.schema_version == 2 and manifest.format.value == ds["format"]
    channel = tmp_path / f"channel-{ds['id']}"
    channel.mkdir()
    (channel / "train.jsonl").write_bytes(train.read_bytes())
    return channel


def _records(channel: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (channel / "train.jsonl").read_text().splitlines()]


def _errors(report: dict[str, Any]) -> dict[str, str]:
    """Row errors by code (``too_few_rows`` follows from them and is left out)."""
    return {g["code"]: g["message"] for g in report["errors"] if g["code"] != "too_few_rows"}


def _trained_runs(tokenizer: Any, channel: Path) -> tuple[list[str], str]:
    """(decoded runs of consecutive loss-bearing tokens, the whole decoded sequence) of row 1."""
    rows = read_channel(channel)
    [ex], stats = build_examples(encode_rows(tokenizer, rows[:1]), 512, train_on_inputs=False)
    runs: list[list[int]] = []
    prev = False
    for tok_id, label in zip(ex.input_ids, ex.labels, strict=True):
        trained = label != IGNORE
        assert not trained or label == tok_id
        if trained and not prev:
            runs.append([])
        if trained:
            runs[-1].append(tok_id)
        prev = trained
    assert stats.loss_tokens == sum(len(r) for r in runs)
    return [tokenizer.decode(r) for r in runs], tokenizer.decode(ex.input_ids)


# --- multi-turn chat ---------------------------------------------------------------------------


def test_three_turn_chat_trains_every_weighted_assistant_turn(
    client: TestClient, tmp_path: Path, tokenizer: Any
) -> None:
    channel = _upload(client, tmp_path, [THREE_TURNS])
    [record] = _records(channel)
    assert record["messages"][1] == {"role": "user", "content": "hi", "name": "ann"}
    assert record["messages"][4] == {"role": "assistant", "content": "five", "weight": 0}
    assert record["messages"][6] == {"role": "assistant", "content": "four"}  # weight 1 = default
    runs, whole = _trained_runs(tokenizer, channel)
    # The first and third replies (and their end-of-turn EOS) carry loss; the weight-0 reply,
    # system, user turns and the template's "<|assistant|>\n" scaffolding do not.
    assert runs == ["hello</s>", "four</s>"]
    rendered = tokenizer.apply_chat_template(record["messages"], tokenize=False)
    assert whole == rendered.removesuffix("\n")  # the sequence is the template's rendering


def test_three_turn_chat_without_template_uses_the_fallback(
    client: TestClient, tmp_path: Path, tokenizer: Any, template: Callable[[str | None], None]
) -> None:
    channel = _upload(client, tmp_path, [THREE_TURNS])
    template(None)
    runs, whole = _trained_runs(tokenizer, channel)
    assert runs == ["hello</s>", "four</s>"]
    assert whole == (
        "<s>### System:\nBe brief.\n\n### User:\nhi\n\n### Assistant:\nhello</s>\n\n### User:\ntwo plus two\n\n"
        "### Assistant:\nfive</s>\n\n### User:\nwrong, again\n\n### Assistant:\nfour</s>"
    )


@pytest.mark.parametrize(
    ("message", "code", "detail"),
    [
        (
            {"role": "user", "content": "x", "weight": 1},
            "invalid_weight",
            "messages[1].weight is set on a user",
        ),
        ({"role": "assistant", "content": "x", "weight": 0.5}, "invalid_weight", "must be 0 or 1, got 0.5"),
        ({"role": "assistant", "content": "x", "weight": True}, "invalid_weight", "must be 0 or 1, got true"),
        ({"role": "assistant"}, "missing_field", "messages[1] has no 'content' (and no 'tool_calls')"),
        ({"role": "tool", "content": "x"}, "invalid_conversation", "tool result with no assistant tool call"),
        ({"role": "robot", "content": "x"}, "invalid_role", "expected system, user, assistant or tool"),
    ],
)
def test_chat_row_errors(
    client: TestClient, tmp_path: Path, message: dict[str, Any], code: str, detail: str
) -> None:
    row = {"messages": [{"role": "user", "content": "q"}, message, {"role": "assistant", "content": "a"}]}
    report = _validate(client, tmp_path, [row])
    assert not report["ok"]
    errors = _errors(report)
    assert list(errors) == [code] and detail in errors[code]


def test_all_weight_zero_is_an_error(client: TestClient, tmp_path: Path) -> None:
    row = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "weight": 0}]}
    errors = _errors(_validate(client, tmp_path, [row]))
    assert "no assistant message is trained" in errors["invalid_conversation"]


# --- tool calling ------------------------------------------------------------------------------


def test_tool_call_row_is_accepted_and_stored_whole(client: TestClient, tmp_path: Path) -> None:
    channel = _upload(client, tmp_path, [TOOL_CHAT])
    [record] = _records(channel)
    assert record == {
        "messages": [
            {"role": "user", "content": "Weather in Paris?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                    }
                ],
            },
            {"role": "tool", "content": "sunny", "tool_call_id": "call_1"},
            {"role": "assistant", "content": "It is sunny."},
        ],
        "tools": [WEATHER_TOOL],
        "label": None,
    }


def test_tool_call_through_a_template_with_tools(
    client: TestClient, tmp_path: Path, tokenizer: Any, template: Callable[[str | None], None]
) -> None:
    channel = _upload(client, tmp_path, [TOOL_CHAT])
    template(TOOLS_TEMPLATE)
    runs, whole = _trained_runs(tokenizer, channel)
    # The call (name and arguments, as the template renders them) is learnt; the tool result is not.
    assert runs == ['<call>get_weather {"city": "Paris"}</call></s>', "It is sunny.</s>"]
    assert whole == (
        "<s><|system|>\nget_weather;</s>\n<|user|>\nWeather in Paris?</s>\n<|assistant|>\n"
        '<call>get_weather {"city": "Paris"}</call></s>\n<|tool|>\nsunny</s>\n<|assistant|>\nIt is sunny.</s>'
    )


FALLBACK_SYSTEM = (
    "# Tools\nYou may call one or more of these functions. To call one, reply with\n"
    '<tool_call>{"name": <function name>, "arguments": <arguments object>}</tool_call>\n'
    f"<tools>\n{json.dumps(WEATHER_TOOL)}\n</tools>"
)
FALLBACK_CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'


def test_tool_call_fallback_with_a_template_without_tools(
    client: TestClient, tmp_path: Path, tokenizer: Any
) -> None:
    channel = _upload(client, tmp_path, [TOOL_CHAT])
    assert "tools" not in tokenizer.chat_template  # the tiny model's template has no tool support
    runs, whole = _trained_runs(tokenizer, channel)
    assert runs == [FALLBACK_CALL + "</s>", "It is sunny.</s>"]
    assert whole == (
        f"<s><|system|>\n{FALLBACK_SYSTEM}</s>\n<|user|>\nWeather in Paris?</s>\n<|assistant|>\n{FALLBACK_CALL}</s>\n"
        "<|user|>\n<tool_response>\nsunny\n</tool_response></s>\n<|assistant|>\nIt is sunny.</s>"
    )


def test_tool_call_fallback_without_template(
    client: TestClient, tmp_path: Path, tokenizer: Any, template: Callable[[str | None], None]
) -> None:
    channel = _upload(client, tmp_path, [TOOL_CHAT])
    template(None)
    runs, whole = _trained_runs(tokenizer, channel)
    assert runs == [FALLBACK_CALL + "</s>", "It is sunny.</s>"]
    assert whole == (
        f"<s>### System:\n{FALLBACK_SYSTEM}\n\n### User:\nWeather in Paris?\n\n### Assistant:\n{FALLBACK_CALL}</s>\n\n"
        "### User:\n<tool_response>\nsunny\n</tool_response>\n\n### Assistant:\nIt is sunny.</s>"
    )


def test_a_template_that_cannot_express_tools_is_a_clear_error(
    client: TestClient, tmp_path: Path, tokenizer: Any, template: Callable[[str | None], None]
) -> None:
    channel = _upload(client, tmp_path, [TOOL_CHAT])
    strict = (
        "{% for m in messages %}{% if m['role'] not in ['user', 'assistant'] %}"
        "{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}"
        "{{ m['content'] }}{% endfor %}"
    )
    template(strict)
    with pytest.raises(
        DataError,
        match=r"row 0: the base model's chat template cannot express tool calling: "
        r"Only user and assistant roles are supported!",
    ):
        encode_rows(tokenizer, read_channel(channel))


def test_legacy_functions_become_tools(client: TestClient, tmp_path: Path) -> None:
    row = {
        "functions": [WEATHER_TOOL["function"]],
        "messages": [
            {"role": "user", "content": "Weather in Paris?"},
            {
                "role": "assistant",
                "content": None,
                "function_call": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
            },
            {"role": "function", "name": "get_weather", "content": "sunny"},
            {"role": "assistant", "content": "It is sunny."},
        ],
    }
    [record] = _records(_upload(client, tmp_path, [row]))
    assert record["tools"] == [WEATHER_TOOL]
    assert record["messages"][1]["tool_calls"] == [
        {"type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}
    ]
    assert record["messages"][2] == {"role": "tool", "content": "sunny", "name": "get_weather"}


@pytest.mark.parametrize(
    ("change", "code", "detail"),
    [
        (
            {"arguments": "{not json"},
            "invalid_tools",
            "messages[1].tool_calls[0].function.arguments is not valid JSON",
        ),
        ({"name": ""}, "invalid_tools", "messages[1].tool_calls[0].function.name must be a non-empty string"),
    ],
)
def test_tool_call_errors(
    client: TestClient, tmp_path: Path, change: dict[str, Any], code: str, detail: str
) -> None:
    row = json.loads(json.dumps(TOOL_CHAT))
    row["messages"][1]["tool_calls"][0]["function"].update(change)
    errors = _errors(_validate(client, tmp_path, [row]))
    assert list(errors) == [code] and detail in errors[code]


# --- ShareGPT ----------------------------------------------------------------------------------


def test_sharegpt_is_detected_and_normalised(client: TestClient, tmp_path: Path, tokenizer: Any) -> None:
    rows = [
        {
            "system": "Be brief.",
            "conversations": [
                {"from": "human", "value": "hi"},
                {"from": "gpt", "value": "hello"},
                {"from": "human", "value": "Weather in Paris?"},
                {"from": "function_call", "value": '{"name": "get_weather", "arguments": {"city": "Paris"}}'},
                {"from": "observation", "value": "sunny"},
                {"from": "gpt", "value": "It is sunny."},
            ],
            "tools": json.dumps([WEATHER_TOOL]),
        }
    ]
    report = _validate(client, tmp_path, rows)
    assert report["ok"] and report["format"] == "sharegpt"
    channel = _upload(client, tmp_path, rows)
    [record] = _records(channel)
    assert record == {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"},
            {"role": "user", "content": "Weather in Paris?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}
                ],
            },
            {"role": "tool", "content": "sunny"},
            {"role": "assistant", "content": "It is sunny."},
        ],
        "tools": [WEATHER_TOOL],
        "label": None,
    }
    runs, _ = _trained_runs(tokenizer, channel)
    assert runs == ["hello</s>", FALLBACK_CALL + "</s>", "It is sunny.</s>"]


def test_sharegpt_errors_name_the_turn(client: TestClient, tmp_path: Path) -> None:
    rows = [
        {"system": "s", "conversations": [{"from": "human", "value": "q"}, {"from": "bot", "value": "a"}]},
        {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt"}]},
        {
            "system": "s",
            "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a", "weight": 2}],
        },
        {"system": "", "conversations": [{"from": "system", "value": "s"}, {"from": "gpt", "value": "a"}]},
    ]
    report = _validate(client, tmp_path, rows)
    assert report["format"] == "sharegpt"
    errors = _errors(report)
    assert "line 1: conversations[1].from is 'bot'" in errors["invalid_role"]
    assert "line 2: conversations[1] has no 'value'" in errors["missing_field"]
    # indices count the user's turns (the record's 'system' is not one of them)
    assert "line 3: conversations[1].weight must be 0 or 1, got 2" in errors["invalid_weight"]
    assert "line 4: there is no user message" in errors["invalid_conversation"]


# --- text --------------------------------------------------------------------------------------


def test_text_rows_train_every_token_and_pack_by_default(
    client: TestClient, tmp_path: Path, tokenizer: Any
) -> None:
    rows = [{"text": "The quick brown fox."}, {"text": "Fine-tuning adapts a model."}]
    channel = _upload(client, tmp_path, rows)
    assert _records(channel) == [
        {"text": "The quick brown fox.", "label": None},
        {"text": "Fine-tuning adapts a model.", "label": None},
    ]
    read = read_channel(channel)
    assert all(is_text(r) for r in read)
    examples, stats = build_examples(encode_rows(tokenizer, read), 512, train_on_inputs=False)
    for ex, row in zip(examples, rows, strict=True):
        assert ex.input_ids[0] == tokenizer.bos_token_id and ex.labels[0] == IGNORE
        assert ex.labels[1:] == ex.input_ids[1:]  # every token after BOS, EOS included
        assert tokenizer.decode(ex.input_ids) == f"<s>{row['text']}</s>"
    assert stats.loss_tokens == sum(len(ex) - 1 for ex in examples)

    from scu.config import TrainConfig, resolve
    from scu.defaults import Facts

    facts = Facts(
        n_params=10**6, train_rows=2, train_tokens=20, p95_row_tokens=10, max_positions=512, cuda=False
    )
    text = resolve(TrainConfig(), Facts(**{**facts.__dict__, "text_rows": True}), "m", qlora_available=False)
    assert text.packing and "packing" in text.defaulted
    assert not resolve(TrainConfig(), facts, "m", qlora_available=False).packing
    off = resolve(
        TrainConfig(packing=False), Facts(**{**facts.__dict__, "text_rows": True}), "m", qlora_available=False
    )
    assert not off.packing and "packing" not in off.defaulted


def test_text_rows_are_refused_for_classification(client: TestClient, tmp_path: Path) -> None:
    errors = _errors(
        _validate(client, tmp_path, [{"text": "great film", "label": "pos"}], task_type="classification")
    )
    assert "'text' rows are continued pre-training" in errors["unsupported_format"]


# --- refusals ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "row",
    [
        {"prompt": "Is the sky blue?", "chosen": "Yes.", "rejected": "No."},
        {
            "prompt": [{"role": "user", "content": "Is the sky blue?"}],
            "chosen": [{"role": "assistant", "content": "Yes."}],
            "rejected": [{"role": "assistant", "content": "No."}],
        },
        {
            "chosen": [{"role": "user", "content": "Sky?"}, {"role": "assistant", "content": "Blue."}],
            "rejected": [{"role": "user", "content": "Sky?"}, {"role": "assistant", "content": "Green."}],
        },
    ],
)
def test_preference_pairs_are_refused_by_name(
    client: TestClient, tmp_path: Path, row: dict[str, Any]
) -> None:
    report = _validate(client, tmp_path, [row])
    assert not report["ok"]
    errors = _errors(report)
    assert list(errors) == ["unsupported_format"]
    assert "preference pairs (DPO) are not supported yet" in errors["unsupported_format"]
    resp = upload(client, write_jsonl(tmp_path / "p.jsonl", [row]))
    assert resp.status_code == 422 and "preference pairs (DPO) are not supported yet" in resp.text
    # also when the file's format is forced
    forced = _errors(_validate(client, tmp_path, [row], format="prompt_completion"))
    assert "preference pairs (DPO)" in forced["unsupported_format"]


@pytest.mark.parametrize(
    ("row", "detail"),
    [
        (
            {"question": "q", "answer": "a"},
            "row has keys ['question', 'answer']; nearest format: input_target (needs 'input' and 'target')",
        ),
        (
            {"prompt": "q", "response": "a"},
            "row has keys ['prompt', 'response']; nearest format: prompt_completion (needs 'completion')",
        ),
        (
            {"instruction": "q", "response": "a"},
            "row has keys ['instruction', 'response']; nearest format: instruction (needs 'output')",
        ),
    ],
)
def test_unmatched_row_names_its_keys_and_the_nearest_format(
    client: TestClient, tmp_path: Path, row: dict[str, Any], detail: str
) -> None:
    errors = _errors(_validate(client, tmp_path, [row]))
    assert errors == {"missing_field": f"a required field is missing (first: line 1: {detail})"}


# --- old datasets ------------------------------------------------------------------------------


def test_old_records_and_manifests_still_read(tmp_path: Path, tokenizer: Any) -> None:
    old = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "What is two plus two?"},
            {"role": "assistant", "content": "four"},
        ],
        "label": None,
    }
    channel = tmp_path / "old"
    channel.mkdir()
    (channel / "train.jsonl").write_text(json.dumps(old, separators=(",", ":")) + "\n")
    runs, whole = _trained_runs(tokenizer, channel)
    assert runs == ["four</s>"]
    prompt = tokenizer.apply_chat_template(old["messages"][:-1], add_generation_prompt=True, tokenize=False)
    assert whole == prompt + "four</s>"
    manifest = {
        "schema_version": 1,
        "dataset_id": "ds_old",
        "name": "old",
        "tenant_id": "t",
        "format": "chat",
        "task_type": "generation",
        "seed": 42,
        "ratios": {"train": 0.8, "validation": 0.1, "test": 0.1},
        "content_sha256": "0" * 64,
        "source_filename": None,
        "source_bytes": 1,
        "splits": {},
        "report": {
            "ok": True,
            "format": "chat",
            "total_lines": 1,
            "valid_rows": 1,
            "unique_rows": 1,
            "duplicates_dropped": 0,
            "errors": [],
            "warnings": [],
        },
        "created_at": "2026-01-01T00:00:00Z",
    }
    assert Manifest.model_validate(manifest).schema_version == 1


def test_plain_chat_records_are_unchanged_bytes(client: TestClient, tmp_path: Path) -> None:
    """A chat without the new fields is stored exactly as in record schema 1 (same digests)."""
    row = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    channel = _upload(client, tmp_path, [row])
    assert (channel / "train.jsonl").read_bytes() == (
        b'{"messages":[{"role":"user","content":"hi"},{"role":"assistant","content":"hello"}],"label":null}\n'
    )
