"""Training configuration: what users may set (``TrainConfig``) and the fully resolved config
after smart defaults (``ResolvedConfig``, written to ``model/fastuner_config.json``). Torch-free."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from scu import controllers, defaults
from scu.defaults import Facts

_NONE_STRINGS = {"", "null", "none", "auto"}

# Upper bounds of the numeric hyperparameters (every one is also finite: allow_inf_nan=False). The
# table in containers/training/README.md lists them; the control plane checks the same model.
MAX_STEPS = 1_000_000
LAMBDA_LIMIT = 1e4
MAX_PROCESSES = 256  # processes per node; the control plane also caps it at the node's GPUs/cores
MAX_TASK_EVAL_ROWS = 100_000


class TrainConfig(BaseModel):
    """Hyperparameters. ``None`` means "pick a smart default"."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    # model and method
    base_model: str | None = None
    method: Literal["lora", "qlora"] = "lora"
    # SCU
    scu: str = "on"  # a registered controller (scu.controllers): on | off | fixed | a plugin's
    target_s: float | None = Field(default=None, gt=0.0, lt=1.0)
    lambda_init: float = Field(default=0.01, gt=0.0, le=LAMBDA_LIMIT)
    lambda_fixed: float | None = Field(default=None, ge=0.0, le=LAMBDA_LIMIT)
    lambda_min: float = Field(default=1e-4, gt=0.0, le=LAMBDA_LIMIT)
    lambda_max: float = Field(default=10.0, gt=0.0, le=LAMBDA_LIMIT)
    kp: float = Field(default=0.5, ge=0.0, le=10.0)
    ki: float = Field(default=0.2, ge=0.0, le=10.0)
    ema_alpha: float = Field(default=0.1, gt=0.0, le=1.0)
    deadband: float = Field(default=0.02, ge=0.0, le=1.0)  # log units: holds the integral
    band: float = Field(default=0.1, gt=0.0, le=2.0)  # log units: the reported target band
    controller_warmup: float = Field(default=0.1, ge=0.0, lt=1.0)  # fraction of steps, integral frozen
    prior_sigma: float = Field(default=0.01, gt=0.0, le=10.0)
    # how the penalty moves the weights: "loss" (its gradient joins the data's, unclipped, through
    # AdamW) or "proximal" (a decoupled implicit shrink after the optimizer step; scu.regulariser)
    penalty: Literal["loss", "proximal"] = "loss"
    # LoRA
    lora_r: int | None = Field(default=None, ge=1, le=1024)
    lora_alpha: float | None = Field(default=None, gt=0.0, le=16384.0)
    lora_dropout: float = Field(default=0.05, ge=0.0, lt=1.0)
    target_modules: list[Annotated[str, Field(min_length=1, max_length=256)]] | None = Field(
        default=None, max_length=256
    )
    # optimisation
    learning_rate: float | None = Field(default=None, gt=0.0, lt=1.0)
    weight_decay: float = Field(default=0.0, ge=0.0, le=10.0)
    lr_scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_ratio: float = Field(default=0.03, ge=0.0, lt=1.0)
    max_grad_norm: float = Field(default=1.0, ge=0.0, le=1e4)
    batch_size: int | None = Field(default=None, ge=1, le=4096)
    grad_accum: int | None = Field(default=None, ge=1, le=4096)
    block_size: int | None = Field(default=None, ge=8, le=131072)
    epochs: float | None = Field(default=None, gt=0.0, le=1000.0)
    max_steps: int | None = Field(default=None, ge=1, le=MAX_STEPS)
    seed: int = Field(default=42, ge=0, le=2**32 - 1)
    # data
    packing: bool | None = None  # None: on for text rows (continued pre-training), else off
    train_on_inputs: bool = False
    validation_fraction: float = Field(default=0.05, ge=0.0, lt=1.0)
    # validation during training: held-out BPT every eval_every optimizer steps (None: once an
    # epoch, and at least 4 times a run); keep_best: the adapter saved is the evaluated one with
    # the lowest validation BPT (the last step's included), not necessarily the last
    eval_every: int | None = Field(default=None, ge=1, le=MAX_STEPS)
    keep_best: bool = True
    # task metrics (greedy generation on held-out rows, base vs adapter; 0 rows = off)
    task_type: Literal["generation", "classification"] | None = None  # None: from the data
    task_eval_rows: int = Field(default=200, ge=0, le=MAX_TASK_EVAL_ROWS)
    # runtime
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    gradient_checkpointing: bool | None = None
    log_every: int = Field(default=10, ge=1, le=MAX_STEPS)
    checkpoint_every: int = Field(default=100, ge=1, le=MAX_STEPS)
    keep_checkpoints: int = Field(default=2, ge=1, le=100)
    eval_batch_size: int | None = Field(default=None, ge=1, le=4096)
    num_processes: int | None = Field(default=None, ge=1, le=MAX_PROCESSES)
    master_port: int = Field(default=29500, ge=1, le=65535)

    @model_validator(mode="before")
    @classmethod
    def _none_strings(cls, data: Any) -> Any:
        """``"auto"``/``"none"``/``""`` mean "not set" (None). Where a field's default is not None,
        ``"auto"`` and ``""`` mean that default (``precision=auto`` is the default ``"auto"``, not a
        None it refuses); ``"none"`` there stays None and is refused (``scu=none`` is not "on")."""
        if isinstance(data, dict):
            out: dict[str, Any] = {}
            for k, v in data.items():
                word = v.strip().lower() if isinstance(v, str) else None
                if word in _NONE_STRINGS:
                    field = cls.model_fields.get(k)
                    has_default = field is not None and field.default is not None and not field.is_required()
                    if has_default and word in ("auto", ""):
                        continue  # the default applies
                    v = None
                out[k] = v
            return out
        return data

    @field_validator("target_modules", mode="before")
    @classmethod
    def _split_modules(cls, value: Any) -> Any:
        if isinstance(value, str):
            parts = [p.strip() for p in value.split(",") if p.strip()]
            return parts or None
        return value

    @field_validator("scu", "method", "lr_scheduler", "precision", "task_type", "penalty", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("scu")
    @classmethod
    def _registered(cls, value: str) -> str:
        return controllers.known(value)

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        controllers.check(self)
        if self.lambda_min > self.lambda_max:
            raise ValueError("lambda_min must be <= lambda_max")
        if not self.lambda_min <= self.lambda_init <= self.lambda_max:
            raise ValueError("lambda_init must lie in [lambda_min, lambda_max]")
        return self


class ResolvedConfig(BaseModel):
    """Every value concrete; ``defaulted`` lists the ones chosen by smart defaults."""

    model_config = ConfigDict(extra="forbid")

    base_model: str
    method: Literal["lora", "qlora"]
    method_requested: Literal["lora", "qlora"]
    scu: str
    target_s: float
    lambda_init: float
    lambda_fixed: float | None
    lambda_min: float
    lambda_max: float
    kp: float
    ki: float
    ema_alpha: float
    deadband: float
    band: float
    controller_warmup: float
    prior_sigma: float
    penalty: Literal["loss", "proximal"]
    lora_r: int
    lora_alpha: float
    lora_dropout: float
    target_modules: list[str] | None
    learning_rate: float
    weight_decay: float
    lr_scheduler: str
    warmup_ratio: float
    max_grad_norm: float
    batch_size: int
    grad_accum: int
    block_size: int
    epochs: float
    max_steps: int | None
    seed: int
    packing: bool
    train_on_inputs: bool
    validation_fraction: float
    eval_every: int | None  # None: chosen by the trainer from the steps per epoch (scu.selection)
    keep_best: bool
    task_type: Literal["generation", "classification"] | None
    task_eval_rows: int
    precision: Literal["fp32", "bf16", "fp16"]
    gradient_checkpointing: bool
    log_every: int
    checkpoint_every: int
    keep_checkpoints: int
    eval_batch_size: int
    num_processes: int | None
    master_port: int
    # facts the defaults were computed from
    n_params: int
    train_rows: int
    train_tokens: int
    world_size: int
    defaulted: list[str]
    data_sha256: str = ""  # of the tokenized training examples (resume refuses other data)


def resolve(
    cfg: TrainConfig, facts: Facts, base_model: str, *, qlora_available: bool, bf16_ok: bool = True
) -> ResolvedConfig:
    """Fill every ``None`` in ``cfg`` from the smart-default rules in :mod:`scu.defaults`."""
    chosen: list[str] = []

    def pick(name: str, value: Any) -> Any:
        user = getattr(cfg, name)
        if user is None:
            chosen.append(name)
            return value
        return user

    method = "qlora" if cfg.method == "qlora" and qlora_available else "lora"
    block = pick("block_size", defaults.block_size(facts.p95_row_tokens, facts.max_positions, facts.cuda))
    r = pick("lora_r", defaults.lora_rank(facts.n_params, facts.train_tokens))
    micro = pick(
        "batch_size", defaults.micro_batch_size(facts.n_params, block, facts.cuda, method == "qlora")
    )
    n_epochs = pick("epochs", defaults.epochs(facts.train_tokens))
    accum = pick("grad_accum", defaults.grad_accum(facts.train_rows, n_epochs, micro, facts.world_size))
    examples = facts.train_examples or facts.train_rows
    per_epoch_steps = defaults.steps_per_epoch(examples, micro, facts.world_size, accum)  # as trained
    selecting = cfg.keep_best and facts.validation_tokens > 0
    if cfg.precision == "auto":
        chosen.append("precision")
        precision = ("bf16" if bf16_ok else "fp16") if facts.cuda else "fp32"
    else:
        precision = cfg.precision
    data = cfg.model_dump()
    data.update(
        base_model=base_model,
        method=method,
        method_requested=cfg.method,
        target_s=pick(
            "target_s",
            defaults.target_s(defaults.passes(n_epochs, cfg.max_steps, per_epoch_steps), selecting),
        ),
        packing=pick("packing", facts.text_rows),
        lora_r=r,
        lora_alpha=pick("lora_alpha", float(defaults.lora_alpha(r))),
        learning_rate=pick("learning_rate", defaults.learning_rate(facts.n_params)),
        batch_size=micro,
        grad_accum=accum,
        block_size=block,
        epochs=n_epochs,
        precision=precision,
        gradient_checkpointing=pick(
            "gradient_checkpointing", defaults.gradient_checkpointing(facts.n_params, facts.cuda)
        ),
        eval_batch_size=pick("eval_batch_size", micro),
        n_params=facts.n_params,
        train_rows=facts.train_rows,
        train_tokens=facts.train_tokens,
        world_size=facts.world_size,
        defaulted=sorted(chosen),
    )
    return ResolvedConfig(**data)
