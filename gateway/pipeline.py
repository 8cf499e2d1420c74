"""The request pipeline, the same for every dialect.

    auth (cached key) → body (413) → dialect.parse_chat (400) → catalog (404)
    → output clamp and context check (400) → rate limit (429) → quota reserve (429, one
    statement that also re-checks the key) → upstream call relayed in the client's dialect
    → settle (one statement, shielded from cancellation) → usage record (batched)

A dialect (``gateway.dialects.base.Dialect``) supplies parsing, the upstream body, rendering
and the error envelope; nothing here knows which dialect it is serving.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from datetime import UTC, datetime

import aiohttp
import asyncpg
from django.conf import settings
from django.db import InterfaceError as DjangoInterfaceError
from django.db import OperationalError as DjangoOperationalError

from gateway import errors
from gateway.auth import KeyCache, api_key_from_headers
from gateway.catalog import Catalog
from gateway.dialects.base import ChatRequest, Dialect, UpstreamTarget, Usage
from gateway.errors import GatewayError
from gateway.http import ClientGone, Request, Response, error_response, send_response
from gateway.ratelimit import RateLimiter, RateState
from gateway.recorder import Recorder
from gateway.tokens import estimate_text_tokens
from gateway.upstream import (
    SSEReader,
    Upstream,
    chunk_with_usage,
    upstream_http_error,
    usage_from,
)
from portal import metrics
from usage.ledger import KeyRow, Ledger, RecordRow, Refused, Reserved
from usage.quota import quota_day, seconds_until_reset

log = logging.getLogger(__name__)

SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]
CLIENT_CLOSED_REQUEST = 499
# The database refused, dropped or never opened a connection (asyncpg on PostgreSQL, the ORM
# for the catalog and on SQLite). Anything else from it is a bug and stays a 500.
DATABASE_UNAVAILABLE = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.OperatorInterventionError,
    DjangoOperationalError,
    DjangoInterfaceError,
)


class _DisconnectWatcher:
    """Cancels the request's task when the client goes away before the response is complete."""

    __slots__ = ("_task", "done", "fired")

    def __init__(self, receive, target: asyncio.Task):
        self.done = False
        self.fired = False
        self._task = asyncio.get_running_loop().create_task(self._watch(receive, target))

    async def _watch(self, receive, target):
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                if not self.done:
                    self.fired = True
                    target.cancel()
                return

    def stop(self) -> None:
        self.done = True
        self._task.cancel()


def _streamed_output_estimate(chunks: list[bytes]) -> int:
    tokens = 0
    for data in chunks:
        # Runs while settling a failed stream too: a chunk of the wrong shape counts nothing
        # instead of raising out of the settlement.
        try:
            for choice in json.loads(data).get("choices") or ():
                delta = choice.get("delta") or {}
                tokens += estimate_text_tokens(delta.get("content") or "")
                if delta.get("tool_calls"):
                    tokens += estimate_text_tokens(json.dumps(delta["tool_calls"]))
        except (ValueError, TypeError, AttributeError):
            continue
    return tokens


def _completion_output_estimate(obj: dict) -> int:
    tokens = 0
    for choice in obj.get("choices") or ():
        message = choice.get("message") or {}
        tokens += estimate_text_tokens(message.get("content") or "")
        if message.get("tool_calls"):
            tokens += estimate_text_tokens(json.dumps(message["tool_calls"]))
    return tokens


class _Keepalive:
    """For dialects that ping during long upstream silences: every ``keepalive_seconds`` asks
    ``renderer.keepalive()`` and sends what it returns. A timer, not a task, while nothing is
    due, so that a stream that keeps flowing pays next to nothing for it."""

    __slots__ = ("_handle", "_loop", "_renderer", "_seconds", "_send", "_sending")

    def __init__(self, send, renderer, seconds: float):
        self._send = send
        self._renderer = renderer
        self._seconds = seconds
        self._sending: asyncio.Task | None = None
        self._loop = asyncio.get_running_loop()
        self._handle = self._loop.call_later(seconds, self._beat)

    def _beat(self) -> None:
        data = self._renderer.keepalive()
        if data and self._sending is None:
            self._sending = self._loop.create_task(self._deliver(data))
        self._handle = self._loop.call_later(self._seconds, self._beat)

    async def _deliver(self, data: bytes) -> None:
        try:
            await self._send({"type": "http.response.body", "body": data, "more_body": True})
        except Exception:  # noqa: S110 - the response ended or the client left meanwhile
            pass
        finally:
            self._sending = None

    def cancel(self) -> None:
        self._handle.cancel()
        if self._sending is not None:
            self._sending.cancel()


