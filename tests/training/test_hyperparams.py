from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from scu.config import TrainConfig, resolve
from scu.defaults import TARGET_S_MAX, Facts, micro_batches_per_epoch, passes, steps_per_epoch, target_s
from scu.hyperparams import HyperparameterError, load_hyperparameters, parse_hyperparameters


def test_strings_are_coerced() -> None:
    cfg = parse_hyperparameters(
        {
            "lora_r": "16",
            "learning_rate": "1e-4",
            "packing": "true",
            "train_on_inputs": "False",
            "epochs": "1.5",
            "target_modules": "q_proj, v_proj",
            "scu": "ON",
            "target_s": "auto",
            "max_steps": "",
        }
    )
    assert cfg.lora_r == 16 and cfg.learning_rate == 1e-4 and cfg.packing and not cfg.train_on_inputs
    assert cfg.epochs == 1.5 and cfg.target_modules == ["q_proj", "v_proj"] and cfg.scu == "on"
    assert cfg.target_s is None and cfg.max_steps is None


def test_json_encoded_strings_and_native_values() -> None:
    cfg = parse_hyperparameters(
        {"base_model": '"/models/x"', "lora_r": '"8"', "target_modules": '["q_proj","k_proj"]', "seed": 7}
    )
    assert cfg.base_model == "/models/x" and cfg.lora_r == 8 and cfg.target_modules == ["q_proj", "k_proj"]
    assert cfg.seed == 7


def test_sagemaker_keys_are_ignored() -> None:
    cfg = parse_hyperparameters({"sagemaker_job_name": '"x"', "_tuning_objective_metric": "loss"})
    assert cfg == TrainConfig()


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        ({"lora_rank": "8"}, "unknown hyperparameter(s) lora_rank"),
        ({"lora_r": "eight"}, "lora_r"),
        ({"learning_rate": "-1"}, "learning_rate"),
        ({"scu": "maybe"}, "scu"),
        ({"scu": "fixed"}, "lambda_fixed"),
        ({"lambda_min": "2", "lambda_max": "1"}, "lambda_min"),
    ],
)
def test_errors_are_clear_single_paragraphs(raw: dict[str, str], needle: str) -> None:
    with pytest.raises(HyperparameterError) as info:
        parse_hyperparameters(raw)
    msg = str(info.value)
    assert msg.startswith("Invalid hyperparameters:") and needle in msg and "\n" not in msg


def test_load_file(tmp_path: Path) -> None:
    path = tmp_path / "hp.json"
    assert load_hyperparameters(path) == TrainConfig()
    path.write_text("{not json")
    with pytest.raises(HyperparameterError, match="not valid JSON"):
        load_hyperparameters(path)
    path.write_text(json.dumps({"lora_r": "4"}))
    assert load_hyperparameters(path).lora_r == 4


FACTS = Facts(
    n_params=1_000_000_000,
    train_rows=5000,
    train_tokens=1_000_000,
    p95_row_tokens=300,
    max_positions=8192,
    cuda=True,
)


def test_smart_defaults_from_facts() -> None:
    r = resolve(TrainConfig(), FACTS, "m", qlora_available=False)
    assert r.target_s == pytest.approx(0.5)
    assert r.lora_r == 16 and r.lora_alpha == 32 and r.learning_rate == 2e-4
    assert r.block_size == 512 and r.precision == "bf16" and r.epochs == 2
    assert r.batch_size * r.grad_accum <= 16
    assert {"target_s", "lora_r", "learning_rate", "block_size", "batch_size", "epochs"} <= set(r.defaulted)


def test_defaults_scale_with_model_size_and_data() -> None:
    small = resolve(TrainConfig(), Facts(1_000_000, 50, 2000, 40, 512, False), "m", qlora_available=False)
    big = resolve(
        TrainConfig(),
        Facts(70_000_000_000, 10**6, 50_000_000, 3000, 8192, True),
        "m",
        qlora_available=True,
    )
    assert small.lora_r < big.lora_r and small.learning_rate > big.learning_rate
    assert small.target_s == big.target_s == 0.5 and small.block_size == 64 and big.block_size == 4096
    assert small.precision == "fp32" and big.gradient_checkpointing and big.epochs == 1


