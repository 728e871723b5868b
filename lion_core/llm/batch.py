"""Batch mode: a role's uncached requests through the provider's Batch API, never paid twice.

`LLMClient.run` hands the requests the response cache cannot answer to `BatchSender` when the
endpoint's `mode` is "batch". It claims each key process-wide (a key another client of this
process is sending is waited for, not sent again) and runs the rest as one `BatchRun`:

1. **Adopt** what an earlier process submitted: every open submission recorded under
   `llm_batches/<role>/` (`layout.llm_batch`) that carries one of these requests is polled
   again, never submitted again. A submission recorded before its batch was created (the
   process died in between) is looked up at the provider by its id in the batch's metadata.
2. **Submit** the rest: JSONL lines (`custom_id` = the request's cache key, `body` = exactly
   the sync request's body) split by `batch.max_requests` and `batch.max_bytes`, uploaded with
   the Files API (`purpose="batch"`) and created as batches on `/v1/chat/completions` with a
   24 h window. Each submission is recorded before its batch is created and again, with the
   batch id, as the first thing after.
3. **Poll** with backoff (`batch.poll_seconds`, growing by half up to `batch.poll_max_seconds`),
   logging completed / failed / total from the batch's `request_counts` and telling
   `on_progress`, if given.
4. **Merge** each finished batch's output and error files into the response cache (every line,
   ok or failed, with its usage and cost at the batch price), flush, then mark the submission
   merged. Lines that failed or expired are resubmitted alone in a following batch, at most
   `batch.resubmits` times; then they are failed results.

Interrupted (asyncio cancellation, which is how Ctrl-C reaches `asyncio.run`, or
KeyboardInterrupt / SystemExit), it cancels its in-flight batches when
`batch.cancel_on_cancel` is on; the submissions stay open, so a resumed run collects the
lines the provider finished before the cancellation and resubmits only the others.
`cancel_open_batches` does the same from outside the process (e.g. a flow's cancellation hook).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import io
import json
import logging
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import openai

from lion_core.errors import BatchError, LLMError
from lion_core.llm.cache import SendAbandoned
from lion_core.llm.sending import (
    CACHED,
    JOINED,
    SENT,
    HasSendContext,
    SendContext,
    answer_fields,
    wait_for,
)
from lion_core.llm.types import ChatResult, RenderedRequest
from lion_core.run import layout

if TYPE_CHECKING:
    from lion_core.llm.cache import ResponseCache
    from lion_core.run.storage import Storage

log = logging.getLogger("lion_core.llm")

ENDPOINT = "/v1/chat/completions"
WINDOW = "24h"
TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})
OPEN, MERGED, ABANDONED = "open", "merged", "abandoned"
METADATA_KEY = "lion_submission"
LOG_INTERVAL = 10.0


@dataclass
class Submission:
    """One batch as recorded in the run's storage: enough to find it again and to know what it
    carries, whatever happens to the process that submitted it."""

    id: str  # ours; also in the batch's metadata
    role: str
    model: str
    keys: list[str]
    input_file_id: str
    batch_id: str | None = None
    attempt: int = 1  # 1: first submission of these keys; 2: their first resubmission, ...
    state: str = OPEN  # open | merged | abandoned
    status: str | None = None  # the provider's last status
    cancel_requested: bool = False
    created_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Submission:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


class Ledger:
    """The submissions of one role, one JSON file each under `llm_batches/<role>/`."""

    def __init__(self, storage: Storage, role: str) -> None:
        self.storage, self.role = storage, role

    def save(self, sub: Submission) -> None:
        self.storage.write_json(layout.llm_batch(self.role, sub.id), asdict(sub), overwrite=True)

    def all(self) -> list[Submission]:
        prefix = layout.llm_batches(self.role)
        self.storage.fs.invalidate_cache(self.storage.path(prefix))
        subs = []
        for name in self.storage.listdir(prefix):
            if name.endswith(".json"):
                subs.append(Submission.from_dict(self.storage.read_json(f"{prefix}/{name}")))
        return sorted(subs, key=lambda s: s.created_at)

    def open(self) -> list[Submission]:
        return [s for s in self.all() if s.state == OPEN]


@dataclass
class _Active:
    sub: Submission
    batch: Any = None  # the provider's last Batch object


class BatchSender:
    """`mode: batch`: a call's uncached requests through the provider's Batch API."""

    mode = "batch"

    async def send(self, jobs: Mapping[str, RenderedRequest], ctx: SendContext) -> None:
        """Claim the keys process-wide, send ours as batches, wait for the ones another
        client of this process is sending."""
        cache = ctx.cache
        if cache is None:
            raise LLMError(f"{ctx.role}: mode 'batch' needs a response cache to keep its batches")
        completion = next((j for j in jobs.values() if j.request.is_completion), None)
        if completion is not None:
            raise LLMError(
                f"{ctx.role}: mode 'batch' sends chat requests only; request "
                f"{completion.request.tag!r} is a completion (set {ctx.role}.mode: sync)"
            )
        todo = dict(jobs)
        while todo:
            mine: dict[str, RenderedRequest] = {}
            waits: dict[str, concurrent.futures.Future[ChatResult]] = {}
            for key, job in todo.items():
                claim = cache.claim(key)
                if claim.answer is not None:
                    ctx.deliver(key, claim.answer, CACHED)
                elif claim.pending is not None:
                    waits[key] = claim.pending
                else:
                    mine[key] = job
            todo = {}
            answers: dict[str, ChatResult] = {}
            try:
                if mine:
                    answers = await BatchRun(mine, ctx).run()
            finally:
                for key in mine:
                    cache.release(key, answers.get(key))
            for key in mine:
                result = answers.get(key)
                if result is None:  # cannot happen: every line is answered or failed
                    result = ChatResult(key=key, tag="", status="failed", error="no batch line")
                ctx.deliver(key, result, SENT)
            for key, pending in waits.items():
                try:
                    ctx.deliver(key, await wait_for(pending), JOINED)
                except SendAbandoned:
                    todo[key] = jobs[key]


class BatchRun:
    """One call's own requests in batch mode; `run()` returns key -> result for every job."""

    def __init__(self, jobs: Mapping[str, RenderedRequest], ctx: SendContext) -> None:
        if ctx.cache is None:
            raise LLMError(f"{ctx.role}: mode 'batch' needs a response cache to keep its batches")
        self.ctx = ctx
        self.endpoint = ctx.endpoint
        self.role = ctx.role
        self.jobs = dict(jobs)
        self.cache: ResponseCache = ctx.cache
        self.desc = ctx.desc
        self.on_progress = ctx.on_batch_progress
        self.ledger = Ledger(ctx.cache.storage, ctx.role)
        self.results: dict[str, ChatResult] = {}
        self.active: dict[str, _Active] = {}  # submission id -> active batch
        self.attempts: dict[str, int] = {}  # key -> submissions of it in this call
        self.submitting: Submission | None = None  # recorded, its batch being created
        self.last_log = 0.0

    async def run(self) -> dict[str, ChatResult]:
        async with self.ctx.open_api(4) as api:
            try:
                await self._adopt(api)
                todo = [k for k in self.jobs if k not in self.adopted_keys()]
                await self._submit(api, todo, attempt=1)
                await self._poll(api)
            except BaseException:  # cancelled, interrupted, or failed: stop our batches
                if self.endpoint.batch.cancel_on_cancel and (self.active or self.submitting):
                    await asyncio.shield(self._cancel_active(api))
                raise
        return self.results

    def adopted_keys(self) -> set[str]:
        return {k for a in self.active.values() for k in a.sub.keys}

    # ---- adopting and submitting --------------------------------------------------------

    async def _adopt(self, api: openai.AsyncOpenAI) -> None:
        wanted = set(self.jobs)
        for sub in await asyncio.to_thread(self.ledger.open):
            if wanted.isdisjoint(sub.keys):
                continue
            if sub.batch_id is None:  # recorded, then the process died around create()
                sub.batch_id = await self._find_created(api, sub)
                if sub.batch_id is None:
                    sub.state = ABANDONED
                    await asyncio.to_thread(self.ledger.save, sub)
                    continue
                await asyncio.to_thread(self.ledger.save, sub)
            log.info(
                "%s: resuming batch %s (%d request(s), submitted %s)",
                self.role, sub.batch_id, len(sub.keys), sub.created_at,
            )  # fmt: skip
            self.active[sub.id] = _Active(sub)
            for key in sub.keys:
                self.attempts[key] = self.attempts.get(key, 0) + 1

    async def _find_created(self, api: openai.AsyncOpenAI, sub: Submission) -> str | None:
        """The id of the batch created for `sub` (found by its metadata), or None."""
        async for batch in api.batches.list(limit=100):
            if (batch.metadata or {}).get(METADATA_KEY) == sub.id:
                return batch.id
            if batch.created_at < _epoch(sub.created_at) - 60:
                break  # listed newest first: older than the submission, so never created
        return None

    def _chunks(self, keys: list[str]) -> Iterable[tuple[list[str], bytes]]:
        """Keys and JSONL input files within batch.max_requests and batch.max_bytes."""
        e = self.endpoint
        lines: list[bytes] = []
        chunk: list[str] = []
        size = 0
        for key in keys:
            line = _input_line(key, self.jobs[key].body)
            if len(line) > e.batch.max_bytes:
                raise LLMError(
                    f"{self.role}: request {self.jobs[key].request.tag!r} takes {len(line)} bytes "
                    f"as a batch line, more than {self.role}.batch.max_bytes={e.batch.max_bytes}"
                )
            full = len(chunk) >= e.batch.max_requests or size + len(line) > e.batch.max_bytes
            if chunk and full:
                yield chunk, b"".join(lines)
                chunk, lines, size = [], [], 0
            chunk.append(key)
            lines.append(line)
            size += len(line)
        if chunk:
            yield chunk, b"".join(lines)

    async def _submit(self, api: openai.AsyncOpenAI, keys: list[str], attempt: int) -> None:
        for chunk, data in self._chunks(keys):
            sub_id = f"{datetime.now(UTC):%Y%m%dT%H%M%S%f}Z-{uuid.uuid4().hex[:8]}"
            upload = await api.files.create(
                file=(f"lion-{self.role}-{sub_id}.jsonl", io.BytesIO(data), "application/jsonl"),
                purpose="batch",
            )
            sub = Submission(
                id=sub_id,
                role=self.role,
                model=self.ctx.model,
                keys=chunk,
                input_file_id=upload.id,
                attempt=attempt,
            )
            # Recorded before the batch exists: a death inside create() is found again by the
            # metadata; recorded again with the id before anything else happens.
            await asyncio.to_thread(self.ledger.save, sub)
            self.submitting = sub
            batch = await api.batches.create(
                input_file_id=upload.id,
                endpoint=ENDPOINT,
                completion_window=WINDOW,
                metadata={METADATA_KEY: sub.id, "role": self.role},
            )
            sub.batch_id, sub.status = batch.id, batch.status
            await asyncio.to_thread(self.ledger.save, sub)
            self.active[sub.id] = _Active(sub, batch)
            self.submitting = None
            if attempt > 1:
                self.ctx.usage.add(retries=len(chunk))
            for key in chunk:
                self.attempts[key] = self.attempts.get(key, 0) + 1
            log.info(
                "%s: submitted batch %s: %d request(s)%s, %d bytes",
                self.role, batch.id, len(chunk),
                f" (resubmission {attempt - 1})" if attempt > 1 else "", len(data),
            )  # fmt: skip

    # ---- polling and merging ------------------------------------------------------------

    async def _poll(self, api: openai.AsyncOpenAI) -> None:
        e = self.endpoint
        interval = e.batch.poll_seconds
        first = True
        while self.active:
            if not first:
                await asyncio.sleep(interval)
                interval = min(e.batch.poll_max_seconds, interval * 1.5)
            first = False
            for sid in list(self.active):
                active = self.active[sid]
                try:
                    active.batch = await api.batches.retrieve(active.sub.batch_id)
                except openai.NotFoundError:
                    del self.active[sid]
                    await self._lost(api, active.sub)
                    continue
                if active.batch.status in TERMINAL:
                    await self._finish(api, active)
                    del self.active[sid]
            self._report()

    def _report(self, force: bool = False) -> None:
        done = failed = total = 0
        statuses = []
        for active in self.active.values():
            counts = getattr(active.batch, "request_counts", None)
            if counts is not None:
                done, failed = done + counts.completed, failed + counts.failed
                total += counts.total
            statuses.append(getattr(active.batch, "status", "?"))
        finished = sum(1 for r in self.results.values() if r.key in self.jobs)
        done += sum(1 for r in self.results.values() if r.ok)
        failed += sum(1 for r in self.results.values() if not r.ok)
        total += finished
        if self.on_progress is not None:
            with contextlib.suppress(Exception):  # progress must never stop the run
                self.on_progress(self.role, self.desc, done, failed, max(total, len(self.jobs)))
        now = time.monotonic()
        if force or now - self.last_log >= LOG_INTERVAL:
            self.last_log = now
            label = f"{self.role}: {self.desc}" if self.desc else self.role
            log.info(
                "%s: batch %d completed, %d failed of %d; %d batch(es) in flight (%s)",
                label, done, failed, max(total, len(self.jobs)), len(self.active),
                ", ".join(sorted(set(statuses))) or "-",
            )  # fmt: skip

    async def _lost(self, api: openai.AsyncOpenAI, sub: Submission) -> None:
        """A recorded batch the provider answers 404 for (it restarted, or base_url or the key
        changed since): closed as lost, and its requests not answered yet submitted again —
        never the answered ones."""
        sub.state, sub.status = ABANDONED, "lost"
        await asyncio.to_thread(self.ledger.save, sub)
        todo = [k for k in sub.keys if k in self.jobs and self.cache.get(k) is None]
        log.warning(
            "%s: batch %s is unknown to the provider (404: it restarted, or base_url or the API "
            "key changed); %d of its %d request(s) are submitted again",
            self.role, sub.batch_id, len(todo), len(sub.keys),
        )  # fmt: skip
        if todo:
            await self._submit(api, todo, attempt=sub.attempt + 1)

    async def _finish(self, api: openai.AsyncOpenAI, active: _Active) -> None:
        sub, batch = active.sub, active.batch
        sub.status = batch.status
        if batch.status == "failed":  # the input was refused as a whole: nothing ran
            errors = "; ".join(
                f"line {e.line}: {e.message}" if e.line is not None else str(e.message)
                for e in ((batch.errors.data or []) if batch.errors else [])
            )
            sub.state = MERGED
            await asyncio.to_thread(self.ledger.save, sub)
            raise BatchError(
                f"{self.role}: batch {batch.id} ({len(sub.keys)} requests, model "
                f"{self.ctx.model!r}) failed validation: {errors or 'no reason given'}"
            )
        lines: dict[str, ChatResult] = {}
        for file_id in (batch.output_file_id, batch.error_file_id):
            if file_id:
                content = await api.files.content(file_id)
                garbled = 0
                for raw in content.text.splitlines():
                    if not raw.strip():
                        continue
                    try:
                        line = json.loads(raw)
                    except ValueError:
                        line = None
                    if not isinstance(line, Mapping):
                        # One damaged line costs its own request only (asked again below, as
                        # one the batch did not answer), never the paid answers around it.
                        garbled += 1
                        continue
                    result = self._line_result(line)
                    if result is not None:
                        lines[result.key] = result
                if garbled:
                    log.warning(
                        "%s: batch %s: %d line(s) of file %s are not JSON objects; their "
                        "requests count as unanswered and are asked again",
                        self.role, batch.id, garbled, file_id,
                    )  # fmt: skip
        undone = [k for k in sub.keys if k not in lines]
        reason = (
            "cancelled before it ran"
            if batch.status == "cancelled"
            else f"not in the output of batch {batch.id} ({batch.status})"
        )
        for key in undone:
            lines[key] = self._failed(key, reason)
            if batch.status == "cancelled" and sub.cancel_requested:
                # never ran, because this run stopped it: not an attempt of its own
                self.attempts[key] = max(0, self.attempts.get(key, 1) - 1)
        await self._merge(sub, lines)
        if batch.status == "cancelled" and not sub.cancel_requested:
            raise BatchError(
                f"{self.role}: batch {batch.id} was cancelled at the provider (not by this run); "
                f"{len(sub.keys) - len(undone)} of its {len(sub.keys)} answers were kept. "
                "Resume the run to send the rest."
            )
        retry = [
            k
            for k, r in lines.items()
            if not r.ok
            and k in self.jobs
            and self.attempts.get(k, 0) <= self.endpoint.batch.resubmits
        ]
        if retry:
            await self._submit(api, retry, attempt=sub.attempt + 1)

    async def _merge(self, sub: Submission, lines: Mapping[str, ChatResult]) -> None:
        """Record every line in the cache (an ok answer once), flush, then close `sub`."""
        recorded = []
        for key, result in lines.items():
            if result.ok and self.cache.get(key) is not None:
                continue  # already answered (a merge interrupted before closing `sub`)
            job = self.jobs.get(key)
            recorded.append(self.cache.record(result, job.payload if job else None))
            if key in self.jobs:
                self.results[key] = result
        for future in recorded:
            await wait_for(future)
        await wait_for(self.cache.flush())
        for key in sub.keys:
            if key in self.jobs and key not in self.results:
                hit = self.cache.get(key)
                if hit is not None:
                    self.results[key] = hit
        sub.state = MERGED
        await asyncio.to_thread(self.ledger.save, sub)
        ok = sum(1 for r in lines.values() if r.ok)
        log.info(
            "%s: batch %s %s: %d answered, %d failed",
            self.role, sub.batch_id, sub.status, ok, len(lines) - ok,
        )  # fmt: skip

    def _line_result(self, line: Mapping[str, Any]) -> ChatResult | None:
        key = line.get("custom_id")
        if not isinstance(key, str):
            return None
        response = line.get("response")
        response = response if isinstance(response, Mapping) else {}
        error = line.get("error")
        status = response.get("status_code")
        body = response.get("body") if isinstance(response, Mapping) else None
        if status == 200 and isinstance(body, Mapping):
            return self._answer(key, body)
        if isinstance(body, Mapping) and isinstance(body.get("error"), Mapping):
            error = body["error"]
        if isinstance(error, Mapping):
            message = f"{error.get('code') or 'error'}: {error.get('message') or ''}".strip()
        else:
            message = str(error or "no answer")
        prefix = f"HTTP {status}: " if status else ""
        return self._failed(key, f"batch line failed: {prefix}{message}")

    def _answer(self, key: str, body: Mapping[str, Any]) -> ChatResult:
        fields = answer_fields(body)
        if fields is None:
            return self._failed(key, "batch line failed: HTTP 200 but not a chat completion")
        text, finish, prompt, completion = fields
        cost = self.ctx.charge(prompt, completion, batch=True)
        tag = self._tag(key)
        if not text or not str(text).strip():
            return ChatResult(
                key=key, tag=tag, status="failed", error=f"empty answer (finish_reason={finish})",
                prompt_tokens=prompt, completion_tokens=completion, cost_usd=cost,
                extra={"attempts": self.attempts.get(key, 1), "batch": True},
            )  # fmt: skip
        return ChatResult(
            key=key, tag=tag, status="ok", text=text, finish_reason=finish,
            prompt_tokens=prompt, completion_tokens=completion, cost_usd=cost,
            extra={"attempts": self.attempts.get(key, 1), "batch": True},
        )  # fmt: skip

    def _failed(self, key: str, error: str) -> ChatResult:
        return ChatResult(
            key=key,
            tag=self._tag(key),
            status="failed",
            error=error,
            extra={"attempts": self.attempts.get(key, 1), "batch": True},
        )

    def _tag(self, key: str) -> str:
        job = self.jobs.get(key)
        return job.request.tag if job is not None else ""

    # ---- cancelling ---------------------------------------------------------------------

    async def _cancel_active(self, api: openai.AsyncOpenAI) -> None:
        sub = self.submitting
        if sub is not None:  # interrupted inside create(): the batch may exist
            with contextlib.suppress(Exception):
                sub.batch_id = await self._find_created(api, sub)
                if sub.batch_id is not None:
                    await _cancel(api, sub, self.ledger)
        for active in list(self.active.values()):
            with contextlib.suppress(Exception):
                await _cancel(api, active.sub, self.ledger)


