"""The ``fastuner`` command line and the Python SDK client."""
