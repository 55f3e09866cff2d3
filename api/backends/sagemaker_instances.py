"""The SageMaker instance catalogue: what each ``ml.*`` type offers and costs.

Prices are on-demand USD/hour in us-east-1 for SageMaker training/hosting (public price list,
rounded); a spot run is estimated at ``SPOT_PRICE_FACTOR`` of that. Estimates, not bills.
"""

from __future__ import annotations

from typing import Final

from api.domain.instances import InstanceType

SPOT_PRICE_FACTOR: Final = 0.35
STARTUP_S: Final = 300  # instance provisioning, image pull, model load

_TABLE: tuple[InstanceType, ...] = (
    InstanceType("ml.m5.xlarge", 0.23, 0, 0.0, 0.3),
    InstanceType("ml.m5.2xlarge", 0.461, 0, 0.0, 0.6),
    InstanceType("ml.c5.4xlarge", 0.816, 0, 0.0, 1.2),
    InstanceType("ml.g4dn.xlarge", 0.736, 1, 16.0, 65.0),
    InstanceType("ml.g4dn.2xlarge", 0.94, 1, 16.0, 65.0),
    InstanceType("ml.g4dn.12xlarge", 4.89, 4, 16.0, 65.0),
    InstanceType("ml.g5.xlarge", 1.408, 1, 24.0, 125.0),
    InstanceType("ml.g5.2xlarge", 1.515, 1, 24.0, 125.0),
    InstanceType("ml.g5.4xlarge", 2.03, 1, 24.0, 125.0),
    InstanceType("ml.g5.12xlarge", 7.09, 4, 24.0, 125.0),
    InstanceType("ml.g5.48xlarge", 20.36, 8, 24.0, 125.0),
    InstanceType("ml.g6.xlarge", 1.01, 1, 24.0, 121.0),
    InstanceType("ml.g6.12xlarge", 5.67, 4, 24.0, 121.0),
    InstanceType("ml.g6e.xlarge", 2.24, 1, 48.0, 362.0),
    InstanceType("ml.p3.2xlarge", 3.825, 1, 16.0, 125.0),
    InstanceType("ml.p4d.24xlarge", 37.69, 8, 40.0, 312.0),
    InstanceType("ml.p4de.24xlarge", 47.11, 8, 80.0, 312.0),
    InstanceType("ml.p5.48xlarge", 113.07, 8, 80.0, 989.0),
)
INSTANCE_TYPES: Final[dict[str, InstanceType]] = {i.name: i for i in _TABLE}


def lookup(name: str) -> InstanceType | None:
    return INSTANCE_TYPES.get(name)
