"""The SageMaker container contract, rooted at ``$OPT_ML_ROOT`` (default ``/opt/ml``). Torch-free."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

ROOT_ENV = "OPT_ML_ROOT"
DEFAULT_ROOT = "/opt/ml"

# Process exit statuses of the training entry.
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_INTERRUPTED = 143  # SIGTERM received; a checkpoint was saved; restart resumes from it


@dataclass(frozen=True)
class ContractPaths:
    root: Path

    @classmethod
    def from_env(cls, root: str | os.PathLike[str] | None = None) -> ContractPaths:
        return cls(Path(root if root is not None else os.environ.get(ROOT_ENV, DEFAULT_ROOT)))

    @property
    def config_dir(self) -> Path:
        return self.root / "input" / "config"

    @property
    def hyperparameters(self) -> Path:
        return self.config_dir / "hyperparameters.json"

    @property
    def resourceconfig(self) -> Path:
        return self.config_dir / "resourceconfig.json"

    @property
    def data_dir(self) -> Path:
        return self.root / "input" / "data"

    def channel(self, name: str) -> Path:
        return self.data_dir / name

    @property
    def model_dir(self) -> Path:
        return self.root / "model"

    @property
    def checkpoint_dir(self) -> Path:
        return self.root / "checkpoints"

    @property
    def output_dir(self) -> Path:
        return self.root / "output"

    @property
    def failure_file(self) -> Path:
        return self.output_dir / "failure"

    @property
    def output_data_dir(self) -> Path:
        return self.output_dir / "data"

    @property
    def metrics_file(self) -> Path:
        return self.output_data_dir / "metrics.jsonl"

    @property
    def status_file(self) -> Path:
        return self.output_data_dir / "status.json"

    def write_failure(self, message: str) -> None:
        """Write a one-paragraph failure reason (SageMaker shows it as FailureReason)."""
        self.output_dir.mkdir(parents=True, exist_ok=True)
        text = " ".join(message.split())
        self.failure_file.write_text(text[:4000] + "\n", encoding="utf-8")
