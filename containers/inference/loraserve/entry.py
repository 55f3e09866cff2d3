"""``fastuner-serve`` / ``python -m loraserve.entry``: run the inference server (SageMaker ``serve``)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence


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


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # Imports after argument parsing, so that --help is instant.
    import uvicorn

    from loraserve.app import create_app
    from loraserve.config import ServerConfig, resolve_host, resolve_port
    from loraserve.engine import Engine
    from loraserve.logs import configure_logging, log_event

    level = (args.log_level or os.environ.get("FASTUNER_LOG_LEVEL") or "INFO").upper()
    configure_logging(level)
    try:
        config = ServerConfig.from_env()
        host, port = resolve_host(os.environ, args.host), resolve_port(os.environ, args.port)
    except ValueError as exc:
        log_event("config_invalid", 40, error=str(exc))
        print(f"fastuner-serve: {exc}", file=sys.stderr)
        return 2
    engine = Engine(config)
    app = create_app(engine=engine, exit_on_load_failure=True)
    log_event(
        "server_starting",
        host=host,
        port=port,
        base_model=config.base_model,
        adapter_source=engine.source.description,
        max_adapters=config.max_adapters,
    )
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_config=None,
        log_level=level.lower(),
        access_log=False,
        timeout_keep_alive=75,  # longer than the SageMaker/ALB idle timeout (60 s)
    )
    return 1 if engine.state == "failed" else 0


if __name__ == "__main__":
    sys.exit(main())
