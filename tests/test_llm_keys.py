"""`resolve_api_key`: the environment variable first, then the secret block through the caller's
loader, else MissingAPIKeyError (a variable was named) or None (a keyless endpoint)."""

from __future__ import annotations

import asyncio

import pytest

from lion_core.config import EndpointConfig
from lion_core.errors import LLMError, MissingAPIKeyError
from lion_core.llm import LLMClient, resolve_api_key

VAR = "LION_TEST_KEYS_VAR"
URL = "http://127.0.0.1:9/v1"


def secrets_of(blocks: dict[str, str]):
    """A secret loader over a dict, recording the blocks it was asked for."""
    asked: list[str] = []

    def load(name: str) -> str:
        asked.append(name)
        return blocks[name]

    return load, asked


def test_environment_variable_comes_first(monkeypatch):
    monkeypatch.setenv(VAR, "sk-from-env")
    endpoint = EndpointConfig(base_url=URL, api_key_env=VAR, api_key_secret="block")
    load, asked = secrets_of({"block": "sk-from-block"})
    assert resolve_api_key(endpoint, "teacher", secret_loader=load) == "sk-from-env"
    assert asked == []


def test_secret_block_when_the_variable_is_unset_or_not_named(monkeypatch):
    monkeypatch.delenv(VAR, raising=False)
    load, asked = secrets_of({"block": "sk-from-block"})
    for endpoint in (
        EndpointConfig(base_url=URL, api_key_env=VAR, api_key_secret="block"),
        EndpointConfig(base_url=URL, api_key_secret="block"),
    ):
        assert resolve_api_key(endpoint, "referee", secret_loader=load) == "sk-from-block"
    assert asked == ["block", "block"]


def test_missing_variable_and_keyless(monkeypatch):
    monkeypatch.delenv(VAR, raising=False)
    named = EndpointConfig(base_url=URL, api_key_env=VAR)
    with pytest.raises(MissingAPIKeyError, match=rf"{VAR}.*generator\.api_key_env"):
        resolve_api_key(named, "generator")
    assert resolve_api_key(EndpointConfig(base_url=URL), "generator") is None
    # A block is named but nobody can load it (outside Prefect): no key, as before.
    assert resolve_api_key(EndpointConfig(base_url=URL, api_key_secret="block"), "x") is None


def test_a_failing_loader_names_the_field_and_block_not_the_key(monkeypatch):
    monkeypatch.delenv(VAR, raising=False)
    endpoint = EndpointConfig(base_url=URL, api_key_secret="no-such-block")
    load, _ = secrets_of({})
    with pytest.raises(LLMError, match=r"referee\.api_key_secret.*'no-such-block'") as info:
        resolve_api_key(endpoint, "referee", secret_loader=load)
    assert info.value.__cause__ is None


def test_client_resolves_its_key_the_same_way(monkeypatch):
    monkeypatch.setenv(VAR, "sk-client-env")
    endpoint = EndpointConfig(base_url=URL)
    clients = [
        LLMClient(EndpointConfig(base_url=URL, api_key_env=VAR), role="teacher", cache=None),
        LLMClient(endpoint, role="teacher", cache=None),
        LLMClient(endpoint, role="teacher", cache=None, api_key="sk-passed"),
    ]

    async def keys() -> list[str]:
        out = []
        for client in clients:
            async with client.open_api(1) as api:  # the SDK client the requests go through
                out.append(api.api_key)
        return out

    assert asyncio.run(keys()) == ["sk-client-env", "no-key-needed", "sk-passed"]
