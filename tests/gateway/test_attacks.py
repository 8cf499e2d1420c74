"""Attacks seen against production settings, replayed in-process: each test failed before the
fix it names. The books must be exact after each: usage within the quota, the counter equal
to the records, no reservation left."""

from __future__ import annotations

import asyncio
import datetime as dt
import json

import pytest
from asgiref.sync import sync_to_async

from accounts.models import User
from keys.models import ApiKey
from tests.gateway.harness import DemoUpstreamThread, GatewayClient, asgi_call
from tests.reliability.conftest import UpstreamLog, assert_books_balance, fault_upstream_app
from usage.ledger.upkeep import reservations_release_stale
from usage.models import DailyUsage, Reservation, UsageRecord

OPENAI = "/openai/v1/chat/completions"
ANTHROPIC = "/anthropic/v1/messages"
COUNT_TOKENS = "/anthropic/v1/messages/count_tokens"
MODEL = "LongCat-Flash-Chat"


@pytest.fixture(scope="module")
def fault_upstream():
    server = DemoUpstreamThread(lambda: fault_upstream_app(UpstreamLog())).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def faulty(gw, settings, fault_upstream):
    """The in-process gateway in front of the upstream with scripted faults."""
    settings.DEMO_UPSTREAM_URL = fault_upstream.url
    return gw


def _headers(key, dialect="openai", extra=None):
    headers = {"content-type": "application/json"}
    if key:
        headers["authorization"] = f"Bearer {key}"
    if dialect == "anthropic":
        headers["anthropic-version"] = "2023-06-01"
    headers.update(extra or {})
    return headers


def _body(*, stream=False, max_tokens=10):
    return json.dumps(
        {
            "model": MODEL,
            "messages": [{"role": "user", "content": "Hello!"}],
            "max_tokens": max_tokens,
            "stream": stream,
        }
    ).encode()


def _call(gw, key, *, dialect="openai", stream=False, max_tokens=10, extra=None, **kw):
    path = OPENAI if dialect == "openai" else ANTHROPIC
    return gw.request(
        "POST",
        path,
        headers=_headers(key, dialect, extra),
        body=_body(stream=stream, max_tokens=max_tokens),
        **kw,
    )


def _last_event(body: bytes) -> dict:
    payloads = [line[6:] for line in body.split(b"\n") if line.startswith(b"data: ")]
    return json.loads(next(p for p in reversed(payloads) if p != b"[DONE]"))


def _books(gw, user):
    gw.flush()
    counter = assert_books_balance(user)
    quota = User.objects.get(pk=user.pk).daily_quota
    if counter is not None and quota is not None:
        assert counter.input_tokens + counter.output_tokens <= quota
    return counter


# --- 1. long streams ------------------------------------------------------------------------
@pytest.mark.parametrize("dialect", ["openai", "anthropic"])
def test_it_ends_a_stream_at_the_time_limit_and_charges_what_was_delivered(
    gw, alice_key, settings, dialect
):
    user, key = alice_key
    settings.GATEWAY_STREAM_MAX_SECONDS = 0.5
    slow = {"x-demo-delay-ms": "50", "x-demo-tokens": "200"}
    result = _call(gw, key, dialect=dialect, stream=True, max_tokens=200, extra=slow)
    assert result.status == 200
    last = _last_event(result.body)
    if dialect == "openai":
        assert b"[DONE]" not in result.body
        assert last["error"]["code"] == "stream_time_limit"
    else:
        assert b"event: error" in result.body
        assert last["type"] == "error"
        assert "limit" in last["error"]["message"]
    counter = _books(gw, user)
    record = UsageRecord.objects.get(user=user)
    assert (record.status_code, record.error_code) == (504, "stream_time_limit")
    assert 0 < record.output_tokens < 200
    assert counter.output_tokens == record.output_tokens


def test_it_keeps_a_live_request_s_reservation_from_the_sweeper(gw, alice_key, settings):
    user, key = alice_key
    settings.GATEWAY_RESERVATION_LEASE_SECONDS = 0.3

    async def scenario():
        call = asyncio.ensure_future(
            asgi_call(
                gw.app,
                "POST",
                OPENAI,
                headers=_headers(key, extra={"x-demo-delay-ms": "50", "x-demo-tokens": "40"}),
                body=_body(stream=True, max_tokens=40),
            )
        )
        exists = sync_to_async(Reservation.objects.filter(user=user).exists)
        while not await exists():
            await asyncio.sleep(0.02)
        # Three lease lengths: only the process's renewals keep the reservation leased.
        await asyncio.sleep(1.0)
        swept = await sync_to_async(reservations_release_stale)(older_than=dt.timedelta(0))
        return swept, await call

    swept, result = gw.run(scenario())
    assert swept == (0, 0)
    assert result.status == 200 and result.body.endswith(b"data: [DONE]\n\n")
    counter = _books(gw, user)
    assert counter.output_tokens == 40


