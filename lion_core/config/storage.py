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
        description="fsspec/s3fs options, e.g. {endpoint_url: http://minio:9000}: endpoint, "
        "region, addressing style, timeouts, retries, server-side encryption (S3- or "
        "KMS-managed); any other option is refused, as it could carry a secret into run.json. "
        "Credentials come from the environment (AWS_ACCESS_KEY_ID, ...), never from here.",
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

    # The storage options lion accepts, by path (an allow-list: options are recorded in run.json,
    # so anything that might carry a secret is refused, whatever it is called). `None`: any
    # value; a dict: the names allowed below that key. Credentials come from the environment
    # (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_PROFILE) or, on a
    # worker, from a Prefect Secret exported into it.
    ALLOWED_OPTIONS: ClassVar[dict[str, Any]] = {
        # s3fs.S3FileSystem / fsspec
        "endpoint_url": None,
        "anon": None,
        "use_ssl": None,
        "requester_pays": None,
        "region_name": None,
        "profile": None,
        "default_block_size": None,
        "default_fill_cache": None,
        "default_cache_type": None,
        "version_aware": None,
        "cache_regions": None,
        "skip_instance_cache": None,
        "use_listings_cache": None,
        "listings_expiry_time": None,
        "max_concurrency": None,
        "fixed_upload_size": None,
        "auto_mkdir": None,
        "client_kwargs": {
            "region_name": None,
            "endpoint_url": None,
            "verify": None,
            "use_ssl": None,
            "api_version": None,
        },
        # botocore.config.Config
        "config_kwargs": {
            "region_name": None,
            "signature_version": None,
            "connect_timeout": None,
            "read_timeout": None,
            "max_pool_connections": None,
            "tcp_keepalive": None,
            "user_agent_extra": None,
            "request_checksum_calculation": None,
            "response_checksum_validation": None,
            "retries": {"max_attempts": None, "total_max_attempts": None, "mode": None},
            "s3": {
                "addressing_style": None,
                "use_accelerate_endpoint": None,
                "payload_signing_enabled": None,
                "us_east_1_regional_endpoint": None,
            },
        },
        # extra arguments of S3 calls: server-side encryption with S3- or KMS-managed keys
        # (an SSE-C customer key is a secret, so it is not accepted here)
        "s3_additional_kwargs": {
            "ServerSideEncryption": None,
            "SSEKMSKeyId": None,
            "BucketKeyEnabled": None,
            "ACL": None,
            "StorageClass": None,
            "RequestPayer": None,
            "ExpectedBucketOwner": None,
        },
    }

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
    def _known_options_only(cls, value: dict[str, Any]) -> dict[str, Any]:
        """Only ALLOWED_OPTIONS, and no URL with a user or password in it: the options are
        recorded in run.json (in the run's storage), so a secret here would be written out.
        The error names the option, never its value."""
        refused: list[str] = []

        def walk(node: Any, allowed: dict[str, Any] | None, path: str) -> None:
            if allowed is None:  # a leaf option: any value but a URL carrying credentials
                strings = [node] if isinstance(node, str) else []
                if any(
                    ("://" in s and "@" in s.split("://", 1)[1].split("/", 1)[0]) for s in strings
                ):
                    refused.append(f"{path} (a URL with credentials in it)")
                elif isinstance(node, dict | list | tuple):
                    refused.append(f"{path} (a structured value)")
                return
            if not isinstance(node, dict):
                refused.append(f"{path} (expected a mapping)")
                return
            for key, child in node.items():
                dotted = f"{path}.{key}"
                if key not in allowed:
                    refused.append(dotted)
                else:
                    walk(child, allowed[key], dotted)

        walk(value, cls.ALLOWED_OPTIONS, "storage.options")
        if refused:
            raise ValueError(
                f"credentials must come from the environment (AWS_ACCESS_KEY_ID, ...) or a Prefect "
                f"Secret, never from the config, which is recorded in run.json; only known "
                f"non-secret options are accepted (docs/configuration.md, storage.options): "
                f"remove {', '.join(refused)}"
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
