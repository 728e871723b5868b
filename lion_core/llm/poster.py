"""`Poster`: POST a JSON body to an OpenAI-compatible endpoint the way the official SDK's
`AsyncOpenAI.post` does, at half its CPU per request.

The SDK builds every request from scratch: it copies and validates its options, merges headers,
query and URL, encodes the body and builds an HTTP request, ~1 ms of CPU per request before a
byte is sent (docs/llm-client.md, "CPU per request"). A call's requests differ only in their
bodies, so `Poster` lets the SDK build the first request of each path (auth, user agent, its
platform and timeout headers, the URL) and sends every body with those headers through the
SDK's own HTTP client. A 2xx answer is returned as is; any other status raises the SDK's status
error (`APIStatusError` and its subclasses), a timeout its `APITimeoutError`, a failed
connection its `APIConnectionError`: the same exceptions, from the same classes, as `post`.

This reaches into the SDK's request builder (private names). Where they are missing (another
SDK version) or would not apply (a subclass such as `AsyncAzureOpenAI`, whose URL depends on
the body; a client with custom auth, idempotency keys or an API-key provider), `Poster` uses
`AsyncOpenAI.post` itself. Cookies the endpoint set are added to each request, as the SDK's
request builder adds them.
"""

from __future__ import annotations

import json
from typing import Any

import openai
from openai._constants import RAW_RESPONSE_HEADER
from openai.types import Completion
from openai.types.chat import ChatCompletion

_RAW = {"headers": {RAW_RESPONSE_HEADER: "true"}}  # the SDK hands back headers with the body
_PER_REQUEST = ("content-length", "cookie")  # computed from each body; the client's cookie jar
# What makes the SDK change a request's headers per request (token refresh, signing,
# idempotency keys): with any of them set, every request goes through `post`.
_PER_REQUEST_AUTH = (
    "custom_auth",
    "_idempotency_header",
    "_api_key_provider",
    "_provider_runtime",
    "workload_identity",
)


def encode_body(body: dict[str, Any]) -> bytes:
    """A JSON body as the SDK's HTTP client encodes it (compact, UTF-8, no NaN)."""
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


class Poster:
    """`await poster(path, body)` -> the HTTP response of POST `path` (a 2xx), or the SDK's
    exception. One per SDK client; `fast` says whether the SDK's internals were found."""

    def __init__(self, api: openai.AsyncOpenAI) -> None:
        self.api = api
        self._templates: dict[str, tuple[Any, dict[str, str], dict[str, Any]]] = {}
        try:
            from openai._base_client import request_exceptions, timeout_exceptions
            from openai._models import FinalRequestOptions

            self._options = FinalRequestOptions
            self._timeouts = timeout_exceptions()
            self._failures = request_exceptions()
            self._http = api._client
            self._send = api._client.send
            self._status_error = api._make_status_error_from_response
            self._build = api._build_request
            self._prepare_options = api._prepare_options
            self._prepare_request = api._prepare_request
            self._request_class = type(self._build(self._options.construct(
                method="post", url="/chat/completions", json_data={}
            )))  # fmt: skip
        except (AttributeError, ImportError, TypeError):
            self.fast = False
        else:
            # Exactly the SDK's AsyncOpenAI: a subclass may build requests its own way.
            self.fast = type(api) is openai.AsyncOpenAI and not any(
                getattr(api, name, None) for name in _PER_REQUEST_AUTH
            )

    async def __call__(self, path: str, body: dict[str, Any]) -> Any:
        if not self.fast:
            cast = Completion if path == "/completions" else ChatCompletion
            raw = await self.api.post(path, body=body, cast_to=cast, options=_RAW)
            return raw.http_response
        url, headers, extensions = self._templates.get(path) or await self._template(path)
        request = self._request_class(
            "POST", url, headers=headers, content=encode_body(body), extensions=extensions
        )
        if self._http.cookies:  # e.g. a load balancer's sticky-session cookie
            self._http.cookies.set_cookie_header(request)
        try:
            response = await self._send(request)
        except openai.OpenAIError:
            raise
        except self._timeouts as exc:
            raise openai.APITimeoutError(request=request) from exc
        except self._failures as exc:
            raise openai.APIConnectionError(request=request) from exc
        if not 200 <= response.status_code < 300:
            raise self._status_error(response)
        return response

    async def _template(self, path: str) -> tuple[Any, dict[str, str], dict[str, Any]]:
        """The URL, headers and request extensions (the timeout) the SDK gives a POST to
        `path`, built once through its own steps."""
        options = self._options.construct(method="post", url=path, json_data={})
        options = await self._prepare_options(options)
        request = self._build(options)
        await self._prepare_request(request)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _PER_REQUEST}
        template = (request.url, headers, dict(request.extensions))
        self._templates[path] = template
        return template
