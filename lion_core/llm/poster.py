"""`Poster`: POST a JSON body to an OpenAI-compatible endpoint the way the official SDK's
`AsyncOpenAI.post` does, at a third of its CPU per request.

The SDK builds every request from scratch: it copies and validates its options, merges headers,
query and URL, encodes the body and builds an HTTP request, ~1 ms of CPU per request before a
byte is sent (docs/llm-client.md, "CPU per request"). A call's requests differ only in their
bodies, so `Poster` lets the SDK build the first request of each path (auth, user agent, its
platform and timeout headers, the URL) and sends every body with those headers through the
SDK's own HTTP client. A 2xx answer is returned (status, headers, body); any other status raises
the SDK's status error (`APIStatusError` and its subclasses), a timeout its `APITimeoutError`, a
failed connection its `APIConnectionError`: the same exceptions, from the same classes, as `post`.

Where the SDK's HTTP client is its aiohttp transport (what `LLMClient` opens when the `aiohttp`
extra is installed) and no proxy applies to the URL, the body goes straight to that transport's
aiohttp session, with the same headers and timeouts, skipping httpx2's request and response
objects (a third of the client's CPU per request at concurrency 256): the same connections,
bytes on the wire and exceptions. A redirect, or a compressed body, is handed to httpx2 as the
SDK would handle it (a redirect's chain is then counted from its second hop: one more than
`max_redirects` in all, and `response.history` lacks the first).

This reaches into the SDK's request builder (private names). Where they are missing (another
SDK version) or would not apply (a subclass such as `AsyncAzureOpenAI`, whose URL depends on
the body; a client with custom auth, idempotency keys or an API-key provider), `Poster` uses
`AsyncOpenAI.post` itself. Cookies the endpoint set are added to each request, as the SDK's
request builder adds them.
"""

from __future__ import annotations

import json
from typing import Any, NamedTuple

import openai
from openai._constants import RAW_RESPONSE_HEADER
from openai.types import Completion
from openai.types.chat import ChatCompletion

try:  # the SDK's aiohttp transport (the `aiohttp` extra)
    import aiohttp
    from openai._vendor.httpx_aiohttp import transport as _aio
except ImportError:  # pragma: no cover - another SDK version, or no aiohttp
    _aio = None  # type: ignore[assignment]

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


class Answer(NamedTuple):
    """A 2xx answer read straight from aiohttp: what callers read of httpx's `Response`."""

    status_code: int
    headers: Any  # aiohttp's case-insensitive multidict
    content: bytes

    @property
    def text(self) -> str:
        charset = "utf-8"
        for part in self.headers.get("content-type", "").split(";")[1:]:
            name, _, value = part.partition("=")
            if name.strip().lower() == "charset" and value.strip():
                charset = value.strip().strip("'\"")
        try:
            return self.content.decode(charset, errors="replace")
        except LookupError:  # a charset Python does not know
            return self.content.decode("utf-8", errors="replace")

    def json(self) -> Any:
        return json.loads(self.content)


class _Direct(NamedTuple):
    """What a POST to one path needs, beyond its template, to go through the aiohttp session
    itself."""

    url: str
    timeout: Any  # aiohttp.ClientTimeout: the template's httpx2 timeout, as the transport maps it
    server_hostname: str | None


class _Template(NamedTuple):
    """What the SDK gives a POST to one path (built once per path), and the direct way's
    additions where it applies to the URL."""

    url: Any
    headers: dict[str, str]
    extensions: dict[str, Any]
    direct: _Direct | None


