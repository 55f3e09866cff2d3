"""What a backend can do, declared once, so callers ask a capability and never the backend's name.

Preflight, cost estimates, deployments and the base-model service read a :class:`Capabilities`
(see :func:`api.backends.registry.capabilities`): which instance types exist and what they cost,
whether QLoRA, several nodes or spot capacity are possible, how a base model reaches the job, and
how long a job takes to start.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from api.domain.instances import InstanceType


@dataclass(frozen=True)
class Capabilities:
    summary: str  # how it runs, for refusals: "runs one process on this machine"
    instances: Mapping[str, InstanceType]  # training and hosting catalogue, by name
    default_instance: str  # training, when a request names none
    default_inference_instance: str  # deployments, when a request names none
    multi_node: bool  # instance_count > 1
    spot: bool  # spot capacity (priced at ``spot_price_factor`` of on-demand)
    # Jobs run on the API's machine: base models may be folders under FASTUNER_MODEL_ROOTS, hub ids
    # pulled into $FASTUNER_HOME/models or in the Hugging Face cache are used from there, and the
    # job inherits the server's environment (HF_TOKEN). Otherwise the job downloads hub models.
    host_files: bool
    startup_seconds: int  # added to runtime estimates (process/instance start, model load)
    qlora: bool = True  # QLoRA possible at all (it also needs a GPU on the instance)
    spot_price_factor: float = 1.0

    def instance(self, name: str) -> InstanceType | None:
        return self.instances.get(name)

    @property
    def on_host_only(self) -> bool:
        """Every instance is the API's own machine (nothing to choose)."""
        return all(i.on_host for i in self.instances.values())
