"""Prefect flows: one Lion round as a DAG (lion-round), a run of N rounds (lion-distill), the
evaluation of a student (lion-evaluate), Lion against its ablation arms (lion-ablate); and the
`lion` CLI."""