def _keepalive(send, renderer) -> _Keepalive | None:
    seconds = renderer.keepalive_seconds
    return _Keepalive(send, renderer, seconds) if seconds else None


class _Outcome:
    """What happened to one admitted request, filled in as it goes."""

    __slots__ = (
        "error_code",
        "estimated",
        "first_token_ms",
        "input",
        "output",
        "settled",
        "status",
    )

    def __init__(self):
        self.status = 200
        self.error_code = ""
        self.input = 0
        self.output = 0
        self.estimated = False
        self.first_token_ms: int | None = None
        self.settled = False

    def charge(self, usage: Usage) -> None:
        self.input, self.output, self.estimated = (
            usage.input_tokens,
            usage.output_tokens,
            usage.estimated,
        )


class Gateway:
    def __init__(
        self,
        *,
        ledger: Ledger,
        limiter: RateLimiter,
        upstream: Upstream,
        catalog: Catalog,
        max_body_bytes: int,
        recorder: Recorder | None = None,
    ):
        self.ledger = ledger
        self.limiter = limiter
        self.upstream = upstream
        self.catalog = catalog
        self.max_body_bytes = max_body_bytes
        self.recorder = recorder or Recorder(ledger)
        self.keys = KeyCache(ledger)
        self._settling: set[asyncio.Task] = set()

    async def startup(self) -> None:
        await self.ledger.open()
        await self.limiter.open()
        await self.upstream.open()
        self.recorder.start()

    async def shutdown(self) -> None:
        if self._settling:
            await asyncio.gather(*self._settling, return_exceptions=True)
        await self.recorder.stop()
        await self.upstream.close()
        await self.limiter.close()
        await self.ledger.close()

    # --- steps -------------------------------------------------------------------------
    async def authenticate(self, request: Request, *, fresh: bool = False) -> tuple[KeyRow, str]:
        return await self._database(
            self.keys.authenticate(api_key_from_headers(request.headers), fresh=fresh)
        )

    async def _database(self, step):
        """A step that needs the database, bounded: a database that is down or stalled gets
        the client a quick 503 in its dialect instead of an error page or a hung request."""
        try:
            async with asyncio.timeout(settings.GATEWAY_DATABASE_TIMEOUT_SECONDS):
                return await step
        except DATABASE_UNAVAILABLE as failure:
            log.warning("database unavailable: %s", failure.__class__.__name__)
            raise errors.service_unavailable() from None

    async def _reserve(
        self, request: Request, key: KeyRow, digest: str, chat: ChatRequest, max_out: int
    ) -> Reserved:
        outcome = await self.ledger.reserve(
            key_id=key.key_id,
            digest=digest,
            day=quota_day(),
            input_tokens=chat.input_tokens,
            max_output_tokens=max_out,
        )
        if isinstance(outcome, Refused):
            if outcome.reason == "quota":
                raise errors.insufficient_quota(seconds_until_reset=seconds_until_reset())
            # The key or account changed since it was cached: say exactly what.
            await self.authenticate(request, fresh=True)
            raise errors.invalid_key()
        return outcome

    # --- the chat endpoint ---------------------------------------------------------------
    async def handle_chat(self, dialect: Dialect, request: Request, send) -> None:
        started = time.perf_counter()
        key: KeyRow | None = None
        model_name = ""
        stream = False
        rate: RateState | None = None
        try:
            key, digest = await self.authenticate(request)
            chat = dialect.parse_chat(await request.body(self.max_body_bytes), request.query)
            model_name, stream = chat.model, chat.stream
            model = await self._database(self.catalog.get(chat.model))
            if model is None:
                raise errors.model_not_found(chat.model)
            room = model.context_window - chat.input_tokens
            if chat.max_tokens is None:
                # Absent means the model's maximum, or whatever still fits the context.
                max_out = min(model.max_output_tokens, room)
                if max_out < 1:
                    raise errors.context_length_exceeded(
                        input_tokens=chat.input_tokens,
                        max_tokens=model.max_output_tokens,
                        limit=model.context_window,
                    )
            else:
                max_out = min(chat.max_tokens, model.max_output_tokens)
                if max_out > room:
                    raise errors.context_length_exceeded(
                        input_tokens=chat.input_tokens,
                        max_tokens=max_out,
                        limit=model.context_window,
                    )
            rate = await self.limiter.check(
                key_id=key.key_id,
                rpm=key.rate_limit_rpm,
                tpm=key.rate_limit_tpm,
                tokens=chat.input_tokens,
            )
            reserved = await self._database(self._reserve(request, key, digest, chat, max_out))
        except GatewayError as error:
            # Past the rate limiter (e.g. the quota refused), the client still learns its limits.
            extra = rate.headers() if rate is not None else ()
            await send_response(send, error_response(error, dialect, extra))
            if key is not None:
                self._record(
                    key, dialect, model_name, stream, started, error.status, error.code, None
                )
            return
        except ClientGone:
            return

        target = UpstreamTarget(
            model.name, model.upstream_model, reserved.output_budget, model.base_url
        )
        outcome = _Outcome()
        try:
            await self._relay(dialect, request, send, chat, model, target, rate, outcome, reserved)
        finally:
            settle = self._settle(reserved, outcome)
            self.limiter.add_output(key.key_id, outcome.output)
            self._record(
                key,
                dialect,
                model_name,
                stream,
                started,
                outcome.status,
                outcome.error_code,
                outcome,
            )
            if settle is not None:
                # The settlement runs to the end even if this task is cancelled while waiting.
                await asyncio.shield(settle)

    def _settle(self, reserved: Reserved, outcome: _Outcome) -> asyncio.Task | None:
        """Replace the reservation by the charge, once, in a task the request does not own."""
        if outcome.settled:
            return None
        outcome.settled = True
        task = asyncio.get_running_loop().create_task(
            self.ledger.settle(
                reserved=reserved, input_tokens=outcome.input, output_tokens=outcome.output
            )
        )
        self._settling.add(task)
        task.add_done_callback(self._settled)
        return task

    def _settled(self, task: asyncio.Task) -> None:
        self._settling.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("quota settlement failed", exc_info=task.exception())

    def _record(self, key, dialect, model_name, stream, started, status, error_code, outcome):
        now = datetime.now(UTC)
        # The client's text, recorded even for an unknown model: PostgreSQL refuses NUL in
        # text, and a batch it refuses would be retried forever, holding up every record.
        model_name = model_name[:128].replace("\x00", "\ufffd")
        metrics.record_gateway_request(
            dialect=dialect.name,
            model=model_name[:128],
            status=status,
            error_code=error_code,
            input_tokens=outcome.input if outcome else 0,
            output_tokens=outcome.output if outcome else 0,
        )
        self.recorder.add(
            RecordRow(
                user_id=key.user_id,
                api_key_id=key.key_id,
                key_name=key.key_name,
                model=model_name[:128],
                endpoint=dialect.endpoint,
                stream=stream,
                input_tokens=outcome.input if outcome else 0,
                output_tokens=outcome.output if outcome else 0,
                estimated=outcome.estimated if outcome else False,
                status_code=status,
                error_code=error_code[:64],
                latency_ms=int((time.perf_counter() - started) * 1000),
                first_token_ms=outcome.first_token_ms if outcome else None,
                day=quota_day(now),
                created_at=now,
            )
        )

    async def _relay(
        self, dialect, request, send, chat, model, target, rate, outcome, reserved
    ) -> None:
        started = time.perf_counter()
        rate_headers = rate.headers() if rate else []
        extra = None
        if model.is_demo:
            # Test and benchmark switches reach the demo upstream, and only the demo upstream.
            extra = {
                name.decode(): value.decode("latin-1")
                for name, value in request.headers.items()
                if name.startswith(b"x-demo-")
            }
        body = dialect.upstream_body(chat, target)
        watcher = _DisconnectWatcher(request.receive, asyncio.current_task())
        response_started = False
        renderer = None
        keepalive = None
        delivered: list[bytes] = []
        usage: Usage | None = None
        upstream_sent = False
        # The upstream cannot have produced more than the budget it was given; the estimate
        # (which errs high) must not charge more either, or it could spend past the quota.
        cap = target.max_tokens
        try:
            async with self.upstream.post_chat(model, body, extra) as upstream:
                if upstream.status >= 400:
                    raise upstream_http_error(upstream.status, await upstream.read())
                # From here on the upstream is producing: a failure still costs what it made.
                upstream_sent = True
                if not chat.stream:
                    obj = json.loads(await upstream.read())
                    usage = usage_from(obj)
                    if usage is None:
                        usage = Usage(
                            chat.input_tokens, min(_completion_output_estimate(obj), cap), True
                        )
                    payload = dialect.render_completion(chat, obj, target)
                    outcome.first_token_ms = int((time.perf_counter() - started) * 1000)
                    # Settled before the answer leaves: a client that got its answer sees it
                    # counted (the dashboard, its next request).
                    outcome.charge(usage)
                    await asyncio.shield(self._settle(reserved, outcome))
                    watcher.done = True
                    await send_response(send, Response(200, payload, rate_headers))
                    return
                renderer = dialect.stream_renderer(chat, target)
                await send(
                    {
                        "type": "http.response.start",
                        "status": 200,
                        "headers": [*SSE_HEADERS, *rate_headers],
                    }
                )
                response_started = True
                opening = renderer.start()
                if opening:
                    await send({"type": "http.response.body", "body": opening, "more_body": True})
                keepalive = _keepalive(send, renderer)
                reader = SSEReader(upstream)
                async for data in reader:
                    parsed, chunk_usage = chunk_with_usage(data)
                    if chunk_usage is not None:
                        usage = chunk_usage
                    delivered.append(data)
                    out = renderer.chunk(data, parsed)
                    if out:
                        if outcome.first_token_ms is None:
                            outcome.first_token_ms = int((time.perf_counter() - started) * 1000)
                        await send({"type": "http.response.body", "body": out, "more_body": True})
                if not reader.done:
                    raise errors.upstream_unavailable("the stream ended early")
                if usage is None:
                    usage = Usage(
                        chat.input_tokens, min(_streamed_output_estimate(delivered), cap), True
                    )
                outcome.charge(usage)
                await asyncio.shield(self._settle(reserved, outcome))
                watcher.done = True
                await send({"type": "http.response.body", "body": renderer.finish(usage)})
        except asyncio.CancelledError:
            if not watcher.fired:
                raise
            asyncio.current_task().uncancel()
            outcome.status, outcome.error_code = CLIENT_CLOSED_REQUEST, "client_disconnected"
        except GatewayError as error:
            outcome.status, outcome.error_code = error.status, error.code
            await self._fail(dialect, send, error, response_started, renderer)
        except (TimeoutError, aiohttp.ServerTimeoutError):
            error = errors.upstream_timeout()
            outcome.status, outcome.error_code = error.status, error.code
            await self._fail(dialect, send, error, response_started, renderer)
        except (aiohttp.ClientError, ValueError, OSError) as failure:
            log.warning("upstream %s failed: %s", model.name, failure.__class__.__name__)
            error = errors.upstream_unavailable()
            outcome.status, outcome.error_code = error.status, error.code
            await self._fail(dialect, send, error, response_started, renderer)
        except (TypeError, AttributeError, KeyError, IndexError):
            # JSON that is not a chat completion (a list, "choices": 7 …) breaks the renderers.
            # With its traceback: a bug of ours would land here too.
            log.exception(
                "upstream %s answered something that is not a chat completion", model.name
            )
            error = errors.upstream_unavailable("the answer was not a chat completion")
            outcome.status, outcome.error_code = error.status, error.code
            await self._fail(dialect, send, error, response_started, renderer)
        finally:
            watcher.stop()
            if keepalive is not None:
                keepalive.cancel()
            if outcome.settled:
                pass
            elif usage is not None:
                outcome.charge(usage)
            elif upstream_sent:
                # No report: charge the prompt and what was delivered, by estimate.
                outcome.input = chat.input_tokens
                outcome.output = min(_streamed_output_estimate(delivered), cap)
                outcome.estimated = True

    async def _fail(self, dialect, send, error, response_started, renderer) -> None:
        if response_started and renderer is not None:
            await send({"type": "http.response.body", "body": renderer.error(error)})
        elif not response_started:
            await send_response(send, error_response(error, dialect))
