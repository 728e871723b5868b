"""Where a run's data lives (a folder or s3://), the shared response cache, the root's lease."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field, field_validator, model_validator

from lion_core.config.base import OPERATIONAL, Section


class StorageConfig(Section):
    root: str = Field(
        "lion-runs/default",
        description="The run's root: a local folder, or s3://bucket/prefix (any S3-compatible "
        "store). Pools, caches, checkpoints and task results all live under it.",
    )
    shared_llm_cache: str | None = Field(
        None,
        description="A response cache shared by several runs (a folder or s3:// URI), e.g. the "
        "arms of `lion ablate`: an identical request answered for one run is not paid again "
        "for another. Empty: the run's own llm_cache/.",
        json_schema_extra=OPERATIONAL,
    )
    options: dict[str, Any] = Field(
        default_factory=dict,
        description="fsspec/s3fs options, e.g. {endpoint_url: http://minio:9000}. Credentials "
        "come from the environment (AWS_ACCESS_KEY_ID, ...), never from here.",
        json_schema_extra=OPERATIONAL,
    )

    lease_timeout: float = Field(
        120.0,
        gt=0,
        description="Seconds without a heartbeat after which another run may take over the "
        "root's lease (lease.json) from a run that died; the hosts' clocks must agree to well "
        "within it. On the same host a lease whose process is gone is taken over at once.",
        json_schema_extra=OPERATIONAL,
    )
    lease_heartbeat: float = Field(
        15.0,
        gt=0,
        description="Seconds between two refreshes of the lease by the run holding it; at most "
        "a third of lease_timeout.",
        json_schema_extra=OPERATIONAL,
    )

    # Option names that carry a credential (s3fs, botocore, fsspec), at any depth: options are
    # recorded in run.json, so a secret here would be written to storage.
    SECRET_OPTION_KEYS: ClassVar[frozenset[str]] = frozenset(
        {
            "key",
            "secret",
            "token",
            "password",
            "access_key_id",
            "secret_access_key",
            "session_token",
            "aws_access_key_id",
            "aws_secret_access_key",
            "aws_session_token",
        }
    )

    @field_validator("root", "shared_llm_cache")
    @classmethod
    def _a_plain_location(cls, value: str | None) -> str | None:
        """A folder or one URL: fsspec reads `a::b` as a chain of file systems (`b`, then `a`
        inside it), so a root containing `::` would silently be written somewhere else."""
        if value is not None and "::" in value:
            raise ValueError(
                f"{value!r} contains '::', which fsspec reads as a chained URL (the run would be "
                "written to another place); use a folder or URL without '::'"
            )
        return value

    @field_validator("options")
    @classmethod
    def _no_credentials(cls, value: dict[str, Any]) -> dict[str, Any]:
        found: list[str] = []

        def walk(node: Any, path: str) -> None:
            if isinstance(node, dict):
                for key, child in node.items():
                    dotted = f"{path}.{key}"
                    if str(key).lower() in cls.SECRET_OPTION_KEYS:
                        found.append(dotted)
                    walk(child, dotted)
            elif isinstance(node, list | tuple):
                for i, child in enumerate(node):
                    walk(child, f"{path}[{i}]")

        walk(value, "storage.options")
        if found:
            raise ValueError(
                f"credentials must come from the environment (AWS_ACCESS_KEY_ID, ...), never from "
                f"the config, which is recorded in run.json: remove {', '.join(found)}"
            )
        return value

    @model_validator(mode="after")
    def _heartbeat_within_timeout(self) -> StorageConfig:
        if self.lease_heartbeat * 3 > self.lease_timeout:
            raise ValueError(
                f"lease_heartbeat ({self.lease_heartbeat:g} s) must be at most a third of "
                f"lease_timeout ({self.lease_timeout:g} s), or a live run's lease looks stale"
            )
        return self
