"""``fastuner-serve`` / ``python -m loraserve.entry``: run the inference server (SageMaker ``serve``)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from loraserve.config import ServerConfig


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="fastuner-serve",
        description="Serve a base causal LM and its LoRA adapters over the SageMaker inference contract.",
    )
    parser.add_argument(
        "command", nargs="?", choices=["serve"], help="ignored; SageMaker starts containers with 'serve'"
    )
    parser.add_argument("--host", default=None, help="listen address (env FASTUNER_HOST, default 0.0.0.0)")
    parser.add_argument(
        "--port",
        type=int,
        default=None,
        help="listen port (env SAGEMAKER_BIND_TO_PORT or PORT, default 8080)",
    )
    parser.add_argument("--log-level", default=None, help="env FASTUNER_LOG_LEVEL, default INFO")
    return parser.parse_args(argv)


def _fail(event: str, exc: Exception) -> int:
    """A start-up problem as a log event and one stderr line; exit status 2."""
    from loraserve.logs import log_event

    log_event(event, logging.ERROR, error=str(exc))
    print(f"fastuner-serve: {exc}", file=sys.stderr)
    return 2


def _settings(args: argparse.Namespace) -> tuple[ServerConfig, str, int]:
    """(config, host, port) from the environment and the flags; ValueError when invalid."""
    from loraserve.config import ServerConfig, resolve_host, resolve_port

    config = ServerConfig.from_env()
    return config, resolve_host(os.environ, args.host), resolve_port(os.environ, args.port)


def _serve(config: ServerConfig, host: str, port: int, level: str) -> int:
    """Run uvicorn until it stops; 1 when the base model could not be loaded."""
    import uvicorn

    from loraserve.app import create_app
    from loraserve.engine import Engine
    from loraserve.logs import log_event, quiet_transformers

    quiet_transformers()
    engine = Engine(config)
    server: uvicorn.Server | None = None

    def stop_server() -> None:
        # The base model could not be loaded: stop serving so the container exits non-zero.
        if server is not None:
            server.should_exit = True

    app = create_app(engine=engine, on_load_failure=stop_server)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=host,
            port=port,
            log_config=None,
            log_level=level.lower(),
            access_log=False,
            timeout_keep_alive=75,  # longer than the SageMaker/ALB idle timeout (60 s)
        )
    )
    log_event(
        "server_starting",
        host=host,
        port=port,
        base_model=config.base_model,
        adapter_source=engine.source.description,
        max_adapters=config.max_adapters,
        device=str(engine.device),
    )
    server.run()
    return 1 if engine.state == "failed" else 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # Light imports first: a bad configuration fails in well under a second, before torch loads.
    from loraserve.logs import configure_logging

    level = (args.log_level or os.environ.get("FASTUNER_LOG_LEVEL") or "INFO").upper()
    configure_logging(level)
    try:
        config, host, port = _settings(args)
    except ValueError as exc:
        return _fail("config_invalid", exc)

    from loraserve.hub_token import HubTokenError, resolve_hf_token

    try:  # a gated hub model needs the token: FASTUNER_HF_TOKEN_SECRET names its secret
        resolve_hf_token()
    except HubTokenError as exc:
        return _fail("hf_token_unavailable", exc)
    return _serve(config, host, port, level)


if __name__ == "__main__":
    sys.exit(main())
