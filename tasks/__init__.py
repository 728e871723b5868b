"""Prefect tasks: thin wrappers over lion_core with cache policies and retries."""
