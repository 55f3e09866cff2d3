"""What every SageMaker backend is built with: the S3 store, the container image, the execution
role, the region's ``sagemaker`` client (botocore ``standard`` retries) and the Hugging Face token's
secret. The training backend and both endpoint backends extend :class:`SageMakerService`."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, ClassVar

import boto3
from botocore.config import Config

from api.backends.hub_env import HF_TOKEN_SECRET_ENV
from api.storage.s3 import S3Store

if TYPE_CHECKING:
    from mypy_boto3_sagemaker import SageMakerClient

MAX_ATTEMPTS = 10
RETRY_CONFIG = Config(
    retries={"mode": "standard", "max_attempts": MAX_ATTEMPTS}, connect_timeout=10, read_timeout=60
)
# SageMaker's resource name grammar (training jobs, models, endpoints, components): <= 63 chars.
NAME_PATTERN = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")


class SageMakerService:
    """The store, image, role and client a SageMaker backend calls with."""

    role: ClassVar[str] = "the sagemaker backend"  # how refusals name it
    image_kind: ClassVar[str] = "training"  # which image: FASTUNER_{TRAINING,INFERENCE}_IMAGE_URI

    def __init__(
        self,
        store: S3Store,
        *,
        image_uri: str,
        role_arn: str,
        region: str | None,
        sagemaker_client: SageMakerClient | None = None,
        hf_token_secret: str | None = None,
    ) -> None:
        if not image_uri:
            setting = f"FASTUNER_{self.image_kind.upper()}_IMAGE_URI"
            raise ValueError(f"{self.role} needs the {self.image_kind} image URI ({setting})")
        if not role_arn:
            raise ValueError(f"{self.role} needs an execution role (FASTUNER_SAGEMAKER_ROLE_ARN)")
        self.store = store
        self.image_uri = image_uri
        self.role_arn = role_arn
        self.region = region
        # The Secrets Manager secret (ARN/name) of the Hugging Face token: the Environment carries
        # the name, the container reads the value (never the request, never the logs).
        self.hf_token_secret = hf_token_secret
        self.sagemaker: SageMakerClient = sagemaker_client or boto3.client(
            "sagemaker", region_name=region, config=RETRY_CONFIG
        )

    def token_environment(self) -> dict[str, str]:
        """The container variable naming the Hugging Face token's secret, when one is configured."""
        return {HF_TOKEN_SECRET_ENV: self.hf_token_secret} if self.hf_token_secret else {}
