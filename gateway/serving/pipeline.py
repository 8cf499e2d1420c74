"""The request pipeline, the same for every dialect.

    auth (cached key; 429 for an address with too many failed checks; then the key's expiry
    and IP allow-list, 401/403) → rate limit (RPM, 429, before any body byte is read) → body
    (413; 503 past the process's body budget) → dialect.parse_chat (400) → tokens per minute
    (429) → catalog (404) and the key's allowed models (403) → the model's tokenizer, where
    it names one (gateway.serving.counting) → output clamp and context check (400) → the
    key's concurrency slot (429, held until the request ends) → quota reserve (429, one
    statement that also re-checks the key, its controls' version and its daily cap)
    → upstream call relayed in the client's dialect, at most GATEWAY_STREAM_MAX_SECONDS
    → settle (one statement, charge clamped to the reservation, shielded from cancellation,
    retried while the database is away; a charge that crossed an alert threshold is queued for
    the recorder) → usage record (batched, on the reservation's day)

A dialect (``gateway.serving.dialects.base.Dialect``) supplies parsing, the upstream body, rendering
and the error envelope; nothing here knows which dialect it is serving. Nor which protocol an
endpoint speaks: each attempt's ``gateway.serving.exchange.Exchange`` does.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from datetime import UTC, datetime

import aiohttp
import asyncpg
from django.conf import settings
from django.db import InterfaceError as DjangoInterfaceError
from django.db import OperationalError as DjangoOperationalError

from alerts.detection import Charge, charge_may_alert
from gateway.selectors import CatalogEndpoint, CatalogModel
from gateway.serving import errors
from gateway.serving.auth import KeyCache, api_key_from_headers
from gateway.serving.catalog import Catalog
from gateway.serving.concurrency import ConcurrencyLimiter, Slot
from gateway.serving.counting import TokenCounter
from gateway.serving.dialects.base import ChatRequest, Dialect, UpstreamTarget, Usage
from gateway.serving.errors import GatewayError
from gateway.serving.exchange import Exchange, exchange_for
from gateway.serving.http import (
    ClientGone,
    Request,
    Response,
    StreamingResponse,
    error_response,
    send_response,
)
from gateway.serving.monitor import UpstreamMonitor
from gateway.serving.ratelimit import RateLimiter, RateState
from gateway.serving.recorder import Recorder
from gateway.serving.routing import Router
from gateway.serving.upstream import Upstream, upstream_http_error
from observability import metrics
from usage.ledger import KeyRow, Ledger, RecordRow, Refused, Reserved, Settled
from usage.quota import charged_input_tokens, quota_day, seconds_until_reset

log = logging.getLogger(__name__)

SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]
CLIENT_CLOSED_REQUEST = 499
_FAIL_SEND_SECONDS = 5.0
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


def _client_address(request: Request) -> str:
    client = request.scope.get("client")
    return client[0] if client else "unknown"


def _clamp(reserved: Reserved, outcome: _Outcome) -> None:
    """Never charge below zero nor above the reservation, whatever the upstream reported: a
    negative count would refund usage, a huge one spend past the quota the grant was cut to."""
    charged_in = min(max(0, outcome.input), reserved.tokens)
    charged_out = min(max(0, outcome.output), reserved.tokens - charged_in)
    if (charged_in, charged_out) != (outcome.input, outcome.output):
        log.warning(
            "usage clamped to the reservation: reported %d input + %d output, charged %d + %d "
            "(reserved %d)",
            outcome.input,
            outcome.output,
            charged_in,
            charged_out,
            reserved.tokens,
        )
        outcome.input, outcome.output = charged_in, charged_out


class _Keepalive:
    """For dialects that ping during long upstream silences: every ``keepalive_seconds`` asks
    ``renderer.keepalive()`` and sends what it returns. A timer, not a task, while nothing is
    due, so that a stream that keeps flowing pays next to nothing for it."""

    __slots__ = ("_handle", "_loop", "_renderer", "_response", "_seconds", "_sending")

    def __init__(self, response: StreamingResponse, renderer, seconds: float):
        self._response = response
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
            await self._response.chunk(data)
        except Exception:  # noqa: S110 - the response ended or the client left meanwhile
            pass
        finally:
            self._sending = None

    def cancel(self) -> None:
        self._handle.cancel()
        if self._sending is not None:
            self._sending.cancel()


def _keepalive(response: StreamingResponse, renderer) -> _Keepalive | None:
    seconds = renderer.keepalive_seconds
    return _Keepalive(response, renderer, seconds) if seconds else None


class _Outcome:
    """What happened to one admitted request, filled in as it goes."""

    __slots__ = (
        "cached",
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
        self.cached = 0
        self.estimated = False
        self.first_token_ms: int | None = None
        self.settled = False

    def charge(self, usage: Usage) -> None:
        """Charge what the upstream reported: cached input at CACHED_INPUT_TOKEN_WEIGHT, so
        ``input`` (settled and recorded) is the charged input; ``cached`` is recorded as
        reported."""
        self.input = charged_input_tokens(
            input_tokens=usage.input_tokens, cached_input_tokens=usage.cached_input_tokens
        )
        self.output, self.estimated = usage.output_tokens, usage.estimated
        self.cached = usage.cached_input_tokens


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
        concurrency: ConcurrencyLimiter | None = None,
        router: Router | None = None,
    ):
        self.ledger = ledger
        self.limiter = limiter
        self.upstream = upstream
        self.catalog = catalog
        self.max_body_bytes = max_body_bytes
        self.recorder = recorder or Recorder(ledger)
        self.concurrency = concurrency or ConcurrencyLimiter()
        self.router = router or Router()
        self.monitor = UpstreamMonitor(self.router, catalog, upstream)
        self.keys = KeyCache(ledger)
        self.counter = TokenCounter(upstream)
        self._settling: set[asyncio.Task] = set()
        # Reservations of this process's requests not yet settled: their leases are renewed.
        self._live: dict[int, Reserved] = {}
        self._leases: asyncio.Task | None = None
        self._body_bytes_in_flight = 0

    async def startup(self) -> None:
        await self.ledger.open()
        await self.limiter.open()
        await self.concurrency.open()
        await self.upstream.open()
        self.recorder.start()
        self.monitor.start()
        self._leases = asyncio.get_running_loop().create_task(self._renew_leases())

    async def _renew_leases(self) -> None:
        """One statement per interval for every live reservation of this process, so the
        sweeper can tell a long request from an orphan without a statement per chunk; and,
        on its own (shorter) interval, one script call for the key concurrency slots held."""
        loop = asyncio.get_running_loop()
        lease = settings.GATEWAY_RESERVATION_LEASE_SECONDS
        slot_lease = settings.GATEWAY_CONCURRENCY_LEASE_SECONDS
        # Three renewals per lease: one lost beat (a slow database) costs no reservation.
        beat = max(min(lease, slot_lease) / 3, 0.1)
        reservations_due = loop.time() + max(lease / 3, 0.1)
        while True:
            await asyncio.sleep(beat)
            try:
                await self.concurrency.renew()
            except Exception as failure:
                log.warning("concurrency slots not renewed: %s", failure.__class__.__name__)
            ids = list(self._live)
            if not ids or loop.time() < reservations_due:
                continue
            reservations_due = loop.time() + max(lease / 3, 0.1)
            try:
                async with asyncio.timeout(settings.GATEWAY_DATABASE_TIMEOUT_SECONDS):
                    await self.ledger.renew_leases(ids, lease)
            except Exception as failure:
                # The next beat tries again; the time bounds (gateway.checks) still hold.
                log.warning("reservation leases not renewed: %s", failure.__class__.__name__)

    async def shutdown(self) -> None:
        if self._leases is not None:
            self._leases.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._leases
            self._leases = None
        if self._settling:
            await asyncio.gather(*self._settling, return_exceptions=True)
        await self.recorder.stop()
        await self.monitor.stop()
        await self.upstream.close()
        await self.limiter.close()
        await self.concurrency.close()
        await self.ledger.close()

    # --- steps -------------------------------------------------------------------------
    async def authenticate(self, request: Request, *, fresh: bool = False) -> tuple[KeyRow, str]:
        """The caller's key, or 401/403; 429 for an address that failed too often this minute
        (counted across processes by the limiter, so keys cannot be guessed at volume)."""
        client = _client_address(request)
        self.limiter.refuse_blocked(client)
        raw_key = api_key_from_headers(request.headers)
        step = self.keys.authenticate(raw_key, fresh=fresh)
        # A cached answer needs no time bound (a timer per request); a look-up does.
        if fresh or not self.keys.answers_alone(raw_key):
            step = self._database(step)
        try:
            key, digest = await step
        except GatewayError as error:
            if error.status == 401:
                await self.limiter.note_auth_failure(client)
            raise
        # The key's own controls, past the failure count: an expired key is no guessing.
        refusal = key.controls.refusal(now=datetime.now(UTC), client=client)
        if refusal is not None and not fresh:
            # The cached row may predate a loosened control (expiry extended, address added):
            # a refusal is confirmed on a fresh row before it is sent.
            key, digest = await self._database(self.keys.authenticate(raw_key, fresh=True))
            refusal = key.controls.refusal(now=datetime.now(UTC), client=client)
        if refusal is not None:
            raise errors.key_refused(refusal)
        return key, digest

    async def resolve_model(self, key: KeyRow, name: str) -> CatalogModel:
        """The enabled model ``name`` as the key may use it: 404 for a model nobody has, then
        403 ``model_not_allowed`` for one outside the key's allowed models."""
        step = self.catalog.get(name)
        # As for keys: the snapshot needs no time bound, only its reload does.
        model = await (step if self.catalog.current() else self._database(step))
        if model is None:
            raise errors.model_not_found(name)
        refusal = key.controls.model_refusal(model.name)
        if refusal is not None:
            raise errors.key_refused(refusal)
        return model

    async def models_for(self, key: KeyRow) -> list[CatalogModel]:
        """The enabled models the key may use, in catalog order (``GET /v1/models``)."""
        models = await self.catalog.enabled()
        allowed = set(key.controls.listed(model.name for model in models))
        # An alias the operator marked listed follows its model, under its own name.
        return [
            listed
            for model in models
            if model.name in allowed
            for listed in (
                model,
                *(dataclasses.replace(model, name=alias) for alias in model.listed_aliases),
            )
        ]

    @contextlib.contextmanager
    def _body_budget(self, request: Request):
        """Holds the request's body size (declared, else the maximum) against the process's
        budget while it is read and parsed; past it, 503 at once instead of another copy of a
        large body in memory. One request is always admitted, however large."""
        size = self.max_body_bytes
        declared = request.headers.get(b"content-length")
        if declared is not None and declared.isdigit():
            size = min(int(declared), size)
        budget = settings.GATEWAY_BODY_BUDGET_BYTES
        if self._body_bytes_in_flight and self._body_bytes_in_flight + size > budget:
            raise errors.server_busy()
        self._body_bytes_in_flight += size
        try:
            yield
        finally:
            self._body_bytes_in_flight -= size

    async def handle_metered(self, dialect: Dialect, request: Request, endpoint: str, work):
        """A request that charges no tokens but costs CPU (Anthropic's ``count_tokens``): a
        fresh key check (a revoked key stops at once), the key's rate limit before the body,
        the body budget, and a usage record of 0 tokens under ``endpoint``.
        ``work(body, key)`` returns (model name, Response) or raises a ``GatewayError``."""
        call = _Call(self, dialect, request, endpoint=endpoint)
        key, _digest = await self.authenticate(request, fresh=True)
        call.key = key
        try:
            await self.limiter.check(
                key_id=key.key_id, rpm=key.rate_limit_rpm, tpm=key.rate_limit_tpm, tokens=0
            )
            with self._body_budget(request):
                body = await request.body(self.max_body_bytes)
                call.model_name, response = await work(body, key)
        except GatewayError as error:
            call.record(error.status, error.code)
            raise
        except ClientGone:
            return Response(CLIENT_CLOSED_REQUEST, b"")
        call.record(response.status, "")
        return response

    async def _database(self, step):
        """A step that needs the database, bounded: a database that is down or stalled gets
        the client a quick 503 in its dialect instead of an error page or a hung request."""
        try:
            async with asyncio.timeout(settings.GATEWAY_DATABASE_TIMEOUT_SECONDS):
                return await step
        except DATABASE_UNAVAILABLE as failure:
            log.warning("database unavailable: %s", failure.__class__.__name__)
            raise errors.service_unavailable() from None

    async def _reserve(self, call: _Call, digest: str, max_out: int) -> Reserved:
        """Hold the request's tokens, on the controls the statement itself confirms: when the
        key's controls changed since its row was cached, look the key up again, check it and
        the model once more with the fresh row (``call.key``), and reserve again."""
        request, chat = call.request, call.chat
        for _attempt in range(2):
            key = call.key
            outcome = await self.ledger.reserve(
                key_id=key.key_id,
                digest=digest,
                day=quota_day(),
                input_tokens=chat.input_tokens,
                max_output_tokens=max_out,
                controls_version=key.controls_version,
            )
            if not isinstance(outcome, Refused):
                return outcome
            if outcome.reason == "quota":
                raise errors.insufficient_quota(seconds_until_reset=seconds_until_reset())
            if outcome.reason == "key_quota":
                raise errors.key_daily_limit_exceeded(
                    cap=outcome.quota, seconds_until_reset=seconds_until_reset()
                )
            # The key changed since it was cached: a fresh row says exactly what (401/403 for
            # the key or account, the controls' own refusals) or admits it as it is now.
            call.key, digest = await self.authenticate(request, fresh=True)
            if outcome.reason == "auth":
                raise errors.invalid_key()
            await self.resolve_model(call.key, chat.model)
        # Changed again between the fresh look-up and the second statement: rare; retry soon.
        raise errors.service_unavailable()

    # --- the chat endpoint ---------------------------------------------------------------
    async def _take_slot(self, key: KeyRow) -> Slot | None:
        """A place among the key's requests in flight (``max_concurrent_requests``), or 429
        ``concurrency_limit_exceeded``. None for a key without a limit: it pays nothing."""
        limit = key.max_concurrent_requests
        if not limit:
            return None
        slot = await self.concurrency.acquire(key.key_id, limit)
        if slot is None:
            raise errors.concurrency_limit_exceeded(limit=limit)
        return slot

    async def handle_chat(self, dialect: Dialect, request: Request, send) -> None:
        call = _Call(self, dialect, request)
        try:
            await self._handle_chat(call, send)
        finally:
            # However the request ended (cancelled too), its slot goes back.
            self.concurrency.release(call.slot)

    async def _handle_chat(self, call: _Call, send) -> None:
        dialect, request = call.dialect, call.request
        try:
            key, digest = await self.authenticate(request)
            call.key = key
            # Counted before a byte of the body is read: a key over its limit costs no parsing.
            call.rate = await self.limiter.check(
                key_id=key.key_id, rpm=key.rate_limit_rpm, tpm=key.rate_limit_tpm, tokens=0
            )
            with self._body_budget(request):
                chat = dialect.parse_chat(await request.body(self.max_body_bytes), request.query)
            call.chat, call.model_name, call.stream = chat, chat.model, chat.stream
            self.limiter.admit_tokens(call.rate, key_id=key.key_id, tokens=chat.input_tokens)
            try:
                model = await self.resolve_model(key, chat.model)
            except GatewayError as error:
                if error.code != "model_not_allowed":
                    raise
                # As for expiry and addresses: a list loosened since the row was cached
                # applies at once.
                key, digest = await self.authenticate(request, fresh=True)
                call.key = key
                model = await self.resolve_model(key, chat.model)
            if model.kind != dialect.model_kind:
                raise errors.wrong_model_kind(chat.model, embedding=model.kind == "embedding")
            counted = await self.counter.count(model, dialect, chat)
            if counted is not None:
                # The model's own tokenizer: both bounds of the estimate become this count
                # (plus, for the reservation, what an upstream may bill beyond the body).
                chat.input_tokens_min = counted
                chat.input_tokens = counted + chat.input_tokens_beyond_body
            budget = output_budget(chat, model)
            call.slot = await self._take_slot(key)
            reserved = await self._database(self._reserve(call, digest, budget))
            key = call.key
            self._live[reserved.reservation_id] = reserved
        except GatewayError as error:
            # Past the rate limiter (e.g. the quota refused), the client still learns its limits.
            extra = dialect.rate_headers(call.rate) if call.rate is not None else ()
            await send_response(send, error_response(error, dialect, extra))
            if call.key is not None:
                call.record(error.status, error.code)
            return
        except ClientGone:
            return

        call.model, call.reserved = model, reserved
        # The upstream model name and URL are the endpoint's, set per attempt (_Call.connect).
        call.target = UpstreamTarget(
            model.name, model.name, reserved.output_budget, reasoning=model.reasoning
        )
        outcome = call.outcome = _Outcome()
        try:
            await call.relay(StreamingResponse(send))
        finally:
            settle = self._settle(reserved, outcome)
            self.limiter.add_output(key.key_id, outcome.output)
            call.record(outcome.status, outcome.error_code, outcome, day=reserved.day)
            if settle is not None:
                # The settlement runs to the end even if this task is cancelled while waiting.
                await asyncio.shield(settle)

    def _settle(self, reserved: Reserved, outcome: _Outcome) -> asyncio.Future | None:
        """Replace the reservation by the charge (clamped), once, in a task the request does
        not own. Returns a future done after the first attempt: the request waits for that,
        not for retries while the database is away."""
        if outcome.settled:
            return None
        outcome.settled = True
        _clamp(reserved, outcome)
        loop = asyncio.get_running_loop()
        first = loop.create_future()
        task = loop.create_task(
            self._settle_until_done(reserved, outcome.input, outcome.output, first)
        )
        self._settling.add(task)
        task.add_done_callback(self._settled)
        return first

    async def _settle_until_done(
        self, reserved: Reserved, input_tokens: int, output_tokens: int, first: asyncio.Future
    ) -> None:
        """Settle, retrying with backoff for GATEWAY_SETTLE_RETRY_SECONDS while the database is
        unreachable: a PostgreSQL outage mid-stream must not leave the request uncharged. A
        retry charges only if the reservation is still there (``usage.ledger``), so an attempt
        that committed before its connection broke is not charged twice."""
        loop = asyncio.get_running_loop()
        give_up_at = loop.time() + settings.GATEWAY_SETTLE_RETRY_SECONDS
        delay = 0.25
        retry = False
        try:
            while True:
                try:
                    async with asyncio.timeout(2 * settings.GATEWAY_DATABASE_TIMEOUT_SECONDS):
                        settled = await self.ledger.settle(
                            reserved=reserved,
                            input_tokens=input_tokens,
                            output_tokens=output_tokens,
                            retry=retry,
                        )
                    if settled is not None:
                        self._note_charge(reserved, settled, input_tokens + output_tokens)
                    return
                except DATABASE_UNAVAILABLE as failure:
                    if not first.done():
                        first.set_result(None)
                    if loop.time() + delay > give_up_at:
                        raise
                    log.warning(
                        "quota settlement failed (%s); retrying in %.2f s",
                        failure.__class__.__name__,
                        delay,
                    )
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 5.0)
                    retry = True
        finally:
            self._live.pop(reserved.reservation_id, None)
            if not first.done():
                first.set_result(None)

    def _note_charge(self, reserved: Reserved, settled: Settled, charged: int) -> None:
        """Queue the charge for quota alerts when it crossed a whole percentage of the account's
        quota or the key's cap (``alerts.detection``); the recorder writes them in batches."""
        limits = [(reserved.quota, settled.used, None)]
        if reserved.key_cap is not None and settled.key_used is not None:
            limits.append((reserved.key_cap, settled.key_used, reserved.capped_key_id))
        for limit, after, key_id in limits:
            if charge_may_alert(limit=limit, before=after - charged, after=after):
                self.recorder.add_charge(
                    Charge(
                        user_id=reserved.user_id,
                        api_key_id=key_id,
                        day=reserved.day,
                        limit=limit,
                        before=after - charged,
                        after=after,
                    )
                )

    def _settled(self, task: asyncio.Task) -> None:
        self._settling.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("quota settlement failed", exc_info=task.exception())


