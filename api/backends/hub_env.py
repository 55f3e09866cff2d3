"""The container environment variable naming the Hugging Face token's secret (never the token).

Both containers read it at start (``scu.hub_token``, ``loraserve.hub_token``): a Secrets Manager
secret ARN or name whose value is the token (or JSON with an ``HF_TOKEN``/``token`` key); they set
``HF_TOKEN`` in their own process for huggingface_hub and never log it.
"""

from __future__ import annotations

HF_TOKEN_SECRET_ENV = "FASTUNER_HF_TOKEN_SECRET"
