"""Prefect flows that run the DVC pipeline, and the `lifecycle` command line."""
