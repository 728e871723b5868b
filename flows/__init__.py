"""Prefect flows: one Lion round as a DAG, a run of N rounds, evaluation; and the `lion` CLI."""
