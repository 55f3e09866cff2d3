"""S3 drop-and-train: ``drop/{tenant}/<name>.jsonl`` becomes a dataset and a fine-tune job."""

from api.services.drops.handler import DropHandler, Outcome
from api.services.drops.service import DropService

__all__ = ["DropHandler", "DropService", "Outcome"]
