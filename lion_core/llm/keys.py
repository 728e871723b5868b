"""The API key of a role's endpoint: its environment variable, else its secret block, else none.

One function for every caller. lion_core never imports Prefect: a caller running under Prefect
passes `secret_loader` (a block name -> the secret's value), e.g.
`lambda name: Secret.load(name).get()`.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from lion_core.config import EndpointConfig
from lion_core.errors import LLMError, MissingAPIKeyError


def resolve_api_key(
    endpoint: EndpointConfig,
    role: str,
    *,
    secret_loader: Callable[[str], str] | None = None,
) -> str | None:
    """The key for `role`, or None for a keyless endpoint (vLLM, the offline world).

    1. the environment variable named by `endpoint.api_key_env`, when it is set and not empty;
    2. the secret block named by `endpoint.api_key_secret`, through `secret_loader` (a failing
       loader is an `LLMError` naming the field and the block, never showing the key);
    3. `MissingAPIKeyError` when `api_key_env` names a variable that is not set;
    4. None otherwise (also when a secret block is named but no loader was given).
    """
    name = endpoint.api_key_env
    if name:
        value = os.environ.get(name)
        if value:
            return value
    if endpoint.api_key_secret and secret_loader is not None:
        try:
            value = secret_loader(endpoint.api_key_secret)
        except Exception as exc:
            raise LLMError(
                f"{role}.api_key_secret: cannot load secret block "
                f"{endpoint.api_key_secret!r}: {exc}"
            ) from None
        if value:
            return value
    if name:
        raise MissingAPIKeyError(
            f"{role}: the environment variable {name} (named by {role}.api_key_env) is not set; "
            f"export it with the API key for {endpoint.base_url}"
        )
    return None
