"""Helpers for the inference tests: the adapter store layout and independent PEFT references.

The base model comes from ``scu.tiny`` (tests only; the server itself never imports ``scu``). The
adapters are random-init LoRA weights (``init_lora_weights=False``) so that base, A and B generate
visibly different text; references are computed with plain PEFT, independently of ``loraserve``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

TENANT = "t_test"
PROMPT = "The quick brown"
ADAPTER_SEEDS = {"adp_a": 11, "adp_b": 22}


@dataclass(frozen=True)
class Store:
    root: Path  # <tmp>/store
    prefix: Path  # <tmp>/store/<tenant>/adapters
    base: Path

    @property
    def file_uri(self) -> str:
        return self.prefix.as_uri()


@contextmanager
def mocked_bucket(bucket: str, folder: Path, prefix: str = "") -> Iterator[Any]:
    """A moto S3 client whose ``bucket`` holds every file under ``folder`` at ``<prefix><relative path>``."""
    import boto3
    from moto import mock_aws

    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket=bucket)
        for path in folder.rglob("*"):
            if path.is_file():
                client.upload_file(str(path), bucket, prefix + path.relative_to(folder).as_posix())
        yield client


def make_lora(base: Path, out: Path, seed: int, targets: list[str]) -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, local_files_only=True)
    config = LoraConfig(
        r=4,
        lora_alpha=16,
        target_modules=targets,
        init_lora_weights=False,
        task_type="CAUSAL_LM",
    )
    torch.manual_seed(seed)
    get_peft_model(model, config).save_pretrained(out)


class Reference:
    """Greedy generation with plain transformers/PEFT, one model per adapter (cached)."""

    def __init__(self, store: Store) -> None:
        from transformers import AutoTokenizer

        self.store = store
        self.tokenizer: Any = AutoTokenizer.from_pretrained(store.base, local_files_only=True)
        self._models: dict[str | None, Any] = {}
        self._cache: dict[tuple[str | None, tuple[int, ...], int], tuple[str, list[int]]] = {}

    def model(self, adapter: str | None) -> Any:
        if adapter not in self._models:
            from peft import PeftModel
            from transformers import AutoModelForCausalLM

            base = AutoModelForCausalLM.from_pretrained(self.store.base, local_files_only=True)
            model = base if adapter is None else PeftModel.from_pretrained(base, self.store.prefix / adapter)
            self._models[adapter] = model.eval()
        return self._models[adapter]

    def ids(self, prompt: str | list[dict[str, str]]) -> list[int]:
        if isinstance(prompt, str):
            return list(self.tokenizer(prompt)["input_ids"])
        text = self.tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def generate(
        self, adapter: str | None, prompt: str | list[dict[str, str]], max_new_tokens: int
    ) -> tuple[str, list[int]]:
        """(text, new token ids) for greedy decoding."""
        import torch

        ids = self.ids(prompt)
        key = (adapter, tuple(ids), max_new_tokens)
        if key not in self._cache:
            input_ids = torch.tensor([ids])
            with torch.inference_mode():
                out = self.model(adapter).generate(
                    input_ids=input_ids,
                    attention_mask=torch.ones_like(input_ids),
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    pad_token_id=self.tokenizer.pad_token_id,
                )
            new = out[0, len(ids) :].tolist()
            self._cache[key] = (self.tokenizer.decode(new, skip_special_tokens=True), new)
        return self._cache[key]

    def text(self, adapter: str | None, prompt: str | list[dict[str, str]], max_new_tokens: int) -> str:
        return self.generate(adapter, prompt, max_new_tokens)[0]


ClientFactory = Callable[..., AbstractContextManager[Any]]
