"""The server's routers: health and adapters (``health``), the SageMaker invocations (``invocations``)."""