def test_it_refuses_a_stream_limit_the_sweeper_could_overtake(settings):
    from gateway.checks import request_lifetime_check

    settings.RESERVATION_STALE_SECONDS = 900
    settings.GATEWAY_STREAM_MAX_SECONDS = 600
    settings.GATEWAY_SETTLE_RETRY_SECONDS = 120
    assert request_lifetime_check(None) == []
    settings.GATEWAY_STREAM_MAX_SECONDS = 900
    assert [error.id for error in request_lifetime_check(None)] == ["gateway.E002"]


# --- 2. text the estimate must count ----------------------------------------------------------
def test_it_counts_every_text_field_of_a_delta_at_least_one_token_per_chunk():
    from gateway.serving.tokens import streamed_output_tokens

    chunks = [
        json.dumps({"choices": [{"delta": delta}]}).encode()
        for delta in (
            {"reasoning_content": "x"},
            {"reasoning": "y"},
            {"tool_calls": [{"index": 0, "function": {"arguments": "{"}}]},
            {"content": "z"},
            {"role": "assistant"},
        )
    ]
    assert streamed_output_tokens(chunks) == 4


def test_it_charges_the_reasoning_of_an_abandoned_stream(faulty, alice_key):
    # OpenAI clients see reasoning_content as is. (Anthropic clients are not shown reasoning
    # while the catalog cannot say which models reason; the same estimate counts it for them.)
    user, key = alice_key
    result = _call(
        faulty,
        key,
        stream=True,
        max_tokens=500,
        extra={"x-demo-test-fault": "reasoning", "x-demo-tokens": "300"},
        disconnect_after_chunks=30,
    )
    assert result.status == 200
    _books(faulty, user)
    record = UsageRecord.objects.get(user=user)
    assert (record.status_code, record.estimated) == (499, True)
    # At least a token for each reasoning chunk that reached the client.
    assert record.output_tokens >= 25


# --- 3. usage the upstream (or the client) reports ------------------------------------------------
@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("fault", ["negative", "overreport"])
def test_it_clamps_the_charge_to_the_reservation(faulty, alice_key, fault, stream, caplog):
    user, key = alice_key
    User.objects.filter(pk=user.pk).update(daily_quota=200)
    for _ in range(2):
        result = _call(
            faulty, key, stream=stream, max_tokens=50, extra={"x-demo-test-fault": fault}
        )
        assert result.status == 200, result.body
    counter = _books(faulty, user)
    assert counter.output_tokens >= 0 and counter.input_tokens >= 0
    if fault == "negative":
        assert counter.output_tokens == 0
    assert "usage clamped to the reservation" in caplog.text


def test_it_does_not_forward_demo_switches_in_production(gw, alice_key, settings):
    user, key = alice_key
    settings.PRODUCTION = True
    result = _call(gw, key, max_tokens=10, extra={"x-demo-tokens": "-64000"})
    assert result.status == 200
    assert result.json()["usage"]["completion_tokens"] == 10
    assert _books(gw, user).output_tokens == 10


def test_it_answers_and_records_when_the_metrics_fail(gw, alice_key, monkeypatch):
    from observability import metrics

    def broken(**_kwargs):
        raise RuntimeError("the metrics directory is gone")

    monkeypatch.setattr(metrics, "record_gateway_request", broken)
    user, key = alice_key
    assert _call(gw, key).status == 200
    assert _call(gw, None).status == 401
    _books(gw, user)
    assert UsageRecord.objects.filter(user=user).count() == 1


# --- 4. resource exhaustion ---------------------------------------------------------------------
def test_it_checks_the_request_rate_before_reading_the_body(
    one_rate_window, gw, alice_key, settings, monkeypatch
):
    from gateway.serving.http import Request

    settings.RATE_LIMIT_RPM = 1
    reads = []
    original = Request.body

    async def counted(self, limit):
        reads.append(self.path)
        return await original(self, limit)

    monkeypatch.setattr(Request, "body", counted)
    user, key = alice_key
    assert _call(gw, key).status == 200
    refused = _call(gw, key)
    assert refused.status == 429
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert len(reads) == 1
    _books(gw, user)