class Poster:
    """`await poster(path, body)` -> the HTTP response of POST `path` (a 2xx), or the SDK's
    exception. One per SDK client; `fast` says whether the SDK's internals were found,
    `direct` whether bodies go to the SDK transport's aiohttp session itself (to URLs that no
    proxy covers)."""

    def __init__(self, api: openai.AsyncOpenAI) -> None:
        self.api = api
        self._templates: dict[str, _Template] = {}
        self._aiohttp: Any = None  # the SDK's aiohttp transport
        self.direct = False
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
            transport = getattr(self._http, "_transport", None)
            if (
                self.fast
                and _aio is not None
                and type(transport) is getattr(_aio, "AiohttpTransport", None)
                and hasattr(_aio, "map_aiohttp_exceptions")
                and transport.proxy is None
                and hasattr(self._http, "_transport_for_url")
                and hasattr(self._http, "_build_redirect_request")
                and self._http.auth is None  # httpx2's own auth and hooks would be skipped
                and not any(self._http.event_hooks.values())
            ):
                self._aiohttp, self.direct = transport, True

    async def __call__(self, path: str, body: dict[str, Any]) -> Any:
        if not self.fast:
            cast = Completion if path == "/completions" else ChatCompletion
            raw = await self.api.post(path, body=body, cast_to=cast, options=_RAW)
            return raw.http_response
        template = self._templates.get(path) or await self._template(path)
        url, headers, extensions, direct = template
        if direct is not None and self.direct and not self._http.is_closed:
            answer = await self._direct(template, body)
            if not isinstance(answer, self._request_class):
                return answer
            # A redirect: httpx2 follows it from here, as the SDK does, and sends the path's
            # next bodies itself.
            self._templates[path] = template._replace(direct=None)
            request = answer
        else:
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

    async def _direct(self, template: _Template, body: dict[str, Any]) -> Any:
        """POST `body` through the aiohttp session of the SDK's transport: a 2xx `Answer` (or
        httpx2's response where httpx2 has work to do: a compressed body, cookies, repeated
        headers), the SDK's exception, or for a redirect the httpx2 request that follows it."""
        transport, direct = self._aiohttp, template.direct
        if not isinstance(transport.client, aiohttp.ClientSession):  # as the transport does
            transport.client = transport.get_client()
        headers = template.headers
        if self._http.cookies:  # the SDK client's jar, as it would add them
            probe = self._request_class("POST", direct.url)
            self._http.cookies.set_cookie_header(probe)
            if "cookie" in probe.headers:
                headers = {**headers, "cookie": probe.headers["cookie"]}
        content = encode_body(body)
        request = None
        try:
            with _aio.map_aiohttp_exceptions():
                async with transport.client.request(
                    "POST",
                    direct.url,
                    headers=headers,
                    data=content,
                    allow_redirects=False,
                    auto_decompress=False,
                    compress=False,
                    timeout=direct.timeout,
                    server_hostname=direct.server_hostname,
                ) as response:
                    received = await response.read()
            raw = response.raw_headers
            if (
                200 <= response.status < 300
                and "content-encoding" not in response.headers
                and "set-cookie" not in response.headers
                and len({name.lower() for name, _ in raw}) == len(raw)
            ):
                return Answer(response.status, response.headers, received)
            # What httpx2 makes of the rest: decoded (a broken body fails here, as there),
            # repeated headers joined, cookies into the SDK client's jar, redirects followed.
            request = self._request(template, headers, content)
            read = {"http_version": b"HTTP/1.1"}  # as the transport's response says
            if response.reason:
                read["reason_phrase"] = response.reason.encode()
            full = _aio.httpx.Response(
                response.status,
                headers=raw,
                content=received,
                request=request,
                extensions=read,
            )
            self._http.cookies.extract_cookies(full)
            if full.has_redirect_location and self._http.follow_redirects:
                return self._http._build_redirect_request(request, full)
        except self._timeouts as exc:
            request = request or self._request(template, headers, content)
            raise openai.APITimeoutError(request=request) from exc
        except self._failures as exc:
            request = request or self._request(template, headers, content)
            raise openai.APIConnectionError(request=request) from exc
        if not 200 <= full.status_code < 300:
            raise self._status_error(full)
        return full

    def _request(self, template: _Template, headers: dict[str, str], content: bytes) -> Any:
        """The httpx2 request `_direct` sent (for the SDK's errors, the cookie jar and a
        redirect, which keeps its timeout)."""
        return self._request_class(
            "POST", template.url, headers=headers, content=content, extensions=template.extensions
        )

    async def _template(self, path: str) -> _Template:
        """The URL, headers and request extensions (the timeout) the SDK gives a POST to
        `path`, built once through its own steps; and, where the direct way applies to the
        URL, what it sends."""
        options = self._options.construct(method="post", url=path, json_data={})
        options = await self._prepare_options(options)
        request = self._build(options)
        await self._prepare_request(request)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _PER_REQUEST}
        extensions = dict(request.extensions)
        direct = None
        if self.direct and self._http._transport_for_url(request.url) is self._aiohttp:
            # (not a proxy's transport, mounted for this URL from e.g. HTTPS_PROXY)
            timeout = extensions.get("timeout", {})
            direct = _Direct(
                str(request.url),
                aiohttp.ClientTimeout(
                    sock_connect=timeout.get("connect"),
                    sock_read=timeout.get("read"),
                    connect=timeout.get("pool"),
                ),
                extensions.get("sni_hostname"),
            )
        template = _Template(request.url, headers, extensions, direct)
        self._templates[path] = template
        return template
