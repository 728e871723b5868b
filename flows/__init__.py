"""Prefect flows: one Lion round as a DAG (lion-round), a run of N rounds (lion-distill), the
evaluation of a student (lion-evaluate), Lion against its ablation arms (lion-ablate); and the
`lion` CLI."""

import os

# Idle OpenMP threads sleep instead of spinning: a run's process shares the cores with the
# trainer and servers it starts, and often with other runs, and spinning threads cost those
# many times their share (benchmarks/cpu_oversubscription.py). Read once, when torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