def test_it_rate_limits_and_records_count_tokens(one_rate_window, gw, alice_key, settings):
    user, key = alice_key
    settings.RATE_LIMIT_RPM = 2
    payload = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "Hi"}]})
    answers = [
        gw.request("POST", COUNT_TOKENS, headers=_headers(key, "anthropic"), body=payload.encode())
        for _ in range(3)
    ]
    assert [a.status for a in answers] == [200, 200, 429]
    assert answers[2].json()["error"]["type"] == "rate_limit_error"
    assert answers[2].headers["retry-after"]
    _books(gw, user)
    rows = UsageRecord.objects.filter(user=user)
    assert sorted(r.status_code for r in rows) == [200, 200, 429]
    assert {(r.endpoint, r.input_tokens, r.output_tokens) for r in rows} == {
        ("anthropic.count_tokens", 0, 0)
    }


def test_it_refuses_count_tokens_for_a_revoked_key_at_once(gw, alice_key):
    _user, key = alice_key
    payload = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "Hi"}]})

    def count():
        return gw.request(
            "POST", COUNT_TOKENS, headers=_headers(key, "anthropic"), body=payload.encode()
        )

    assert count().status == 200
    ApiKey.objects.update(is_active=False)
    assert count().status == 403


@pytest.mark.parametrize("dialect", ["openai", "anthropic"])
def test_it_answers_503_when_the_body_budget_is_spent(gw, alice_key, settings, dialect):
    user, key = alice_key
    settings.GATEWAY_BODY_BUDGET_BYTES = 1000
    gw.run(gw.app._started())
    gw.gateway._body_bytes_in_flight = 900  # another request's body is being parsed
    busy = _call(gw, key, dialect=dialect)
    assert busy.status == 503
    assert busy.headers["retry-after"] == "1"
    gw.gateway._body_bytes_in_flight = 0
    assert _call(gw, key, dialect=dialect).status == 200
    _books(gw, user)


@pytest.mark.parametrize("dialect", ["openai", "anthropic"])
def test_it_limits_failed_key_checks_per_address(gw, alice_key, settings, dialect):
    settings.GATEWAY_AUTH_FAILURES_PER_MINUTE = 3
    bad = "sk-" + "x" * 48
    statuses = [_call(gw, bad, dialect=dialect).status for _ in range(3)]
    assert statuses == [401, 401, 401]
    refused = _call(gw, bad, dialect=dialect)
    assert refused.status == 429
    assert refused.headers["retry-after"]
    if dialect == "openai":
        assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    else:
        assert refused.json()["error"]["type"] == "rate_limit_error"
    # Refused without a database lookup from then on, in this process.
    trips = gw.gateway.ledger.round_trips
    assert _call(gw, bad, dialect=dialect).status == 429
    assert gw.gateway.ledger.round_trips == trips


# --- 5. the quota day and settlement -------------------------------------------------------------
def test_it_records_a_request_on_the_day_it_was_charged_to(gw, alice_key, monkeypatch):
    from gateway.serving import pipeline

    user, key = alice_key
    first = pipeline.quota_day()
    days = iter([first])
    # The reservation is made on one day; midnight passes before the request is recorded.
    monkeypatch.setattr(pipeline, "quota_day", lambda *a: next(days, first + dt.timedelta(1)))
    assert _call(gw, key).status == 200
    _books(gw, user)
    assert UsageRecord.objects.get(user=user).day == DailyUsage.objects.get(user=user).day == first


class _FlakySettle:
    """A ledger whose first ``failures`` settlements lose the connection (after committing,
    with ``committed``)."""

    def __init__(self, inner, *, failures, committed=False):
        self.inner = inner
        self.failures = failures
        self.committed = committed
        self.retries: list[bool] = []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    async def settle(self, **kwargs):
        self.retries.append(kwargs.get("retry", False))
        if self.failures:
            self.failures -= 1
            if self.committed:
                await self.inner.settle(**kwargs)
            raise ConnectionResetError("the database went away")
        return await self.inner.settle(**kwargs)


@pytest.mark.parametrize("committed", [False, True])
@pytest.mark.parametrize("stream", [False, True])
def test_it_retries_a_failed_settlement_and_charges_once(
    transactional_db, gateway_settings, demo_model, alice_key, committed, stream
):
    from usage.ledger import ledger_for_database

    user, key = alice_key
    ledgers = []

    def factory():
        ledgers.append(_FlakySettle(ledger_for_database(), failures=2, committed=committed))
        return ledgers[0]

    client = GatewayClient(ledger_factory=factory)
    try:
        result = _call(client, key, stream=stream)
        assert result.status == 200
        pending = list(client.gateway._settling)

        async def settled():
            await asyncio.gather(*pending)

        client.run(settled())
        counter = _books(client, user)
    finally:
        client.close()
    # Two lost connections, then the third attempt answers; when the first had committed, the
    # retries find the reservation gone and charge nothing more.
    assert ledgers[0].retries == [False, True, True]
    record = UsageRecord.objects.get(user=user)
    assert counter.requests == 1
    assert counter.output_tokens == record.output_tokens == 10
