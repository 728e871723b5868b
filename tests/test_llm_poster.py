"""`Poster` (lion_core/llm/poster.py) sends what the SDK's `AsyncOpenAI.post` sends and raises
what it raises: checked side by side against a loopback server that records every request, for
answers, error statuses, a closed port and a timeout, a compressed answer and a redirect, each
way `Poster` can send: straight to the aiohttp session, through httpx2, and the SDK's own
path forced."""

from __future__ import annotations

import asyncio
import gzip
import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx2
import openai
import pytest
from multidict import CIMultiDict, CIMultiDictProxy
from openai.types.chat import ChatCompletion

from lion_core.llm.client import _http_client
from lion_core.llm.poster import Answer, Poster

BODY = {
    "model": "m",
    "messages": [{"role": "user", "content": 'héllo \u2028 "quoted" 🦁'}],
    "temperature": 0.7,
    "top_p": 1.0,
    "max_tokens": 16,
}
COMPLETION = {
    "id": "x",
    "object": "chat.completion",
    "created": 0,
    "model": "m",
    "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}
    ],
    "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
}


@contextmanager
def recording_server(
    status: int,
    body: dict[str, Any],
    headers: dict[str, str] | list[tuple[str, str]] | None = None,
    delay: float = 0,
    *,
    gzipped: bool = False,
    moved: dict[str, str] | None = None,
    reason: str | None = None,
) -> Iterator[tuple[str, list[tuple[str, dict[str, str], bytes]]]]:
    """A loopback server answering every POST with `status` and `body` (JSON, gzipped if
    asked; `headers` as a list may repeat a name) after `delay` seconds, or a POST to a path
    in `moved` with a 307 to its new path; yields its base URL and the (path, headers, body)
    of each request."""
    seen: list[tuple[str, dict[str, str], bytes]] = []
    payload = json.dumps(body).encode()
    if gzipped:
        payload = gzip.compress(payload)
    extra = list(headers.items()) if isinstance(headers, dict) else list(headers or [])

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            content = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            seen.append((self.path, {k.lower(): v for k, v in self.headers.items()}, content))
            if moved and self.path in moved:
                self.send_response(307)
                self.send_header("Location", moved[self.path])
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            time.sleep(delay)
            self.send_response(status, reason)
            if gzipped:
                self.send_header("Content-Encoding", "gzip")
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            for name, value in extra:
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/v1", seen
    finally:
        httpd.shutdown()
        httpd.server_close()


def _sdk(
    base_url: str, timeout: float = 30, http_timeout: float | None = None
) -> openai.AsyncOpenAI:
    """The SDK client as LLMClient.open_api builds it (`http_timeout`: its HTTP client's own
    default, if not the SDK's `timeout`)."""
    return openai.AsyncOpenAI(
        api_key="sk-test",
        base_url=base_url,
        max_retries=0,
        timeout=timeout,
        http_client=_http_client(4, http_timeout or timeout),
    )


WAYS = ("sdk", "direct", "httpx", "forced")  # post itself, then Poster's three ways


def _poster(api: openai.AsyncOpenAI, how: str) -> Poster:
    """A Poster sending `how`: "direct" (to the aiohttp session), "httpx" (through httpx2) or
    "forced" (through `post`)."""
    poster = Poster(api)
    assert poster.fast and poster.direct  # the installed SDK has what both need
    poster.direct = how == "direct"
    poster.fast = how != "forced"
    return poster


async def _both(
    base_url: str,
    path: str = "/chat/completions",
    timeout: float = 30,
    body: Any = BODY,
    http_timeout: float | None = None,
):
    """The outcome of the SDK's post, then of Poster each way (`WAYS`): each a (status, JSON
    body, response headers) or the exception raised."""
    outcomes = []
    for how in WAYS:
        async with _sdk(base_url, timeout, http_timeout) as api:
            poster = _poster(api, how)
            try:
                if how == "sdk":
                    raw = await api.post(
                        path,
                        body=body,
                        cast_to=ChatCompletion,
                        options={"headers": {"X-Stainless-Raw-Response": "true"}},
                    )
                    response = raw.http_response
                else:
                    response = await poster(path, body)
                outcomes.append((response.status_code, response.json(), response.headers))
            except openai.OpenAIError as exc:
                outcomes.append(exc)
    return outcomes


