"""Attacks on the quota seen against production settings, replayed black-box: two uvicorn
processes serving ``portal.asgi`` on the test database (PostgreSQL + Redis in CI), the
stale-reservation sweeper run as beat runs it, short time settings instead of 15-minute waits.

After each attack the books must be exact: usage within the quota, the counter equal to the
sum of the records, no reservation left.
"""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest
import requests

from accounts.models import User
from tests.acceptance.live import gateway_servers
from tests.reliability.conftest import assert_books_balance, settled_records
from usage.ledger import upkeep
from usage.models import DailyUsage, Reservation, UsageRecord

pytestmark = pytest.mark.slow

MODEL = "LongCat-Flash-Chat"
OPENAI = "/openai/v1/chat/completions"
ANTHROPIC = "/anthropic/v1/messages"
STALE_SECONDS = 4
STREAM_MAX_SECONDS = 2
BODY_BUDGET = 1_000_000


@pytest.fixture(scope="module")
def servers(fault_upstream, django_db_setup):
    env = {
        "DEMO_UPSTREAM_URL": fault_upstream.url,
        "RATE_LIMIT_RPM": 100000,
        "RESERVATION_STALE_SECONDS": STALE_SECONDS,
        "GATEWAY_STREAM_MAX_SECONDS": STREAM_MAX_SECONDS,
        "GATEWAY_SETTLE_RETRY_SECONDS": 1,
        "GATEWAY_RESERVATION_LEASE_SECONDS": 1,
        "GATEWAY_BODY_BUDGET_BYTES": BODY_BUDGET,
    }
    with gateway_servers(2, **env) as urls:
        yield urls


@pytest.fixture
def stale_seconds(settings):
    # The sweeper runs in this process: the same threshold as the servers.
    settings.RESERVATION_STALE_SECONDS = STALE_SECONDS
    return STALE_SECONDS


def _headers(key: str, dialect: str = "openai", extra=None) -> dict:
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    if dialect == "anthropic":
        headers["anthropic-version"] = "2023-06-01"
    headers.update(extra or {})
    return headers


def _body(*, stream: bool, max_tokens: int) -> dict:
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Hello!"}],
        "max_tokens": max_tokens,
        "stream": stream,
    }


def _within_quota(user, quota: int) -> DailyUsage:
    counter = assert_books_balance(user)
    assert counter.input_tokens + counter.output_tokens <= quota
    return counter


def test_a_stream_held_past_the_stale_threshold_cannot_spend_past_the_quota(
    servers, live_key, stale_seconds
):
    user, key = live_key
    quota = 1_000
    User.objects.filter(pk=user.pk).update(daily_quota=quota)
    # A slow stream: 100 tokens at 100 ms, 10 s without a limit, reserving most of the quota.
    slow = {}

    def stream():
        with requests.post(
            servers[0] + OPENAI,
            json=_body(stream=True, max_tokens=900),
            headers=_headers(key, extra={"x-demo-delay-ms": "100", "x-demo-tokens": "100"}),
            stream=True,
            timeout=30,
        ) as response:
            slow["status"] = response.status_code
            slow["text"] = response.content.decode()
            slow["ended"] = time.monotonic()

    started = time.monotonic()
    reader = threading.Thread(target=stream)
    reader.start()
    # Past the stale threshold, the sweeper runs (beat sends it every five minutes).
    time.sleep(stale_seconds + 1)
    upkeep.reservations_release_stale(older_than=upkeep.reservation_stale_after())
    # Another request, on the other process, asks for all that is left.
    other = requests.post(
        servers[1] + OPENAI,
        json=_body(stream=False, max_tokens=980),
        headers=_headers(key, extra={"x-demo-tokens": "980"}),
        timeout=30,
    )
    reader.join(30)

    records = settled_records(user, 2)
    _within_quota(user, quota)
    assert other.status_code == 200
    assert slow["status"] == 200
    assert slow["ended"] - started < STREAM_MAX_SECONDS + 2
    last = json.loads(slow["text"].strip().splitlines()[-1][6:])
    assert last["error"]["code"] == "stream_time_limit"
    cut = next(r for r in records if r.stream)
    assert (cut.status_code, cut.error_code) == (504, "stream_time_limit")
    assert 0 < cut.output_tokens < 100


