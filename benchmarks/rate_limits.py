"""Pacing under a provider's tokens-per-minute limit: LLMClient against the plain SDK.

The offline world runs in its own process (`lion serve-offline`) enforcing `--tpm` the way
OpenAI's limiter does (a minute's allowance that refills continuously; prompt characters / 4 +
max_tokens per request; 429 with x-ratelimit-* headers and Retry-After beyond it). Each side
gets a fresh world and sends distinct teacher requests for `--seconds`:

- LLMClient with no limit of its own configured: it learns the limit from the headers of its
  first answers and paces itself with a token bucket;
- the plain SDK way: `AsyncOpenAI.chat.completions.create` from `--concurrency` workers with the
  SDK's default retries (2, honouring Retry-After), i.e. retry-on-429.

After the first minute (the bucket starts full, so the first minute is a burst), it reports the
share of the allowed tokens used and the share of HTTP attempts refused with 429, from the
world's /stats. Targets: LLMClient >= 90% of the allowed tokens, < 1% refused.

    .venv/bin/python benchmarks/rate_limits.py                  # 150 s per side
    .venv/bin/python benchmarks/rate_limits.py --seconds 120 --tpm 40000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import openai

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script, from anywhere

from benchmarks.offline_world import serve_offline
from lion_core.config import TeacherConfig
from lion_core.llm import ChatRequest, LLMClient
from lion_core.llm.ratelimit import limiter_tokens
from lion_core.method.prompts import teacher_messages
from lion_core.offline.world import seed_instances

WARMUP = 60.0  # the first minute: the bucket's initial allowance is spent in a burst


def stats(base_url: str) -> dict:
    with urllib.request.urlopen(base_url.removesuffix("/v1") + "/stats") as r:
        return json.loads(r.read()).get("teacher", {})


def requests_forever(max_tokens: int) -> Iterator[ChatRequest]:
    """Distinct teacher requests (each its own sample, so no two bodies are equal)."""
    insts = seed_instances(500, seed=0, max_difficulty=6)
    k = 0
    while True:
        i = insts[k % len(insts)]
        yield ChatRequest.of(teacher_messages(i.instruction, i.input), sample=k + 1)
        k += 1


class Probe:
    """/stats when the first minute ends (a timer thread) and at the end."""

    def __init__(self, base_url: str, seconds: float) -> None:
        self.base_url, self.seconds = base_url, seconds
        self.start = time.monotonic()
        self.at_warmup: dict = {}
        self.warmup_time = self.start + WARMUP
        self.timer = threading.Timer(WARMUP, self._snapshot)
        self.timer.start()

    def _snapshot(self) -> None:
        self.at_warmup = stats(self.base_url)
        self.warmup_time = time.monotonic()

    def done(self) -> bool:
        return time.monotonic() - self.start >= self.seconds

    def result(self, tpm: int) -> dict[str, float]:
        self.timer.join()
        end, start = stats(self.base_url), self.at_warmup
        elapsed = time.monotonic() - self.warmup_time

        def delta(*path: str) -> float:
            a, b = end, start
            for p in path:
                a, b = a.get(p, {}) if isinstance(a, dict) else 0, b.get(p, {})
            return float(a or 0) - float(b or 0)

        attempts = delta("requests")
        refused = delta("status", "429")
        return {
            "used": delta("limited_tokens") / (tpm * elapsed / 60),
            "refused": refused / attempts if attempts else 0.0,
            "attempts": attempts,
            "answered": delta("status", "200"),
            "seconds": elapsed,
        }


def run_client(base_url: str, args: argparse.Namespace) -> dict[str, float]:
    cfg = TeacherConfig(max_tokens=args.max_tokens, concurrency=args.concurrency, retries=10)
    client = LLMClient(cfg, role="teacher", cache=None, base_url=base_url)
    probe, source = Probe(base_url, args.seconds), requests_forever(args.max_tokens)
    while not probe.done():
        client.run([next(source) for _ in range(args.chunk)])
    return probe.result(args.tpm)


def run_sdk(base_url: str, args: argparse.Namespace) -> dict[str, float]:
    probe, source = Probe(base_url, args.seconds), requests_forever(args.max_tokens)
    gave_up = 0

    async def main() -> None:
        nonlocal gave_up
        api = openai.AsyncOpenAI(base_url=base_url, api_key="x")  # default: 2 retries

        async def worker() -> None:
            nonlocal gave_up
            while not probe.done():
                req = next(source)
                try:
                    await api.chat.completions.create(
                        model="offline-teacher", messages=req.message_dicts(),
                        max_tokens=args.max_tokens, seed=req.sample,
                    )  # fmt: skip
                except openai.RateLimitError:
                    gave_up += 1

        async with api:
            await asyncio.gather(*(worker() for _ in range(args.concurrency)))

    asyncio.run(main())
    return {**probe.result(args.tpm), "gave_up": gave_up}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tpm", type=int, default=60_000)
    parser.add_argument("--seconds", type=float, default=150.0)
    parser.add_argument("--max-tokens", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--chunk", type=int, default=16, help="LLMClient: requests per run()")
    parser.add_argument("--only", choices=["client", "sdk"])
    args = parser.parse_args()
    sample = next(requests_forever(args.max_tokens))
    tokens = limiter_tokens({"messages": sample.message_dicts(), "max_tokens": args.max_tokens})
    print(
        f"TPM limit {args.tpm:,}; ~{tokens} tokens a request (~{args.tpm / tokens:.0f} requests "
        f"a minute); latency {args.latency}s, concurrency {args.concurrency}; measured from "
        f"{WARMUP:.0f}s to {args.seconds:.0f}s"
    )
    sides = {"LLMClient (paced)": run_client, "SDK retry-on-429": run_sdk}
    if args.only:
        sides = {k: v for k, v in sides.items() if (args.only == "sdk") == k.startswith("SDK")}
    for name, run in sides.items():
        with tempfile.TemporaryDirectory() as tmp:
            proc, base_url = serve_offline({"tpm": args.tpm, "latency": args.latency}, Path(tmp))
            try:
                r = run(base_url, args)
            finally:
                proc.terminate()
                proc.wait(timeout=10)
        extra = f", {r['gave_up']:.0f} gave up" if "gave_up" in r else ""
        print(
            f"{name:20s} used {r['used']:6.1%} of the allowed tokens, {r['refused']:6.2%} of "
            f"{r['attempts']:.0f} attempts refused (429), {r['answered']:.0f} answered{extra}"
        )


if __name__ == "__main__":
    main()