def test_the_poster_sends_the_sdks_request():
    with recording_server(200, COMPLETION, {"x-ratelimit-remaining-requests": "7"}) as (url, seen):
        outcomes = asyncio.run(_both(url))
    assert len(seen) == len(WAYS)
    # The SDK's marker asking it for the raw response goes out too; it is not ours to send.
    for _, headers, _ in seen:
        headers.pop("x-stainless-raw-response", None)
    (path, headers, content), *others = seen
    assert path == "/v1/chat/completions" and json.loads(content) == BODY
    for other in others:  # same path, same bytes, same headers (auth, SDK version, timeout...)
        assert other == (path, headers, content)
    assert headers["authorization"] == "Bearer sk-test"
    assert headers["user-agent"].startswith("AsyncOpenAI/Python")
    for outcome in outcomes:
        status, body, response_headers = outcome
        assert status == 200 and body == COMPLETION
        assert response_headers["x-ratelimit-remaining-requests"] == "7"


def test_the_poster_sends_completions_to_their_own_path():
    with recording_server(200, COMPLETION) as (url, seen):
        asyncio.run(_both(url, "/completions"))
    assert [path for path, _, _ in seen] == ["/v1/completions"] * len(WAYS)


def test_the_direct_way_reads_a_plain_answer_itself_and_leaves_the_rest_to_httpx():
    async def post(url: str) -> Any:
        async with _sdk(url) as api:
            poster = _poster(api, "direct")
            return await poster("/chat/completions", BODY)

    with recording_server(200, COMPLETION) as (url, _):
        assert type(asyncio.run(post(url))) is Answer
    for kind in ({"gzipped": True}, {"headers": {"Set-Cookie": "a=b"}}):
        with recording_server(200, COMPLETION, **kind) as (url, _):
            assert type(asyncio.run(post(url))) is not Answer, kind  # httpx2's response


def test_the_poster_decodes_a_compressed_answer_and_fails_a_broken_one_alike():
    with recording_server(200, COMPLETION, gzipped=True) as (url, _):
        outcomes = asyncio.run(_both(url))
    assert all(status == 200 and body == COMPLETION for status, body, _ in outcomes), outcomes
    # says gzip, is not: the SDK's connection error (retried by the sender), every way
    for status in (200, 500):
        with recording_server(status, COMPLETION, {"Content-Encoding": "gzip"}) as (url, _):
            outcomes = asyncio.run(_both(url))
        assert [type(e) for e in outcomes] == [openai.APIConnectionError] * len(WAYS), outcomes


def test_the_poster_joins_repeated_headers_as_httpx_does():
    repeated = [("x-ratelimit-remaining-requests", "5"), ("x-ratelimit-remaining-requests", "3")]
    with recording_server(200, COMPLETION, repeated) as (url, _):
        outcomes = asyncio.run(_both(url))
    assert [h.get("x-ratelimit-remaining-requests") for _, _, h in outcomes] == ["5, 3"] * 4