def _certain_input_tokens(chat: ChatRequest) -> int:
    """The lower bound of the prompt's tokens, computed on first need (``estimate_min``)."""
    if chat.input_tokens_min is None and chat.estimate_min is not None:
        chat.input_tokens_min = chat.estimate_min()
    return chat.input_tokens if chat.input_tokens_min is None else chat.input_tokens_min


def output_budget(chat: ChatRequest, model: CatalogModel) -> int:
    """The output tokens to ask the upstream for, before the quota caps them: the client's
    ``max_tokens`` clamped to the model's limit, or, absent, the model's limit or whatever
    still fits its context. 400 ``context_length_exceeded`` only when the prompt certainly
    leaves no room: by the lower bound of its estimate (``tokens.estimate_chat_tokens_min``;
    the upper one runs about a third high on English), so that a prompt the upstream would
    take is not refused here."""
    if chat.max_tokens is None:
        # What surely fits by the high estimate, else what may fit by the low one.
        budget = min(model.max_output_tokens, model.context_window - chat.input_tokens)
        if budget >= 1:
            return budget
        certain = _certain_input_tokens(chat)
        budget = min(model.max_output_tokens, model.context_window - certain)
        if budget < 1:
            raise errors.context_length_exceeded(
                input_tokens=certain,
                max_tokens=model.max_output_tokens,
                limit=model.context_window,
            )
        return budget
    budget = min(chat.max_tokens, model.max_output_tokens)
    # The lower bound never exceeds the upper estimate: it is needed only when that one
    # does not fit.
    if budget <= model.context_window - chat.input_tokens:
        return budget
    certain = _certain_input_tokens(chat)
    if budget > model.context_window - certain:
        raise errors.context_length_exceeded(
            input_tokens=certain, max_tokens=budget, limit=model.context_window
        )
    return budget


