"""Helpers of the model tests."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from api.backends.local_models import MARKER, safe_name

SMOL = "HuggingFaceTB/SmolLM2-135M-Instruct"
LLAMA = "meta-llama/Llama-3.2-1B-Instruct"


def fake_pull(tiny: Path, models_dir: Path, hub_id: str = SMOL) -> Path:
    """What a finished `models pull` leaves (the tiny model standing in for the real weights)."""
    dest = models_dir / safe_name(hub_id)
    shutil.copytree(tiny, dest)
    (dest / MARKER).write_text(json.dumps({"hub_id": hub_id, "source": "test"}))
    return dest