def test_the_poster_follows_a_redirect_once_and_fails_other_3xx_alike():
    old, new = "/v1/chat/completions", "/v2/chat/completions"
    with recording_server(200, COMPLETION, moved={old: new}) as (url, seen):
        outcomes = asyncio.run(_both(url))
        assert all(status == 200 and body == COMPLETION for status, body, _ in outcomes)
        assert [path for path, _, _ in seen] == [old, new] * len(WAYS)  # no body sent twice
        assert len({content for _, _, content in seen}) == 1  # the body goes along
        seen.clear()
        asyncio.run(_twice(url, [BODY, BODY], "direct"))  # then httpx2 sends the path's bodies
    assert [path for path, _, _ in seen] == [old, new, old, new]
    with recording_server(200, COMPLETION, delay=1.5, moved={old: new}) as (url, seen):
        # the followed request keeps the SDK's timeout, not the HTTP client's default
        outcomes = asyncio.run(_both(url, timeout=0.3, http_timeout=30))
    assert [type(e) for e in outcomes] == [openai.APITimeoutError] * len(WAYS), outcomes
    with recording_server(300, {"error": {"message": "pick one"}}) as (url, seen):
        outcomes = asyncio.run(_both(url))
    assert [type(e) for e in outcomes] == [openai.APIStatusError] * len(WAYS), outcomes
    assert {e.status_code for e in outcomes} == {300} and len(seen) == len(WAYS)


def test_the_poster_leaves_a_proxied_url_to_httpx(monkeypatch):
    """A proxy from the environment covers the URL: the body goes through httpx2, which sends
    it to the proxy (here a closed port: the SDK's connection error), never straight there."""
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{closed.getsockname()[1]}")
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)

        async def post(url: str) -> Poster:
            async with _sdk(url) as api:
                poster = Poster(api)
                with pytest.raises(openai.APIConnectionError):
                    await poster("/chat/completions", BODY)
                return poster

        with recording_server(200, COMPLETION) as (url, seen):
            poster = asyncio.run(post(url))
    assert seen == [] and poster.direct
    assert poster._templates["/chat/completions"].direct is None


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (400, openai.BadRequestError),
        (401, openai.AuthenticationError),
        (404, openai.NotFoundError),
        (429, openai.RateLimitError),
        (500, openai.InternalServerError),
        (503, openai.InternalServerError),
    ],
)
def test_the_poster_raises_the_sdks_status_errors(status, error):
    answer = {"error": {"message": f"nope {status}", "type": "x", "code": None}}
    headers = {"retry-after-ms": "1500"}
    with recording_server(status, answer, headers, reason="Slow Down") as (url, _):
        outcomes = asyncio.run(_both(url))
    for exc in outcomes:
        assert type(exc) is error, outcomes
        assert exc.status_code == status and exc.body == answer["error"]
        assert exc.message == outcomes[0].message
        assert exc.response.headers["retry-after-ms"] == "1500"
        assert exc.response.reason_phrase == "Slow Down"


async def _twice(base_url: str, bodies: list[dict[str, Any]], how: str) -> None:
    """POST `bodies` in turn through one Poster sending `how` (its template reused) or through
    the SDK ("sdk")."""
    async with _sdk(base_url) as api:
        poster = _poster(api, how) if how != "sdk" else None
        for body in bodies:
            if poster is not None:
                await poster("/chat/completions", body)
            else:
                await api.post("/chat/completions", body=body, cast_to=ChatCompletion)


def test_one_poster_sends_many_bodies_with_the_sdks_headers_and_cookies():
    """The template is built once and reused: bodies of other sizes get their own length, and a
    cookie the endpoint set (a load balancer's sticky session) goes back as the SDK sends it."""
    longer = {**BODY, "messages": [{"role": "user", "content": "x" * 5000}], "max_tokens": 1}
    bodies = [BODY, longer, BODY]
    with recording_server(200, COMPLETION, {"Set-Cookie": "sticky=abc; Path=/"}) as (url, seen):
        for how in WAYS:  # a client each: a cookie jar each
            asyncio.run(_twice(url, bodies, how))
    for _, headers, _ in seen:  # the forced way's marker asking for the raw response
        headers.pop("x-stainless-raw-response", None)
    sdk = seen[:3]
    for k in range(1, len(WAYS)):
        way = seen[3 * k : 3 * k + 3]
        assert [json.loads(content) for _, _, content in way] == bodies
        for (_, sdk_headers, sdk_content), (_, headers, content) in zip(sdk, way, strict=True):
            assert content == sdk_content and headers == sdk_headers
            assert headers["content-length"] == str(len(content))
        assert "cookie" not in way[0][1]
        assert way[1][1]["cookie"] == way[2][1]["cookie"] == "sticky=abc"


