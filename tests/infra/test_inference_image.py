"""The inference image is pinned and runs the training image's torch and libraries."""

from __future__ import annotations

import re
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]
INFERENCE = ROOT / "containers" / "inference"
TRAINING = ROOT / "containers" / "training"


def _requirements(path: Path) -> dict[str, Requirement]:
    reqs = [
        Requirement(line)
        for line in path.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    return {r.name.lower(): r for r in reqs}


def _base_image(dockerfile: Path) -> str:
    text = dockerfile.read_text()
    arg = re.search(r"^ARG BASE_IMAGE=(\S+)", text, re.MULTILINE)
    if arg:
        return arg.group(1)
    match = re.search(r"^FROM (\S+)", text, re.MULTILINE)
    assert match, f"no FROM in {dockerfile}"
    return match.group(1)


def test_same_torch_base_image_as_training() -> None:
    assert _base_image(INFERENCE / "Dockerfile") == _base_image(TRAINING / "Dockerfile")


def test_every_inference_requirement_is_pinned() -> None:
    for name, req in _requirements(INFERENCE / "requirements.txt").items():
        specs = list(req.specifier)
        assert len(specs) == 1 and specs[0].operator == "==", f"{name} is not pinned: {req}"
    assert "torch" not in _requirements(INFERENCE / "requirements.txt")  # it is the base image's


def test_shared_libraries_satisfy_the_training_requirements() -> None:
    inference = _requirements(INFERENCE / "requirements.txt")
    for name, req in _requirements(TRAINING / "requirements.txt").items():
        if name in inference:
            version = next(iter(inference[name].specifier)).version
            assert req.specifier.contains(version), f"{name}=={version} does not satisfy training's {req}"
    for name in ("transformers", "peft", "accelerate", "safetensors", "tokenizers"):
        assert name in inference, f"{name} missing from the inference requirements"
