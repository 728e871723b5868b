"""Where the GPU stages run: in the flow run itself, or as runs of a GPU-pool deployment."""

from __future__ import annotations

from pydantic import Field

from lion_core.config.base import OPERATIONAL, Section


class PlacementConfig(Section):
    """Where the GPU stages run. Empty: in the flow run itself (one machine, as `lion run`)."""

    gpu_deployment: str | None = Field(
        None,
        pattern=r"^[^/\s]+/[^/\s]+$",
        description="A Prefect deployment of the `lion-gpu-stage` flow ('flow/deployment', e.g. "
        "lion-gpu-stage/gpu-pool) on a GPU work pool. Set: training the student and the "
        "student's answers (Cache Pool, evaluation sets) run as flow runs of it, and this run "
        "(teacher, referee, generator, Parquet) only waits for them, on a CPU work pool; the "
        "results travel through the run's storage, so it must be shared (s3://). Empty: "
        "everything runs in this flow run.",
        json_schema_extra=OPERATIONAL,
    )
    poll_seconds: float = Field(
        5.0,
        gt=0,
        le=600,
        description="Seconds between two looks at a GPU-stage flow run this run waits for.",
        json_schema_extra=OPERATIONAL,
    )