def test_overrides_win_and_qlora_falls_back() -> None:
    cfg = TrainConfig(lora_r=4, learning_rate=1e-3, block_size=128, target_s=0.05, method="qlora")
    r = resolve(cfg, FACTS, "m", qlora_available=False)
    assert (r.lora_r, r.learning_rate, r.block_size, r.target_s) == (4, 1e-3, 128, 0.05)
    assert r.method == "lora" and r.method_requested == "qlora"
    assert "lora_r" not in r.defaulted and "lora_alpha" in r.defaulted and r.lora_alpha == 8


def test_target_s_default_and_override() -> None:
    facts = Facts(135_000_000, 100, 20_000, 200, 2048, False)  # no validation rows: no selection
    assert resolve(TrainConfig(), facts, "m", qlora_available=False).target_s == 0.5
    assert resolve(TrainConfig(target_s=0.2), facts, "m", qlora_available=False).target_s == 0.2
    validated = dataclasses.replace(facts, validation_tokens=500)
    assert resolve(TrainConfig(), validated, "m", qlora_available=False).target_s == 0.75  # 3 epochs
    assert resolve(TrainConfig(epochs=1), validated, "m", qlora_available=False).target_s == 0.5
    off = TrainConfig(keep_best=False)  # keeps the last adapter: the SCU is the only protection
    assert resolve(off, validated, "m", qlora_available=False).target_s == 0.5
    assert resolve(TrainConfig(target_s=0.2), validated, "m", qlora_available=False).target_s == 0.2


def test_target_s_rule_follows_the_passes_over_the_data_when_selecting() -> None:
    assert target_s(15, selecting=False) == target_s() == 0.5
    assert target_s(1, True) == 0.5 and target_s(3, True) == 0.75 and target_s(15, True) == 15 / 16
    assert target_s(0.25, True) == 0.5  # less than one pass counts as one
    assert target_s(1000, True) == TARGET_S_MAX == 0.95  # capped where the rule is unmeasured
    assert passes(2.5, None, 7) == 2.5 and passes(3.0, 70, 7) == 10.0  # max_steps wins


def test_target_s_counts_passes_from_max_steps_and_packed_examples() -> None:
    # 100 rows, batch 4 x accum 5 -> 5 optimizer steps per epoch
    facts = Facts(135_000_000, 100, 20_000, 200, 2048, False, validation_tokens=500)
    cfg = TrainConfig(batch_size=4, grad_accum=5)
    assert resolve(cfg.model_copy(update={"max_steps": 5}), facts, "m", qlora_available=False).target_s == 0.5
    nine = resolve(cfg.model_copy(update={"max_steps": 45}), facts, "m", qlora_available=False)
    assert nine.target_s == 0.9
    # packed into 20 sequences: one step per epoch, so 3 epochs' worth of steps is 3 passes
    packed = dataclasses.replace(facts, train_examples=20)
    three = resolve(cfg.model_copy(update={"max_steps": 3}), packed, "m", qlora_available=False)
    assert three.target_s == 0.75


def test_steps_per_epoch_is_what_the_trainer_runs() -> None:
    """The planning formula (S*'s passes, the trainer's step count) against the batches the data
    loader actually hands each rank."""
    from scu.data import rank_batches

    for n in range(0, 23):
        for batch in range(1, 5):
            for world in range(1, 4):
                for rank in range(world):
                    got = len(rank_batches(n, batch, 7, 0, rank, world))
                    assert micro_batches_per_epoch(n, batch, world) == got, (n, batch, world, rank)
                for accum in (1, 2, 3):
                    expected = -(-micro_batches_per_epoch(n, batch, world) // accum)
                    assert steps_per_epoch(n, batch, world, accum) == expected


def test_non_finite_hyperparameters_are_refused() -> None:
    for key in ("weight_decay", "kp", "learning_rate", "target_s"):
        with pytest.raises(HyperparameterError, match=key):
            parse_hyperparameters({key: "inf"})
    with pytest.raises(HyperparameterError, match="kp"):
        parse_hyperparameters({"kp": "1e309"})


def test_auto_means_the_default_where_the_default_is_not_none() -> None:
    cfg = parse_hyperparameters(
        {"precision": "auto", "lr_scheduler": "", "lora_r": "auto", "target_s": "none"}
    )
    assert cfg.precision == "auto" and cfg.lr_scheduler == TrainConfig().lr_scheduler  # not a refused None
    assert cfg.lora_r is None and cfg.target_s is None  # None is their default ("pick for me")
    with pytest.raises(HyperparameterError, match="scu"):
        parse_hyperparameters({"scu": "none"})  # not silently "on"
