"""Compute backends: where training jobs (and, later, endpoints) run."""
