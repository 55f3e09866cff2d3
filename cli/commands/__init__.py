"""Command groups of the ``fastuner`` CLI."""
