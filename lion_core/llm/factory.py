"""One factory for every `LLMClient` of a run, so that every client of a role is built alike.

`client_for(config, role)` gives the role's client with:

- the response cache on `storage.shared_llm_cache` when set (the arms of `lion ablate` share
  one), else under the run's root (`cache_storage`);
- the config's `pricing`, and the run's `budget_usd` checked against what that cache says was
  spent (`costs.Budget`): on a shared cache, what this run paid for (every answer records the
  run root that paid for it, `paid_by`), so each arm of an ablation has its own budget;
- the role's endpoint, pointed at the running offline world when its base_url is 'offline',
  and its API key (`resolve_api_key`; a Prefect Secret block through `secret_loader`);
- the progress callbacks passed in.

Options cover the clients that differ: the served student (its own endpoint, cache folder and
key, priced free and outside the budget: our own server), and `lion referee-check --no-cache`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from lion_core.config import EndpointConfig, LionConfig, ModelPrice
from lion_core.errors import LLMError
from lion_core.llm.cache import ResponseCache
from lion_core.llm.client import LLMClient
from lion_core.llm.costs import Budget
from lion_core.llm.keys import resolve_api_key
from lion_core.llm.sending import BatchProgressCallback, ProgressCallback
from lion_core.run.lease import held_guard
from lion_core.run.storage import Storage


def cache_storage(config: LionConfig) -> Storage:
    """Where the run's response cache lives: `storage.shared_llm_cache`, else the run's root."""
    shared = config.storage.shared_llm_cache
    return Storage(shared or config.storage.root, config.storage.options)


def client_for(
    config: LionConfig,
    role: str,
    *,
    offline_url: str | None = None,
    endpoint: EndpointConfig | None = None,
    cache: bool = True,
    storage: Storage | None = None,
    api_key: str | None = None,
    secret_loader: Callable[[str], str] | None = None,
    pricing: Mapping[str, ModelPrice] | None = None,
    budget: bool = True,
    on_progress: ProgressCallback | None = None,
    on_batch_progress: BatchProgressCallback | None = None,
    extra_body: Mapping[str, Any] | None = None,
    key_scope: Mapping[str, Any] | None = None,
    allow_empty: bool = False,
    gone: Callable[[], str | None] | None = None,
) -> LLMClient:
    """The client of `role` in the run `config` describes.

    `offline_url`: the running offline world, for an endpoint whose base_url is 'offline'
    (`LLMError` without one). `endpoint`: instead of the config's endpoint of `role` (a role
    the config has no endpoint for, e.g. the served student). `cache=False`: no response cache;
    `storage`: the cache elsewhere than `cache_storage(config)`. `api_key`: instead of the
    endpoint's own (`api_key_env`, else `api_key_secret` through `secret_loader`). `pricing`:
    instead of the config's. `budget=False`: the client's calls are not checked against
    `budget_usd`. `extra_body`, `key_scope`, `allow_empty`, `gone`: as `LLMClient` takes them.
    """
    if endpoint is None:
        endpoints = config.endpoints()
        if role not in endpoints:
            raise LLMError(
                f"{role}: the config has no endpoint for this role (one of "
                f"{', '.join(endpoints)}); pass its endpoint"
            )
        endpoint = endpoints[role]
    if endpoint.is_offline and not offline_url:
        raise LLMError(f"{role}.base_url is 'offline' but no offline world is running")
    where = storage if storage is not None else cache_storage(config)
    payer = Storage(config.storage.root, config.storage.options).uri()
    shared = where.uri() != payer
    if api_key is None:
        api_key = resolve_api_key(endpoint, role, secret_loader=secret_loader)
    return LLMClient(
        endpoint,
        role=role,
        cache=ResponseCache(where, role, payer=payer) if cache else None,
        base_url=offline_url if endpoint.is_offline else None,
        api_key=api_key,
        pricing=config.pricing if pricing is None else pricing,
        budget=(
            Budget(config.budget_usd, where, payer if shared else None)
            if budget and config.budget_usd
            else None
        ),
        on_batch_progress=on_batch_progress,
        on_progress=on_progress,
        extra_body=extra_body,
        key_scope=key_scope,
        allow_empty=allow_empty,
        gone=_with_lease(gone),
    )


def _with_lease(gone: Callable[[], str | None] | None) -> Callable[[], str | None] | None:
    """`gone`, and before it the lease check of the run this client works for (the leases
    held where the client is made): a run that lost its root's lease sends no more requests
    (LeaseLostError; the answers in flight finish into the cache)."""
    guard = held_guard()
    if guard is None:
        return gone

    def check() -> str | None:
        guard()
        return gone() if gone is not None else None

    return check
