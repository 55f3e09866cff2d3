"""What an instance type offers and costs: the shape of every backend's instance catalogue.

Each backend declares its own catalogue (see :mod:`api.backends.capabilities`); preflight checks
and cost estimates read it. Prices are estimates, not bills.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class InstanceType:
    name: str
    hourly_usd: float
    gpus: int
    gpu_memory_gb: float  # per GPU
    peak_tflops: float  # dense bf16/fp16 per GPU (CPU: a rough figure for the whole machine)
    on_host: bool = False  # the API's own machine: its GPUs/cores are probed when asked

    @property
    def has_gpu(self) -> bool:
        return self.gpus > 0