def test_a_client_that_reads_nothing_is_cut_at_the_limit_and_charged(
    servers, live_key, stale_seconds
):
    user, key = live_key
    host, port = servers[0].rsplit("//", 1)[1].split(":")
    data = json.dumps(_body(stream=True, max_tokens=8000)).encode()
    head = (
        f"POST {OPENAI} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {key}\r\nx-demo-tokens: 8000\r\nx-demo-delay-ms: 5\r\n"
        f"Content-Length: {len(data)}\r\n\r\n"
    ).encode()
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(head + data)
        # The client reads nothing; the upstream keeps producing. By the limit (and well before
        # the sweeper's threshold) the request is over: settled and recorded.
        (record,) = settled_records(user, 1, timeout=STREAM_MAX_SECONDS + 8)
        assert not Reservation.objects.filter(user=user).exists()
    assert (record.status_code, record.error_code) == (504, "stream_time_limit")
    assert 0 < record.output_tokens <= 8000
    assert_books_balance(user)


def test_a_client_that_leaves_during_reasoning_pays_for_it(servers, live_key):
    user, key = live_key
    seen = 0
    with requests.post(
        servers[0] + OPENAI,
        json=_body(stream=True, max_tokens=2000),
        headers=_headers(key, extra={"x-demo-test-fault": "reasoning", "x-demo-tokens": "1000"}),
        stream=True,
        timeout=30,
    ) as response:
        for line in response.iter_lines():
            if b"reasoning_content" in line:
                seen += 1
                if seen == 40:
                    break
    (record,) = settled_records(user, 1)
    assert (record.status_code, record.error_code) == (499, "client_disconnected")
    assert record.output_tokens >= seen
    assert_books_balance(user)


@pytest.mark.parametrize("dialect", ["openai", "anthropic"])
@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("fault", ["negative", "overreport"])
def test_usage_the_upstream_misreports_is_clamped_to_the_reservation(
    servers, live_key, fault, stream, dialect
):
    user, key = live_key
    quota = 300
    User.objects.filter(pk=user.pk).update(daily_quota=quota)
    for server in servers:
        response = requests.post(
            server + (OPENAI if dialect == "openai" else ANTHROPIC),
            json=_body(stream=stream, max_tokens=100),
            headers=_headers(key, dialect, {"x-demo-test-fault": fault}),
            timeout=30,
        )
        assert response.status_code == 200, response.text
    settled_records(user, 2)
    counter = _within_quota(user, quota)
    assert counter.output_tokens >= 0
    if fault == "negative":
        assert counter.output_tokens == 0
    assert UsageRecord.objects.filter(user=user, output_tokens__lt=0).count() == 0


def test_a_negative_demo_token_count_refunds_nothing(servers, live_key):
    user, key = live_key
    quota = 2_000
    User.objects.filter(pk=user.pk).update(daily_quota=quota)
    answers = [
        requests.post(
            servers[0] + OPENAI,
            json=_body(stream=False, max_tokens=50),
            headers=_headers(key, extra={"x-demo-tokens": tokens}),
            timeout=30,
        )
        for tokens in ("50", "-64000", "-1")
    ]
    assert [a.status_code for a in answers] == [200, 200, 200]
    settled_records(user, 3)
    counter = _within_quota(user, quota)
    assert counter.output_tokens == 50


def test_bodies_read_at_once_are_bounded_per_process(servers, live_key):
    user, key = live_key
    host, port = servers[0].rsplit("//", 1)[1].split(":")
    # 900 kB: two do not fit the budget at once, and even the low estimate not the model.
    text = "word " * 180_000
    data = json.dumps(
        {"model": MODEL, "max_tokens": 5, "messages": [{"role": "user", "content": text}]}
    ).encode()
    head = (
        f"POST {OPENAI} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {key}\r\nContent-Length: {len(data)}\r\n\r\n"
    ).encode()
    with socket.create_connection((host, int(port)), timeout=10) as slow:
        # One client sends its large body slowly: the process holds its size while it reads.
        slow.sendall(head + data[:1000])
        time.sleep(0.5)
        busy = requests.post(servers[0] + OPENAI, data=data, headers=_headers(key), timeout=30)
        assert busy.status_code == 503
        assert busy.json()["error"]["code"] == "server_busy"
        assert busy.headers["retry-after"] == "1"
        # The other process has its own budget: read and judged (too long for the model).
        other = requests.post(servers[1] + OPENAI, data=data, headers=_headers(key), timeout=30)
        assert other.json()["error"]["code"] == "context_length_exceeded"
        slow.sendall(data[1000:])
        assert slow.recv(65536).startswith(b"HTTP/1.1 400")
    settled_records(user, 3)
    assert_books_balance(user)
