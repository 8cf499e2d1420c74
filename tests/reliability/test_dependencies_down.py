"""The database or Redis goes away (or stalls) under a live gateway, and comes back.

The servers reach PostgreSQL and Redis through a TCP proxy owned by the test, so that the
shared services stay up for everyone else. PostgreSQL only for the database case: the embedded
SQLite is a file in the server's own process, it cannot be unreachable.
"""

from __future__ import annotations

import datetime as dt
import time
import uuid

import pytest
import requests
from django.conf import settings
from django.db import connection

from tests.acceptance.live import database_url, demo_upstream, gateway_servers
from tests.reliability.conftest import TcpProxy, assert_books_balance, settled_records

pytestmark = pytest.mark.slow

MODEL = "LongCat-Flash-Chat"
HELLO = {"model": MODEL, "messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 10}
# The longest a request may take to be refused while a dependency is down or stalled.
ANSWER_WITHIN_SECONDS = 6.0


def _chat(base_url, key, dialect="openai"):
    if dialect == "openai":
        path, headers = "/openai/v1/chat/completions", {}
    else:
        path, headers = "/anthropic/v1/messages", {"anthropic-version": "2023-06-01"}
    started = time.monotonic()
    response = requests.post(
        base_url + path,
        json=HELLO,
        headers={"Authorization": f"Bearer {key}", **headers},
        timeout=60,
    )
    return response, time.monotonic() - started


def _health(base_url):
    response = requests.get(base_url + "/healthz", timeout=30)
    return response.status_code, response.json()["checks"]


def _until(probe, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if probe():
            return True
        time.sleep(0.25)
    return probe()


def _assert_unavailable(response, elapsed, dialect):
    assert response.status_code == 503, response.text
    assert elapsed < ANSWER_WITHIN_SECONDS, f"took {elapsed:.1f} s"
    body = response.json()
    if dialect == "openai":
        assert body["error"]["code"] == "service_unavailable"
        assert body["error"]["message"]
    else:
        assert body["type"] == "error"
        assert body["error"]["type"] == "overloaded_error"
    assert "retry-after" in response.headers


@pytest.fixture
def postgres_proxy(transactional_db):
    if connection.vendor != "postgresql":
        pytest.skip("needs PostgreSQL: the embedded SQLite cannot become unreachable")
    db = connection.settings_dict
    proxy = TcpProxy(db["HOST"] or "127.0.0.1", int(db["PORT"] or 5432)).start()
    try:
        yield proxy
    finally:
        proxy.stop()


@pytest.fixture
def gateway_behind_proxy(postgres_proxy, live_key):
    with (
        demo_upstream() as upstream,
        gateway_servers(
            1,
            DATABASE_URL=postgres_proxy.url_for(database_url()),
            DEMO_UPSTREAM_URL=upstream,
            RATE_LIMIT_RPM=100000,
            DATABASE_CONNECT_TIMEOUT_SECONDS=2,
            GATEWAY_DATABASE_TIMEOUT_SECONDS=2,
        ) as (base_url,),
    ):
        response, _ = _chat(base_url, live_key[1])
        assert response.status_code == 200, response.text
        yield base_url


@pytest.mark.parametrize("fault", ["down", "stall"])
def test_the_gateway_answers_503_quickly_without_its_database_and_recovers(
    postgres_proxy, gateway_behind_proxy, live_key, fault
):
    user, key = live_key
    base_url = gateway_behind_proxy
    getattr(postgres_proxy, fault)()
    try:
        for dialect in ("openai", "anthropic"):
            response, elapsed = _chat(base_url, key, dialect)
            _assert_unavailable(response, elapsed, dialect)
        started = time.monotonic()
        status, checks = _health(base_url)
        assert time.monotonic() - started < ANSWER_WITHIN_SECONDS
        assert status == 503
        assert checks["database"]["ok"] is False
    finally:
        postgres_proxy.up()

    assert _until(lambda: _chat(base_url, key)[0].status_code == 200), "no recovery"
    assert _until(lambda: _health(base_url)[0] == 200), "/healthz never recovered"
    if fault == "stall":
        # A reservation statement held up in the network reaches the database after its
        # request gave up: it stays until the sweeper's cut-off. Sweep now (nothing else is
        # in flight): at most the two refused requests left one each. Nobody renews their
        # leases (their requests are over), so they are orphans once the lease has run out.
        from django.conf import settings
        from django.utils import timezone

        from usage.ledger.upkeep import reservations_release_stale

        lease = dt.timedelta(seconds=settings.GATEWAY_RESERVATION_LEASE_SECONDS + 1)
        released, _tokens = reservations_release_stale(
            older_than=dt.timedelta(0), now=timezone.now() + lease
        )
        assert released <= 2
    # Every request left one record (the refusals are written once the database is back),
    # and nothing stayed reserved.
    records = settled_records(user, 4, timeout=20)
    assert [r.status_code for r in records].count(503) == 2
    assert records[0].status_code == 200 and records[-1].status_code == 200
    assert_books_balance(user)


@pytest.fixture
def redis_proxy():
    if not settings.REDIS_URL:
        pytest.skip("needs Redis: without REDIS_URL the limits are counted in-process")
    from urllib.parse import urlsplit

    parts = urlsplit(settings.REDIS_URL)
    proxy = TcpProxy(parts.hostname or "127.0.0.1", parts.port or 6379).start()
    try:
        yield proxy
    finally:
        proxy.stop()


def _wait_for_a_fresh_minute(needed_seconds: float = 25) -> None:
    # Limits count in one-minute windows: keep the whole test inside one window.
    into = time.time() % 60
    if into > 60 - needed_seconds:
        time.sleep(60 - into + 0.5)


def test_rate_limits_fail_open_without_redis_and_hold_again_when_it_returns(
    redis_proxy, live_key, capfd
):
    """Documented choice (gateway.serving.ratelimit, README): fail open with a warning. The daily
    quota, which protects the money, lives in the database and still holds."""
    from keys.models import ApiKey

    user, key = live_key
    ApiKey.objects.filter(user=user).update(rate_limit_rpm=3)
    with (
        demo_upstream() as upstream,
        gateway_servers(
            1,
            REDIS_URL=redis_proxy.url_for(settings.REDIS_URL),
            DEMO_UPSTREAM_URL=upstream,
            # Key ids repeat across test databases (xdist workers, CI runs): count apart.
            CACHE_KEY_PREFIX=f"test-{uuid.uuid4().hex}",
        ) as (base_url,),
    ):
        _wait_for_a_fresh_minute()
        statuses = [_chat(base_url, key)[0].status_code for _ in range(4)]
        assert statuses == [200, 200, 200, 429]

        redis_proxy.down()
        try:
            outage = [_chat(base_url, key) for _ in range(3)]
            assert [r.status_code for r, _ in outage] == [200, 200, 200]
            assert max(elapsed for _, elapsed in outage) < 3.0
            status, checks = _health(base_url)
            assert status == 503
            assert checks["cache"]["ok"] is False
            assert checks["database"]["ok"] is True
        finally:
            redis_proxy.up()

        # Back: the window Redis kept still holds the three admitted before the outage.
        assert _until(lambda: _chat(base_url, key)[0].status_code == 429, timeout=10)
        assert _until(lambda: _health(base_url)[0] == 200), "/healthz never recovered"
    assert "rate limiter: Redis unavailable" in capfd.readouterr().err
    settled_records(user, 8)
    assert_books_balance(user)


def test_many_requests_at_once_on_a_stalled_database_all_get_503(
    postgres_proxy, gateway_behind_proxy, live_key
):
    """More requests than the gateway has database connections: those waiting for a
    connection must get the same quick 503 as those holding one, not a dropped connection."""
    from concurrent.futures import ThreadPoolExecutor

    _user, key = live_key
    postgres_proxy.stall()
    try:
        with ThreadPoolExecutor(max_workers=24) as pool:
            answers = list(pool.map(lambda _: _chat(gateway_behind_proxy, key), range(24)))
    finally:
        postgres_proxy.up()
    statuses = sorted(response.status_code for response, _ in answers)
    assert statuses == [503] * 24
    assert max(elapsed for _, elapsed in answers) < ANSWER_WITHIN_SECONDS * 2


# Once the database is back, every path (key lookup, catalog, reservation, /healthz) serves
# again within this long: none of them may keep a connection that broke during the cut.
RECOVER_WITHIN_SECONDS = 5.0


def test_it_recovers_chat_within_seconds_after_a_cut_longer_than_the_catalog_snapshot(
    postgres_proxy, gateway_behind_proxy, live_key
):
    """The catalog's snapshot is refreshed during the cut (it is older than its 5 s life by
    then), on a connection the cut broke. Production saw chat answer 503 for 90 s+ after the
    database returned while /healthz said 200: that connection was never replaced."""
    _user, key = live_key
    base_url = gateway_behind_proxy
    postgres_proxy.down()
    try:
        cut_until = time.monotonic() + 7
        while time.monotonic() < cut_until:
            response, _ = _chat(base_url, key)
            assert response.status_code == 503, response.text
            time.sleep(0.5)
    finally:
        postgres_proxy.up()
    back = time.monotonic()
    assert _until(lambda: _chat(base_url, key)[0].status_code == 200, RECOVER_WITHIN_SECONDS), (
        "chat did not recover"
    )
    # Steady again, not a lucky request: every one answers.
    assert [_chat(base_url, key)[0].status_code for _ in range(5)] == [200] * 5
    assert _until(lambda: _health(base_url)[0] == 200, RECOVER_WITHIN_SECONDS)
    assert time.monotonic() - back < RECOVER_WITHIN_SECONDS * 2


def test_healthz_checks_the_gateways_own_connections_and_catalog(
    postgres_proxy, gateway_behind_proxy
):
    status, checks = _health(gateway_behind_proxy)
    assert status == 200
    assert checks["gateway_ledger"]["ok"] is True
    assert checks["gateway_catalog"]["ok"] is True
    postgres_proxy.down()
    time.sleep(1.1)  # the catalog probe reuses a load under a second old
    try:
        status, checks = _health(gateway_behind_proxy)
        assert status == 503
        assert checks["gateway_ledger"]["ok"] is False
        assert checks["gateway_catalog"]["ok"] is False
    finally:
        postgres_proxy.up()
    assert _until(lambda: _health(gateway_behind_proxy)[0] == 200, RECOVER_WITHIN_SECONDS)


def test_a_stream_that_ends_while_postgresql_is_down_is_charged_once_it_is_back(
    postgres_proxy, gateway_behind_proxy, live_key
):
    import threading

    user, key = live_key
    outcome = {}

    def stream():
        # 40 tokens at 100 ms: PostgreSQL goes away under it and is still away at its end.
        with requests.post(
            gateway_behind_proxy + "/openai/v1/chat/completions",
            json={**HELLO, "max_tokens": 40, "stream": True},
            headers={
                "Authorization": f"Bearer {key}",
                "x-demo-delay-ms": "100",
                "x-demo-tokens": "40",
            },
            stream=True,
            timeout=60,
        ) as response:
            outcome["status"] = response.status_code
            outcome["text"] = response.content.decode()

    reader = threading.Thread(target=stream)
    reader.start()
    time.sleep(1.0)
    postgres_proxy.down()
    try:
        reader.join(30)
        # The answer reached the client whole; its settlement waits for the database.
        assert outcome["status"] == 200
        assert outcome["text"].rstrip().endswith("data: [DONE]")
        time.sleep(2.0)
    finally:
        postgres_proxy.up()
    # Retried with backoff (GATEWAY_SETTLE_RETRY_SECONDS): charged once, nothing left reserved.
    records = settled_records(user, 2, timeout=30)
    assert [r.status_code for r in records] == [200, 200]
    counter = assert_books_balance(user)
    assert counter.output_tokens == 10 + 40
    assert counter.requests == 2
