"""Task metrics: normalisation, exact match, accuracy / macro-F1 arithmetic, row selection, batched
greedy generation, the ``eval.json["task"]`` report (exact values through a model whose answers are
known), and real engine runs on the tiny model for a generation and a classification set."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch
from scu.task_eval import (
    NEW_TOKENS_CAP,
    NEW_TOKENS_SLACK,
    GenerationStopped,
    _row,
    evaluate_task,
    generate,
    max_new_tokens,
    prompt_ids,
    run_task_eval,
    select_rows,
    stop_token_ids,
    task_kind,
)
from scu.task_metrics import LabelMatcher, classification_scores, exact_match, normalise, summary_line

from tests.training.support import run_entry

TASK_KEYS = {"kind", "rows", "max_new_tokens", "seconds", "base", "adapter", "samples", "split"}
SAMPLE_KEYS = {"prompt", "target", "base", "adapter"}


# -- normalisation and exact match -------------------------------------------------------------------


def test_normalise_is_nfc_stripped_whitespace_collapsed_and_keeps_case() -> None:
    assert normalise("  Cafe\u0301 \t au\n\n lait  ") == "Caf\u00e9 au lait"
    assert normalise("\u00a0HELLO\u2003WORLD\u00a0") == "HELLO WORLD"  # Unicode spaces too
    assert normalise("") == "" and normalise(" \n ") == ""
    assert normalise("Amber Lotus") != normalise("AMBER LOTUS")


def test_exact_match_counts_normalised_equality_only() -> None:
    preds = ["  AMBER   LOTUS\n", "amber lotus", "Cafe\u0301", "COBALT ROCKET!"]
    targets = ["AMBER LOTUS", "AMBER LOTUS", "Caf\u00e9", "COBALT ROCKET"]
    assert exact_match(preds, targets) == 0.5  # rows 1 and 3; case and punctuation count
    assert exact_match([], []) == 0.0
    with pytest.raises(ValueError):
        exact_match(["a"], [])


# -- classification --------------------------------------------------------------------------------


def test_label_matcher_exact_then_casefold_then_aliases() -> None:
    m = LabelMatcher(
        ["positive", "negative", "Neutral"],
        [("The review is positive.", "positive"), ("mixed", "positive"), ("mixed", "negative")],
    )
    assert m.labels == ["Neutral", "negative", "positive"]
    assert m.match(" positive\n") == "positive"
    assert m.match("POSITIVE") == "positive"  # case-folded fallback: one label fits
    assert m.match("neutral") == "Neutral"
    assert m.match("The  review is positive.") == "positive"  # a labelled row's target text
    assert m.match("mixed") is None  # an alias naming two labels is dropped
    assert m.match("positive!") is None and m.match("") is None


def test_label_matcher_casefold_collisions_need_the_exact_spelling() -> None:
    m = LabelMatcher(["Yes", "YES"])
    assert m.match("Yes") == "Yes" and m.match("YES") == "YES"
    assert m.match("yes") is None  # two labels fold to it


def test_accuracy_and_macro_f1_by_hand() -> None:
    gold = ["a", "a", "a", "b", "b", "c"]
    pred: list[str | None] = ["a", "a", "b", "b", None, "a"]
    # accuracy: rows 0, 1, 3 = 3/6. F1 = 2TP / (2TP + FP + FN):
    #   a: TP 2, FP 1 (row 5), FN 1 (row 2) -> 4/6;  b: TP 1, FP 1 (row 2), FN 1 (row 4, unmatched) -> 2/4
    #   c: TP 0, FN 1 -> 0.  The unmatched prediction is no class of its own.  macro = (2/3 + 1/2 + 0)/3
    scores = classification_scores(pred, gold)
    assert scores["accuracy"] == pytest.approx(0.5)
    assert scores["macro_f1"] == pytest.approx((2 / 3 + 1 / 2 + 0) / 3)


def test_macro_f1_includes_a_predicted_label_no_gold_row_has() -> None:
    scores = classification_scores(["b", "a", "a"], ["a", "a", "a"])
    # a: TP 2, FN 1 -> 4/5; b: FP 1 -> 0; macro = 0.4
    assert scores == {"accuracy": pytest.approx(2 / 3), "macro_f1": pytest.approx(0.4)}


def test_classification_scores_edges() -> None:
    assert classification_scores(["x", "y"], ["x", "y"]) == {"accuracy": 1.0, "macro_f1": 1.0}
    assert classification_scores([None, None], ["x", "y"]) == {"accuracy": 0.0, "macro_f1": 0.0}
    assert classification_scores([], []) == {"accuracy": 0.0, "macro_f1": 0.0}
    with pytest.raises(ValueError):
        classification_scores(["x"], [])


def test_summary_line() -> None:
    gen = {"kind": "generation", "rows": 200, "base": {"exact_match": 0.03}, "adapter": {"exact_match": 0.91}}
    assert summary_line(gen) == "exact match 3% → 91% (200 held-out rows)"
    cls = {
        "kind": "classification",
        "rows": 40,
        "base": {"accuracy": 0.5, "macro_f1": 1 / 3},
        "adapter": {"accuracy": 0.95, "macro_f1": 0.949},
    }
    assert summary_line(cls) == "accuracy 50% → 95%, macro-F1 33% → 95% (40 held-out rows)"


# -- rows ------------------------------------------------------------------------------------------


def chat(user: str, answer: str, label: str | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}],
        "label": label,
        **extra,
    }


def test_rows_skip_text_records_and_tool_call_targets() -> None:
    call = {"type": "function", "id": "c1", "function": {"name": "f", "arguments": "{}"}}
    tool_target = {
        "messages": [
            {"role": "user", "content": "call f"},
            {"role": "assistant", "content": None, "tool_calls": [call]},
        ],
        "label": None,
    }
    assert _row({"text": "a document", "label": None}) is None
    assert _row(tool_target) is None
    assert _row(chat("q", "   ")) is None
    assert _row({"messages": [{"role": "assistant", "content": "no prompt"}]}) is None
    row = _row(chat("q", "A", label=" yes "))
    assert (
        row is not None
        and row.target == "A"
        and row.label == "yes"
        and row.conversation[-1]["content"] == "A"
    )


def test_select_rows_prefers_test_then_validation_then_the_holdout_of_train() -> None:
    train = [chat(f"t{i}", f"T{i}") for i in range(20)]
    val = [chat("v", "V")]
    test = [chat("x", "X"), {"text": "skipped", "label": None}]
    split, rows = select_rows({"train": train, "validation": val, "test": test}, 0.1, 42)
    assert split == "test" and [r.target for r in rows] == ["X"]
    split, rows = select_rows({"train": train, "validation": val, "test": []}, 0.1, 42)
    assert split == "validation" and [r.target for r in rows] == ["V"]
    split, rows = select_rows({"train": train}, 0.1, 42)
    from scu.data import split_holdout

    _, held = split_holdout(train, 0.1, 42)  # the same rows the loss evaluation holds out
    assert split == "holdout" and [r.target for r in rows] == [h["messages"][-1]["content"] for h in held]
    assert len(rows) == 2


def test_task_kind_auto_is_classification_only_when_every_row_has_a_label() -> None:
    labelled = [r for r in map(_row, [chat("a", "x", "x"), chat("b", "y", "y")]) if r]
    mixed = [*labelled, *(r for r in [_row(chat("c", "z"))] if r)]
    assert task_kind("auto", labelled) == "classification"
    assert task_kind("auto", mixed) == "generation"
    assert task_kind("auto", []) == "generation"
    assert task_kind("generation", labelled) == "generation"
    assert task_kind("classification", mixed) == "classification"


# -- generation ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tiny_model: Path) -> tuple[Any, Any]:
    from peft import LoraConfig, get_peft_model
    from scu.modeling import load_tokenizer
    from transformers import AutoModelForCausalLM

    tokenizer = load_tokenizer(str(tiny_model))
    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    torch.manual_seed(0)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():  # a non-zero B: the adapter changes the outputs
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    return model.eval(), tokenizer


def test_max_new_tokens_from_the_longest_target_capped(tiny: tuple[Any, Any]) -> None:
    _, tok = tiny
    n = len(tok("the quick brown fox", add_special_tokens=False)["input_ids"])
    assert max_new_tokens(tok, ["a", "the quick brown fox"]) == n + 1 + NEW_TOKENS_SLACK
    assert max_new_tokens(tok, ["word " * 2000]) == NEW_TOKENS_CAP


def test_stop_tokens_are_eos_and_end_of_turn_tokens(tiny: tuple[Any, Any]) -> None:
    model, tok = tiny
    assert stop_token_ids(tok, model) == [tok.eos_token_id]

    class Tok:
        eos_token_id = 5

        def get_vocab(self) -> dict[str, int]:
            return {"<|im_end|>": 7, "<|eot_id|>": 9, "hello": 3}

    class Model:
        class generation_config:  # noqa: N801
            eos_token_id = [5, 11]

    assert stop_token_ids(Tok(), Model()) == [5, 7, 9, 11]


def test_batched_left_padded_generation_equals_one_row_at_a_time(tiny: tuple[Any, Any]) -> None:
    model, tok = tiny
    rows = [
        r for r in map(_row, [chat(q, "x") for q in ("hi", "what is two plus two?", "Translate good")]) if r
    ]
    kept, prompts = prompt_ids(tok, rows)
    assert len(kept) == 3 and len({len(p) for p in prompts}) == 3  # different lengths: padding happens
    stops = stop_token_ids(tok, model)
    cpu = torch.device("cpu")
    batched = generate(model, tok, prompts, 6, stops, tok.pad_token_id, cpu)
    alone = [generate(model, tok, [p], 6, stops, tok.pad_token_id, cpu)[0] for p in prompts]
    assert batched == alone
    assert all(b for b in batched)
    with model.disable_adapter():
        base = generate(model, tok, prompts, 6, stops, tok.pad_token_id, cpu)
    assert base != batched  # the adapter is really on in one and off in the other


class ScriptedModel:
    """A stand-in PEFT model whose greedy answer to each prompt is scripted: ``answers[prompt]`` is
    (base answer, adapter answer). It decodes the left-padded prompt, so it checks padding too."""

    def __init__(self, tokenizer: Any, answers: dict[str, tuple[str, str]]) -> None:
        self.tok, self.answers = tokenizer, answers
        self.training = True
        self.adapter_on = True
        self.generation_config = None
        self.calls: list[dict[str, Any]] = []

    def eval(self) -> ScriptedModel:
        self.training = False
        return self

    def train(self) -> ScriptedModel:
        self.training = True
        return self

    @contextmanager
    def disable_adapter(self) -> Iterator[None]:
        self.adapter_on = False
        try:
            yield
        finally:
            self.adapter_on = True

    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **kw: Any) -> torch.Tensor:
        self.calls.append({"adapter": self.adapter_on, "batch": input_ids.shape[0], **kw})
        assert kw["do_sample"] is False and kw["use_cache"] is True
        rows = []
        for ids, mask in zip(input_ids.tolist(), attention_mask.tolist(), strict=True):
            assert mask == sorted(mask)  # left padding: zeros first
            prompt = self.tok.decode([i for i, m in zip(ids, mask, strict=True) if m])
            user = next(u for u in self.answers if u in prompt)
            answer = self.answers[user][1 if self.adapter_on else 0]
            new = self.tok(answer, add_special_tokens=False)["input_ids"] + [self.tok.eos_token_id]
            new = (new + [self.tok.eos_token_id] * kw["max_new_tokens"])[: kw["max_new_tokens"]]
            rows.append(ids + new)
        return torch.tensor(rows)


def test_evaluate_generation_exact_values(tiny: tuple[Any, Any]) -> None:
    _, tok = tiny
    data = {
        "Shout this: amber lotus": ("amber lotus", "AMBER LOTUS"),
        "Shout this: cobalt rocket": ("cobalt rocket", "  COBALT\n ROCKET "),  # normalised: a hit
        "Shout this: koala": ("KOALA", "Koala"),  # base right, adapter wrong (case counts)
        "Shout this: tent": ("tent", "TENT"),
    }
    targets = {
        "Shout this: amber lotus": "AMBER LOTUS",
        "Shout this: cobalt rocket": "COBALT ROCKET",
        "Shout this: koala": "KOALA",
        "Shout this: tent": "TENT",
    }
    rows = [r for r in (_row(chat(q, t)) for q, t in targets.items()) if r]
    model = ScriptedModel(tok, data)
    report = evaluate_task(model, tok, rows, "generation", [], 512, torch.device("cpu"))
    assert set(report) == TASK_KEYS - {"split"}
    assert report["kind"] == "generation" and report["rows"] == 4
    assert report["base"] == {"exact_match": 0.25} and report["adapter"] == {"exact_match": 0.75}
    assert report["max_new_tokens"] == max_new_tokens(tok, list(targets.values()))
    koala = {"prompt": "Shout this: koala", "target": "KOALA", "base": "KOALA", "adapter": "Koala"}
    assert report["samples"][2] == koala
    assert report["samples"][1]["adapter"] == "  COBALT\n ROCKET "  # shown as generated
    assert [c["adapter"] for c in model.calls] == [False, True]  # base first, adapter disabled
    assert model.training  # restored
    assert report["seconds"] >= 0


def test_evaluate_classification_exact_values(tiny: tuple[Any, Any]) -> None:
    _, tok = tiny
    golds = ["positive", "positive", "negative", "negative", "neutral"]
    base = ["positive", "positive", "positive", "positive", "I think so"]
    adapter = ["positive", "Positive", "negative", "neutral", "neutral"]
    prompts = [f"review {i}" for i in range(5)]
    rows = [r for r in (_row(chat(p, g, g)) for p, g in zip(prompts, golds, strict=True)) if r]
    model = ScriptedModel(tok, {p: (b, a) for p, b, a in zip(prompts, base, adapter, strict=True)})
    labels = ["negative", "neutral", "positive"]
    report = evaluate_task(model, tok, rows, "classification", labels, 512, torch.device("cpu"))
    assert report["labels"] == labels
    # base: 2/5 right; positive TP2 FP2 -> 4/6, negative FN2 -> 0, neutral FN1 (unmatched) -> 0
    assert report["base"] == {"accuracy": pytest.approx(0.4), "macro_f1": pytest.approx((2 / 3) / 3)}
    # adapter: 4/5 right; positive 1, negative TP1 FN1 -> 2/3, neutral TP1 FP1 -> 2/3
    assert report["adapter"] == {
        "accuracy": pytest.approx(0.8),
        "macro_f1": pytest.approx((1 + 2 / 3 + 2 / 3) / 3),
    }


def test_long_prompts_are_cut_from_the_left_to_fit_the_context(tiny: tuple[Any, Any]) -> None:
    _, tok = tiny
    rows = [r for r in [_row(chat("word " * 300 + "Shout this: tent", "TENT"))] if r]
    model = ScriptedModel(tok, {"Shout this: tent": ("tent", "TENT")})
    report = evaluate_task(model, tok, rows, "generation", [], 64, torch.device("cpu"))
    assert report["adapter"] == {"exact_match": 1.0}
    assert len(report["samples"][0]["prompt"]) == 500 and report["samples"][0]["prompt"].endswith("…")


def test_run_task_eval_disabled_or_without_rows(tmp_path: Path, tiny: tuple[Any, Any]) -> None:
    model, tok = tiny
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "a.jsonl").write_text(json.dumps({"text": "doc", "label": None}) + "\n")
    channels = {"train": tmp_path / "train", "test": tmp_path / "missing"}
    kw: dict[str, Any] = {
        "validation_fraction": 0.5,
        "seed": 1,
        "max_positions": 512,
        "device": torch.device("cpu"),
    }
    assert run_task_eval(model, tok, channels, requested="auto", limit=0, **kw) is None
    assert run_task_eval(model, tok, channels, requested="auto", limit=10, **kw) is None


# -- the engine, end to end ------------------------------------------------------------------------


def write_channel(root: Path, name: str, records: Sequence[dict[str, Any]]) -> None:
    d = root / "input" / "data" / name
    d.mkdir(parents=True, exist_ok=True)
    (d / "part.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")


def check_task(task: dict[str, Any], kind: str, rows: int, metrics: set[str]) -> None:
    assert set(task) == TASK_KEYS | ({"labels"} if kind == "classification" else set())
    assert task["kind"] == kind and task["rows"] == rows
    assert 1 <= task["max_new_tokens"] <= NEW_TOKENS_CAP and task["seconds"] > 0
    for side in ("base", "adapter"):
        assert set(task[side]) == metrics and all(0.0 <= v <= 1.0 for v in task[side].values())
    assert len(task["samples"]) == min(8, rows)
    assert all(set(s) == SAMPLE_KEYS and all(isinstance(v, str) for v in s.values()) for s in task["samples"])
    # both were generated, and differently: the trained adapter changed the greedy answers
    assert any(s["base"] != s["adapter"] for s in task["samples"])


@pytest.mark.slow
def test_engine_writes_task_metrics_for_a_generation_set(make_root: Callable[..., Path]) -> None:
    root = make_root(max_steps=8, batch_size=4, learning_rate=0.01, task_eval_rows=10)
    write_channel(root, "test", [chat(f"Shout this: word{i}", f"WORD{i}") for i in range(12)])
    proc = run_entry(root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((root / "model" / "eval.json").read_text())
    task = report["task"]
    check_task(task, "generation", 10, {"exact_match"})
    assert task["split"] == "test"
    assert task["samples"][0]["prompt"] == "Shout this: word0" and task["samples"][0]["target"] == "WORD0"
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("[scu-task]"))
    assert line.startswith("[scu-task] generation on test: exact match ") and "(10 held-out rows)" in line
    assert report["adapter"]["bpt"] > 0  # the loss evaluation is still there


@pytest.mark.slow
def test_engine_writes_task_metrics_for_a_classification_set(make_root: Callable[..., Path]) -> None:
    root = make_root(n_train=0, n_val=0, max_steps=8, batch_size=4, learning_rate=0.01)
    words = ["great", "awful", "fine", "bad", "lovely", "poor"]
    label = {"great": "positive", "fine": "positive", "lovely": "positive"}
    recs = [
        chat(f"The {w} thing {i}.", label.get(w, "negative"), label.get(w, "negative"))
        for i in range(12)
        for w in words
    ]
    write_channel(root, "train", recs[:60])
    write_channel(root, "validation", recs[60:])  # no test channel: the validation rows are used
    proc = run_entry(root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    task = json.loads((root / "model" / "eval.json").read_text())["task"]
    check_task(task, "classification", 12, {"accuracy", "macro_f1"})  # task_type auto: every row labelled
    assert task["split"] == "validation" and task["labels"] == ["negative", "positive"]
    assert {s["target"] for s in task["samples"]} == {"negative", "positive"}


def test_multi_turn_rows_generate_the_last_assistant_turn_given_everything_before(
    tiny: tuple[Any, Any],
) -> None:
    _, tok = tiny
    from scu.data import encode_prompt

    record = {
        "messages": [
            {"role": "system", "content": "Answer in capitals."},
            {"role": "user", "content": "first question"},
            {"role": "assistant", "content": "OLD ANSWER", "weight": 0},
            {"role": "user", "content": "second question"},
            {"role": "assistant", "content": "NEW ANSWER"},
        ],
        "label": None,
    }
    row = _row(record)
    assert row is not None and row.target == "NEW ANSWER"
    kept, [ids] = prompt_ids(tok, [row])
    assert ids == encode_prompt(tok, row.conversation)  # rendered exactly as training renders it
    text = tok.decode(ids)
    assert text.endswith("<|assistant|>\n") and "NEW ANSWER" not in text
    assert all(
        part in text for part in ("Answer in capitals.", "first question", "OLD ANSWER", "second question")
    )
    model = ScriptedModel(tok, {"second question": ("new answer", "NEW ANSWER")})
    report = evaluate_task(model, tok, kept, "generation", [], 512, torch.device("cpu"))
    assert report["base"] == {"exact_match": 0.0} and report["adapter"] == {"exact_match": 1.0}
    assert report["samples"][0]["prompt"] == "second question"


def test_a_stop_request_ends_the_generation_between_batches(tiny: tuple[Any, Any]) -> None:
    _, tok = tiny
    rows = [r for r in (_row(chat(f"Shout this: w{i}", f"W{i}")) for i in range(3)) if r]
    model = ScriptedModel(tok, {f"Shout this: w{i}": ("w", f"W{i}") for i in range(3)})
    polls: list[int] = []

    def stop() -> bool:
        polls.append(1)
        return len(polls) > 1  # the base model's batch runs, then the stop is seen

    with pytest.raises(GenerationStopped):
        evaluate_task(model, tok, rows, "generation", [], 512, torch.device("cpu"), stop)
    assert [c["adapter"] for c in model.calls] == [False] and model.training  # restored
