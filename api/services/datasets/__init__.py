"""Datasets: streamed validation, dedup and split (pipeline) and their storage (service)."""
