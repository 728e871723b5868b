"""API keys at run time: a role's environment variable, else its Prefect Secret block."""

from __future__ import annotations

from lion_core.config import LionConfig
from lion_core.llm.keys import resolve_api_key


def api_key(config: LionConfig, role: str) -> str | None:
    """`role`'s API key: its environment variable, else its Prefect Secret block, else None."""
    return resolve_api_key(config.endpoints()[role], role, secret_loader=secret_value)


def secret_value(name: str) -> str:
    """The value of Prefect Secret block `name` (endpoints' `api_key_secret`)."""
    from prefect.blocks.system import Secret

    return Secret.load(name).get()