def test_the_poster_raises_the_sdks_connection_and_timeout_errors():
    with socket.socket() as bound:  # bound, never listening: every connection is refused
        bound.bind(("127.0.0.1", 0))
        outcomes = asyncio.run(_both(f"http://127.0.0.1:{bound.getsockname()[1]}/v1"))
    # (the SDK's aiohttp transport reports a refused connection as a timeout: the same class
    # whichever path raised it, an APIConnectionError either way)
    assert len({type(e) for e in outcomes}) == 1, outcomes
    assert isinstance(outcomes[0], openai.APIConnectionError), outcomes
    with recording_server(200, COMPLETION, delay=1.5) as (url, _):
        outcomes = asyncio.run(_both(url, timeout=0.3))
    assert [type(e) for e in outcomes] == [openai.APITimeoutError] * len(WAYS), outcomes


@pytest.mark.parametrize(
    "content_type",
    [
        "application/json",
        "text/plain; charset=latin-1",
        "text/plain; charset = latin-1",
        "text/plain; Charset='latin-1'",
        'text/plain; charset="utf-8"',
        "text/plain; charset=no-such-codec",
    ],
)
def test_a_direct_answer_reads_its_text_as_httpx_does(content_type):
    body = "héllo 🦁".encode("latin-1", errors="ignore") + b" \xff"
    headers = CIMultiDict({"Content-Type": content_type})
    httpx_text = httpx2.Response(200, headers={"content-type": content_type}, content=body).text
    assert Answer(200, CIMultiDictProxy(headers), body).text == httpx_text


def test_a_closed_client_or_httpx2_auth_and_hooks_keep_the_httpx_way():
    async def closed(url: str) -> None:
        async with _sdk(url) as api:
            poster = Poster(api)
        await poster("/chat/completions", BODY)  # after the client closed

    with (
        recording_server(200, COMPLETION) as (url, seen),
        pytest.raises(RuntimeError, match="closed"),
    ):
        asyncio.run(closed(url))
    assert seen == []
    base_url = "http://127.0.0.1:9/v1"
    hooked = _http_client(4, 30)
    hooked.event_hooks = {"request": [lambda request: None], "response": []}
    authed = _http_client(4, 30)
    authed.auth = ("user", "secret")
    plain = openai.AsyncOpenAI(
        api_key="sk-test", base_url=base_url, http_client=_http_client(4, 30)
    )
    assert Poster(plain).direct
    for http in (hooked, authed):
        api = openai.AsyncOpenAI(api_key="sk-test", base_url=base_url, http_client=http)
        poster = Poster(api)
        assert poster.fast and not poster.direct


def test_clients_that_build_requests_per_request_use_the_sdks_path():
    base_url = "http://127.0.0.1:9/v1"
    assert Poster(openai.AsyncOpenAI(api_key="sk-test", base_url=base_url)).fast

    async def key() -> str:  # an API-key provider: a token refreshed per request
        return "sk-fresh"

    assert not Poster(openai.AsyncOpenAI(api_key=key, base_url=base_url)).fast
    api = openai.AsyncOpenAI(api_key="sk-test", base_url=base_url)
    api._idempotency_header = "Idempotency-Key"  # a key per request: no shared headers
    assert not Poster(api).fast
    # Azure's URL holds the deployment, taken from each body's model
    azure = openai.AsyncAzureOpenAI(
        api_key="k", api_version="2024-06-01", azure_endpoint="https://x.openai.azure.com"
    )
    assert not Poster(azure).fast
