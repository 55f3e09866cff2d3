"""The Hugging Face token for gated hub models, resolved at start from a Secrets Manager secret.

The control plane never hands the token itself to a job: the container environment names the
secret (``FASTUNER_HF_TOKEN_SECRET``: ARN or name), and this module reads it with boto3
(``secretsmanager:GetSecretValue``, granted to the SageMaker execution role) and sets ``HF_TOKEN``
in this process only, where huggingface_hub finds it. The value is never logged or written. A
token already in ``HF_TOKEN`` (the local backend passes on the server's) is left as it is. The
secret's value is the token itself or JSON with an ``HF_TOKEN``, ``hf_token`` or ``token`` key.

One source for both containers: ``loraserve/hub_token.py`` is a symbolic link to this file, and the
inference image copies this file in as ``loraserve.hub_token`` (each container ships alone).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from typing import Any

log = logging.getLogger(__name__)  # scu.hub_token or loraserve.hub_token

SECRET_ENV = "FASTUNER_HF_TOKEN_SECRET"
TOKEN_ENV = "HF_TOKEN"
_JSON_KEYS = ("HF_TOKEN", "hf_token", "token")
# botocore logs whole response bodies at DEBUG (the secret's value among them): held at INFO during the call.
_AWS_LOGGERS = ("botocore", "boto3", "urllib3")


class HubTokenError(RuntimeError):
    """The configured secret could not be read (the message names the secret, never a value)."""


def token_from_secret(value: str) -> str:
    """The token in a secret's value: the string itself, or JSON ``{"HF_TOKEN": …}``."""
    text = value.strip()
    if text.startswith("{"):
        try:
            data = json.loads(text)
        except ValueError:
            data = None
        if isinstance(data, dict):
            for key in _JSON_KEYS:
                if isinstance(data.get(key), str) and data[key].strip():
                    return str(data[key]).strip()
            raise HubTokenError(f"the secret is JSON without a token key ({', '.join(_JSON_KEYS)})")
    if not text:
        raise HubTokenError("the secret is empty")
    return text


@contextmanager
def _no_aws_debug_logs() -> Iterator[None]:
    children = tuple(name + "." for name in _AWS_LOGGERS)
    loggers = [logging.getLogger(name) for name in _AWS_LOGGERS]
    for name, logger in logging.root.manager.loggerDict.items():
        if isinstance(logger, logging.Logger) and name.startswith(children):
            loggers.append(logger)
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        if lg.getEffectiveLevel() < logging.INFO:
            lg.setLevel(logging.INFO)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _region(secret: str) -> str | None:
    parts = secret.split(":")  # arn:aws:secretsmanager:<region>:<account>:secret:<name>
    if len(parts) >= 7 and parts[0] == "arn" and parts[2] == "secretsmanager":
        return parts[3]
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")


def resolve_hf_token(env: MutableMapping[str, str] | None = None, client: Any = None) -> bool:
    """Set ``HF_TOKEN`` in ``env`` (default: this process's environment) from the secret that
    ``FASTUNER_HF_TOKEN_SECRET`` names, unless a token is set already. Returns whether a token is
    set now. Raises :class:`HubTokenError` if a secret is named but cannot be read."""
    env = os.environ if env is None else env
    if env.get(TOKEN_ENV):
        return True
    secret = (env.get(SECRET_ENV) or "").strip()
    if not secret:
        return False
    try:
        with _no_aws_debug_logs():
            if client is None:
                import boto3

                client = boto3.client("secretsmanager", region_name=_region(secret))
            answer = client.get_secret_value(SecretId=secret)
        raw = answer.get("SecretString")
        if raw is None:
            raw = bytes(answer.get("SecretBinary") or b"").decode("utf-8")
        token = token_from_secret(raw)
    except HubTokenError as exc:
        raise HubTokenError(f"the Hugging Face token secret {secret}: {exc}") from None
    except Exception as exc:  # boto errors name the secret and the cause, never its value
        cause = getattr(exc, "response", {}).get("Error", {}).get("Code") or type(exc).__name__
        raise HubTokenError(f"could not read the Hugging Face token from secret {secret}: {cause}") from None
    env[TOKEN_ENV] = token
    log.info("Hugging Face token read from secret %s", secret)
    return True


_resolved = False


def ensure_hf_token() -> None:
    """:func:`resolve_hf_token` once per process (before anything reaches the hub)."""
    global _resolved
    if not _resolved:
        resolve_hf_token()
        _resolved = True
