"""Held-out bits per token in the benchmark process: the base model is loaded once (fp32, CUDA when
available) and each adapter folder (``model/`` or a ``checkpoints/step-N/``) is loaded into it with
PEFT, evaluated, and dropped again. Tokenisation, truncation and masking are the engine's own
(``scu.data``), and so is the loss (``scu.evaluate.ce_over``).

BPT = summed target cross-entropy (nats) / target tokens / ln 2.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

PROBE_TOLERANCE_BPT = 1e-4  # the base with adapters disabled must score what the bare base scored


class Evaluator:
    def __init__(self, model_path: Path, block: int, threads: int = 0, batch_size: int = 0) -> None:
        import torch
        from scu.distributed import DistInfo
        from scu.modeling import load_base_model, load_tokenizer

        if threads:
            torch.set_num_threads(threads)
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.block = block
        self.batch_size = batch_size or (16 if self.device.type == "cuda" else 4)
        self.tokenizer = load_tokenizer(str(model_path))
        self.pad_id = int(self.tokenizer.pad_token_id)
        self.info = DistInfo()
        self.base: Any = cast(Any, load_base_model(str(model_path), "fp32", "lora", self.device, False))
        self.base.eval()
        self.peft: Any = None  # the PeftModel, once the first adapter is loaded
        self.loaded: str | None = None
        self.count = 0
        self.probe: list[Any] = []
        self.probe_bpt = math.nan

    def examples(self, rows: Sequence[dict[str, Any]]) -> list[Any]:
        """Engine-encoded examples, sorted by length so batches carry little padding."""
        from scu.data import build_examples, encode_rows

        encoded = encode_rows(self.tokenizer, [r["messages"] for r in rows])
        examples, _ = build_examples(encoded, self.block, train_on_inputs=False)
        return sorted(examples, key=len)

    def _bpt(self, model: Any, examples: Sequence[Any]) -> tuple[float, int]:
        from scu.evaluate import LN2, ce_over

        total, count = ce_over(model, examples, self.batch_size, self.pad_id, self.device, self.info)
        return (total / count / LN2 if count else math.nan), count

    def base_bpt(self, examples: Sequence[Any]) -> tuple[float, int]:
        """(BPT, target tokens) of the base model with no adapter active."""
        if self.peft is None:
            return self._bpt(self.base, examples)
        with self.peft.disable_adapter():
            return self._bpt(self.peft, examples)

    def set_probe(self, examples: Sequence[Any]) -> None:
        """A few examples scored on the bare base now and re-checked with adapters disabled later."""
        self.probe = list(examples)
        self.probe_bpt = self.base_bpt(self.probe)[0]

    def check_base_unchanged(self) -> None:
        if not self.probe:
            return
        now = self.base_bpt(self.probe)[0]
        if abs(now - self.probe_bpt) > PROBE_TOLERANCE_BPT:
            raise RuntimeError(
                f"base BPT with adapters disabled changed: {self.probe_bpt:.6f} -> {now:.6f} "
                "(an adapter leaked into the base weights)"
            )

    def adapter_bpt(self, folder: Path, sets: Sequence[Sequence[Any]]) -> list[float]:
        """BPT of the adapter in ``folder`` on each example set."""
        from peft import PeftModel

        name = f"a{self.count}"
        self.count += 1
        if self.peft is None:
            self.peft = PeftModel.from_pretrained(
                self.base, str(folder), adapter_name=name, is_trainable=False
            )
        else:
            self.peft.load_adapter(str(folder), adapter_name=name, is_trainable=False)
            self.peft.set_adapter(name)
            if self.loaded is not None:
                self.peft.delete_adapter(self.loaded)  # keep one adapter in memory at a time
        self.loaded = name
        self.peft.eval()
        out = [self._bpt(self.peft, ex)[0] for ex in sets]
        self.check_base_unchanged()
        return out