class _Call:
    """One request to the gateway, from its arrival to its usage record: what the steps have
    learnt so far (the key, the parsed chat, the model, the upstream target, the rate state,
    the reservation, the outcome) and the steps that need it (``relay``, ``record``)."""

    __slots__ = (
        "chat",
        "dialect",
        "endpoint",
        "exchange",
        "gateway",
        "key",
        "model",
        "model_name",
        "outcome",
        "rate",
        "request",
        "reserved",
        "served",
        "slot",
        "started",
        "stream",
        "target",
    )

    def __init__(self, gateway: Gateway, dialect: Dialect, request: Request, *, endpoint=None):
        self.started = time.perf_counter()
        self.gateway = gateway
        self.dialect = dialect
        self.request = request
        self.endpoint: str = endpoint or dialect.endpoint
        self.key: KeyRow | None = None
        self.rate: RateState | None = None
        self.chat: ChatRequest | None = None
        self.model_name = ""
        self.stream = False
        self.model: CatalogModel | None = None
        self.target: UpstreamTarget | None = None
        self.reserved: Reserved | None = None
        self.slot: Slot | None = None
        self.outcome: _Outcome | None = None
        # The upstream endpoint that answered (the one charged for), once one did, and how
        # the gateway spoke to it.
        self.served: CatalogEndpoint | None = None
        self.exchange: Exchange | None = None

    def record(self, status: int, error_code: str, outcome=None, *, day=None) -> None:
        """The request's usage record (batched) and metrics; ``day`` is its reservation's."""
        now = datetime.now(UTC)
        key = self.key
        # The client's text, recorded even for an unknown model: PostgreSQL refuses NUL in
        # text, and a batch it refuses would be retried forever, holding up every record.
        model_name = self.model_name[:128].replace("\x00", "\ufffd")
        input_tokens = outcome.input if outcome else 0
        output_tokens = outcome.output if outcome else 0
        cached_input_tokens = outcome.cached if outcome else 0
        try:
            metrics.record_gateway_request(
                dialect=self.dialect.name,
                model=model_name,
                status=status,
                error_code=error_code,
                input_tokens=input_tokens,
                output_tokens=output_tokens,
            )
        except Exception:
            # Metrics are for operators: they must never fail a request or skip its record.
            log.exception("gateway metrics could not be recorded")
        self.gateway.recorder.add(
            RecordRow(
                user_id=key.user_id,
                api_key_id=key.key_id,
                key_name=key.key_name,
                model=model_name,
                endpoint=self.endpoint,
                stream=self.stream,
                input_tokens=input_tokens,
                output_tokens=output_tokens,
                estimated=outcome.estimated if outcome else False,
                status_code=status,
                error_code=error_code[:64],
                latency_ms=int((time.perf_counter() - self.started) * 1000),
                first_token_ms=outcome.first_token_ms if outcome else None,
                # The day the request was charged to (its reservation's), even past midnight.
                day=day or quota_day(now),
                created_at=now,
                # The portal's Playground marks its requests; the header goes nowhere else.
                playground=self.request.headers.get(b"x-playground") == b"1",
                cached_input_tokens=cached_input_tokens,
                upstream_endpoint_id=self.served.id if self.served is not None else None,
            )
        )

    async def relay(self, response: StreamingResponse) -> None:
        """The upstream call, relayed in the client's dialect; fills in ``self.outcome`` (and
        settles it before the last bytes leave, when the upstream answered in full)."""
        gateway, dialect, request = self.gateway, self.dialect, self.request
        chat, model = self.chat, self.model
        outcome, reserved = self.outcome, self.reserved
        started = time.perf_counter()
        rate_headers = [
            *(dialect.rate_headers(self.rate) if self.rate else ()),
            *dialect.identity_headers(),
        ]
        extra = None
        if not settings.PRODUCTION:
            # Test and benchmark switches reach the demo upstream, and only the demo upstream,
            # and never in production (DEBUG=false when the process started; pytest flips DEBUG
            # itself): ``x-demo-tokens`` sets the usage the demo reports (``connect`` passes
            # them to demo endpoints only).
            extra = {
                name.decode(): value.decode("latin-1")
                for name, value in request.headers.items()
                if name.startswith(b"x-demo-")
            }
        watcher = _DisconnectWatcher(request.receive, asyncio.current_task())
        renderer = None
        keepalive = None
        delivered: list[bytes] = []
        usage: Usage | None = None
        upstream_sent = False
        # No request outlives this: its reservation must be settled long before the sweeper
        # could take it for an orphan, even when the client reads nothing (send() blocks).
        deadline = asyncio.timeout(settings.GATEWAY_STREAM_MAX_SECONDS)
        try:
            async with deadline, self.connect(extra) as upstream:
                if upstream.status >= 400:
                    raise upstream_http_error(upstream.status, await upstream.read())
                # From here on the upstream is producing: a failure still costs what it made.
                upstream_sent = True
                exchange = self.exchange
                if not chat.stream:
                    # The usage is the upstream's, else an estimate within the budget it was
                    # given (the upstream cannot have produced more).
                    payload, usage = exchange.completion(await upstream.read())
                    outcome.first_token_ms = int((time.perf_counter() - started) * 1000)
                    # Settled before the answer leaves: a client that got its answer sees it
                    # counted (the dashboard, its next request).
                    outcome.charge(usage)
                    await asyncio.shield(gateway._settle(reserved, outcome))
                    watcher.done = True
                    await response.send_whole(Response(200, payload, rate_headers))
                    return
                renderer = exchange.stream_renderer()
                await response.start(200, [*SSE_HEADERS, *rate_headers])
                opening = renderer.start()
                if opening:
                    await response.chunk(opening)
                keepalive = _keepalive(response, renderer)
                reader = exchange.reader(upstream)
                async for data in reader:
                    parsed, chunk_usage = exchange.chunk_usage(data)
                    if chunk_usage is not None:
                        usage = chunk_usage
                    delivered.append(data)
                    out = renderer.chunk(data, parsed)
                    if out:
                        if outcome.first_token_ms is None:
                            outcome.first_token_ms = int((time.perf_counter() - started) * 1000)
                        await response.chunk(out)
                if not reader.done:
                    raise errors.upstream_unavailable("the stream ended early")
                if usage is None:
                    usage = exchange.estimate(delivered)
                outcome.charge(usage)
                await asyncio.shield(gateway._settle(reserved, outcome))
                watcher.done = True
                await response.finish(renderer.finish(usage))
        except asyncio.CancelledError:
            if not watcher.fired:
                raise
            asyncio.current_task().uncancel()
            outcome.status, outcome.error_code = CLIENT_CLOSED_REQUEST, "client_disconnected"
        except GatewayError as error:
            await self._fail(response, error, renderer)
        except (TimeoutError, aiohttp.ServerTimeoutError):
            if deadline.expired():
                error = errors.stream_time_limit(settings.GATEWAY_STREAM_MAX_SECONDS)
            else:
                error = errors.upstream_timeout()
            await self._fail(response, error, renderer)
        except (aiohttp.ClientError, ValueError, OSError) as failure:
            log.warning("upstream %s failed: %s", model.name, failure.__class__.__name__)
            await self._fail(response, errors.upstream_unavailable(), renderer)
        except (TypeError, AttributeError, KeyError, IndexError):
            # JSON that is not a chat completion (a list, "choices": 7 …) breaks the renderers.
            # With its traceback: a bug of ours would land here too.
            log.exception(
                "upstream %s answered something that is not a chat completion", model.name
            )
            error = errors.upstream_unavailable("the answer was not a chat completion")
            await self._fail(response, error, renderer)
        finally:
            watcher.stop()
            if keepalive is not None:
                keepalive.cancel()
            if self.served is not None:
                # A failure after the answer began (a cut stream, a stall) counts against the
                # endpoint; the client's own departure or the stream limit does not.
                failed = outcome.status >= 500 and outcome.error_code != "stream_time_limit"
                gateway.router.finished(model, self.served, ok=not failed)
            if not outcome.settled:
                if usage is not None:
                    outcome.charge(usage)
                elif upstream_sent:
                    # No report: charge the prompt and what was delivered, by estimate.
                    outcome.charge(self.exchange.estimate(delivered))

    @contextlib.asynccontextmanager
    async def connect(self, extra: dict | None):
        """The upstream's response (headers in) from the first endpoint that answers: another
        endpoint is tried when one cannot be reached, sends no headers within its first-byte
        timeout, or answers 429 or 5xx, up to GATEWAY_UPSTREAM_ATTEMPTS endpoints and no new
        attempt past GATEWAY_UPSTREAM_FAILOVER_SECONDS. Nothing has reached the client yet,
        and the reservation is the same whichever endpoint answers. The last failure is raised
        as it is (a refusal in our terms for a status). Sets ``self.served``."""
        gateway, model, target = self.gateway, self.model, self.target
        loop = asyncio.get_running_loop()
        give_up_at = loop.time() + settings.GATEWAY_UPSTREAM_FAILOVER_SECONDS
        tried: set = set()
        failure: BaseException | None = None
        while True:
            endpoint = None
            if len(tried) < settings.GATEWAY_UPSTREAM_ATTEMPTS and (
                not tried or loop.time() < give_up_at
            ):
                # Holds a slot of the endpoint (after a wait in its queue when it is at its
                # cap) until ``finished``.
                endpoint = await gateway.router.acquire(model, tried, self.key.user_id)
            if endpoint is None:
                raise failure or errors.upstream_unavailable()
            tried.add(endpoint.id)
            sent_at = loop.time()
            try:
                target.upstream_model, target.base_url = endpoint.upstream_model, endpoint.base_url
                # The endpoint's protocol: the same body, or a translation, or a pass-through.
                exchange = self.exchange = exchange_for(
                    endpoint, self.dialect, self.chat, target, self.request
                )
                body = exchange.body()
                async with asyncio.timeout(
                    endpoint.first_byte_timeout or settings.UPSTREAM_READ_TIMEOUT_SECONDS
                ):
                    response = await gateway.upstream.post_chat(
                        endpoint,
                        body,
                        extra if endpoint.is_demo else exchange.headers(),
                        path=exchange.path,
                    )
            except (aiohttp.ClientError, OSError, TimeoutError) as error:
                gateway.router.finished(model, endpoint, ok=False)
                log.warning(
                    "upstream endpoint %s of %s failed before answering: %s",
                    endpoint.label,
                    model.name,
                    error.__class__.__name__,
                )
                failure = error
                continue
            except BaseException:
                gateway.router.finished(model, endpoint, ok=True)
                raise
            gateway.router.answered(model, endpoint, loop.time() - sent_at)
            if response.status == 429 or response.status >= 500:
                try:
                    answer = await response.read()
                except (aiohttp.ClientError, OSError):
                    answer = b""
                finally:
                    response.release()
                # 429 is the server shedding load: try elsewhere, but it is not a fault.
                gateway.router.finished(model, endpoint, ok=response.status == 429)
                log.warning(
                    "upstream endpoint %s of %s answered %d",
                    endpoint.label,
                    model.name,
                    response.status,
                )
                failure = upstream_http_error(response.status, answer)
                continue
            self.served = endpoint
            try:
                yield response
            finally:
                response.release()
            return

    async def _fail(self, response: StreamingResponse, error: GatewayError, renderer) -> None:
        """Note the failure in the outcome and tell the client: an error response, or an error
        event in a stream already started."""
        self.outcome.status, self.outcome.error_code = error.status, error.code
        # Bounded: a client that reads nothing must not hold the request (and its settlement)
        # open past the stream limit.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_FAIL_SEND_SECONDS):
                if response.started and renderer is not None:
                    await response.finish(renderer.error(error))
                elif not response.started:
                    await response.send_whole(error_response(error, self.dialect))
