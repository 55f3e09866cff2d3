"""Load the base model and tokenizer by path (or hub id), count parameters from the config, detect
LoRA target modules, and wrap the model with PEFT LoRA (or QLoRA when CUDA + bitsandbytes exist)."""

from __future__ import annotations

import importlib.util
import logging
from typing import Any, cast

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from scu.dropout import use_lora_dropout
from scu.hub_token import ensure_hf_token

log = logging.getLogger("scu.modeling")

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_NEVER_TARGET = {"lm_head", "score", "classifier", "embed_out", "output", "wte", "wpe"}


def model_facts(name_or_path: str) -> tuple[int, int]:
    """(parameter count, max positions) computed from the config on the meta device (no weights)."""
    ensure_hf_token()  # a gated hub model needs it (FASTUNER_HF_TOKEN_SECRET → HF_TOKEN)
    config = AutoConfig.from_pretrained(name_or_path)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    n_params = sum(p.numel() for p in model.parameters())
    max_pos = 0
    for attr in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, attr, None)
        if isinstance(value, int) and value > 0:
            max_pos = value
            break
    return n_params, max_pos or 2048


def load_tokenizer(name_or_path: str) -> Any:
    ensure_hf_token()
    tok = AutoTokenizer.from_pretrained(name_or_path)
    if tok.pad_token_id is None:
        if tok.eos_token is None:
            raise ValueError("the tokenizer has neither a pad nor an eos token")
        tok.pad_token = tok.eos_token
    return tok


def qlora_available() -> bool:
    return torch.cuda.is_available() and importlib.util.find_spec("bitsandbytes") is not None


def load_base_model(
    name_or_path: str, precision: str, method: str, device: torch.device, gradient_checkpointing: bool
) -> PreTrainedModel:
    ensure_hf_token()
    dtype = _DTYPES[precision]
    if method == "qlora":
        from peft import prepare_model_for_kbit_training
        from transformers import BitsAndBytesConfig

        quant = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype if dtype != torch.float32 else torch.bfloat16,
        )
        model = AutoModelForCausalLM.from_pretrained(
            name_or_path, quantization_config=quant, dtype=dtype, device_map={"": device}
        )
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
    else:
        model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=dtype)
        cast(torch.nn.Module, model).to(device)  # transformers types its `to` wrapper's argument wrongly
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    model.config.use_cache = False
    return model


def detect_target_modules(model: torch.nn.Module) -> list[str]:
    """Leaf names of the linear projections inside the repeated blocks (attention + MLP)."""
    linear_types: tuple[type, ...] = (torch.nn.Linear,)
    try:
        from transformers.pytorch_utils import Conv1D

        linear_types = (torch.nn.Linear, Conv1D)
    except ImportError:  # pragma: no cover
        pass
    names: set[str] = set()
    for full_name, module in model.named_modules():
        if not isinstance(module, linear_types):
            continue
        parts = full_name.split(".")
        leaf = parts[-1]
        if leaf in _NEVER_TARGET or any("embed" in p for p in parts):
            continue
        if not any(p.isdigit() for p in parts):  # not inside a repeated block
            continue
        names.add(leaf)
    if not names:
        raise ValueError("could not find linear projections to adapt; set target_modules")
    return sorted(names)


def apply_lora(
    model: PreTrainedModel, r: int, alpha: float, dropout: float, target_modules: list[str] | None
) -> tuple[PeftModel, list[str]]:
    targets = target_modules or detect_target_modules(model)
    config = LoraConfig(
        r=r,
        lora_alpha=alpha,  # type: ignore[arg-type]  # PEFT annotates int; a float works (alpha / r)
        lora_dropout=dropout,
        target_modules=targets,
        bias="none",
        task_type="CAUSAL_LM",
    )
    peft_model = get_peft_model(model, config)
    use_lora_dropout(peft_model)  # PEFT's nn.Dropout, with a mask that is cheaper on CPU
    return peft_model, targets


def named_trainable_parameters(model: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    return [(name, p) for name, p in model.named_parameters() if p.requires_grad]


def trainable_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for _, p in named_trainable_parameters(model)]
