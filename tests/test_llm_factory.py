"""`client_for` builds every client of a run alike (cache, prices, budget, endpoint, key), and
`offline_world` starts the offline world only for the roles that name it."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from lion_core.config import EndpointConfig, LionConfig, ModelPrice
from lion_core.errors import LLMError, MissingAPIKeyError
from lion_core.llm.factory import cache_storage, client_for
from lion_core.offline.running import offline_world

HTTP = "http://127.0.0.1:9/v1"  # never asked: these tests send nothing


def test_clients_share_the_runs_cache_prices_and_budget(tmp_path):
    cfg = LionConfig().with_overrides(
        {"storage.root": str(tmp_path / "arm"), "storage.shared_llm_cache": str(tmp_path / "abl"),
         "budget_usd": 2.5, "referee.base_url": HTTP,
         "pricing": {"offline-": {"input": 3.0, "output": 4.0}}}
    )  # fmt: skip
    referee = client_for(cfg, "referee")
    assert referee.cache is not None and referee.cache.uri == f"{tmp_path}/abl/llm_cache/referee"
    assert referee.budget is not None and referee.budget.limit == 2.5
    assert referee.budget.storage.uri() == cache_storage(cfg).uri() == str(tmp_path / "abl")
    assert referee.price == ModelPrice(input=3.0, output=4.0)
    assert referee.base_url == HTTP
    # without a shared cache: the run's own root
    own = cfg.with_overrides({"storage.shared_llm_cache": None})
    assert client_for(own, "judge").cache.uri == f"{tmp_path}/arm/llm_cache/judge"
    # an 'offline' endpoint needs the running world
    with pytest.raises(LLMError, match=r"teacher\.base_url is 'offline'"):
        client_for(cfg, "teacher")
    assert client_for(cfg, "teacher", offline_url=HTTP).base_url == HTTP
    assert client_for(cfg, "teacher", offline_url=HTTP, cache=False).cache is None


def test_options_for_a_client_outside_the_config(tmp_path, monkeypatch):
    cfg = LionConfig().with_overrides({"storage.root": str(tmp_path / "run"), "budget_usd": 1.0})
    with pytest.raises(LLMError, match="no endpoint for this role"):
        client_for(cfg, "student")
    served = EndpointConfig(base_url=HTTP, model="student")
    elsewhere = cache_storage(cfg.with_overrides({"storage.root": str(tmp_path / "other")}))
    client = client_for(
        cfg, "student", endpoint=served, storage=elsewhere, api_key="k",
        pricing={"student": ModelPrice(input=0, output=0)}, budget=False, allow_empty=True,
    )  # fmt: skip
    assert client.budget is None and client.allow_empty and client.model == "student"
    assert client.cache.uri == f"{tmp_path}/other/llm_cache/student"
    # the key: the endpoint's variable, or a Prefect Secret block through the loader
    keyed = cfg.with_overrides({"referee.base_url": HTTP, "referee.api_key_env": "LION_T_KEY"})
    monkeypatch.delenv("LION_T_KEY", raising=False)
    with pytest.raises(MissingAPIKeyError, match="LION_T_KEY"):
        client_for(keyed, "referee")
    secret = keyed.with_overrides({"referee.api_key_env": None, "referee.api_key_secret": "blk"})
    loaded = client_for(secret, "referee", secret_loader={"blk": "sk-from-block"}.__getitem__)

    async def key() -> str:
        async with loaded.open_api(1) as api:  # the SDK client the requests go through
            return api.api_key

    assert asyncio.run(key()) == "sk-from-block"


def test_offline_world_starts_only_for_the_roles_that_name_it():
    cfg = LionConfig().with_overrides({"teacher.base_url": HTTP})
    with offline_world(cfg, roles=("teacher",)) as url:
        assert url is None  # the teacher is http: nothing started
    with offline_world(cfg, "http://already.running/v1") as url:
        assert url == "http://already.running/v1"
    with offline_world(cfg, roles=("teacher", "referee")) as url:
        assert url is not None
        models = httpx.get(f"{url}/models", timeout=10).json()["data"]
        assert models
    with pytest.raises(httpx.TransportError):  # gone with the block
        httpx.get(f"{url}/models", timeout=2)