async def _cancel(api: openai.AsyncOpenAI, sub: Submission, ledger: Ledger) -> None:
    """Ask the provider to cancel `sub`'s batch; the submission stays open, so a later run
    collects what was answered before the cancellation took effect."""
    if sub.batch_id is None:
        return
    batch = await api.batches.cancel(sub.batch_id)
    sub.cancel_requested, sub.status = True, batch.status
    await asyncio.to_thread(ledger.save, sub)
    log.warning(
        "%s: cancelled batch %s (%d request(s)); a resumed run collects what it answered",
        sub.role, sub.batch_id, len(sub.keys),
    )  # fmt: skip


def cancel_open_batches(client: HasSendContext) -> list[str]:
    """Cancel every open batch recorded for `client`'s role and cache (e.g. from a flow's
    cancellation hook, in another process than the one that submitted them); returns the
    batch ids asked to cancel."""
    ctx = client.send_context()
    if ctx.cache is None:
        return []
    ledger = Ledger(ctx.cache.storage, ctx.role)

    async def cancel_all() -> list[str]:
        done = []
        async with ctx.open_api(4) as api:
            for sub in ledger.open():
                if sub.batch_id is not None and not sub.cancel_requested:
                    with contextlib.suppress(openai.APIError):
                        await _cancel(api, sub, ledger)
                        done.append(sub.batch_id)
        return done

    return asyncio.run(cancel_all())


# ---- helpers -------------------------------------------------------------------------------


def _input_line(key: str, body: Mapping[str, Any]) -> bytes:
    line = {"custom_id": key, "method": "POST", "url": ENDPOINT, "body": body}
    return json.dumps(line, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()
