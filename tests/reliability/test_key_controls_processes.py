"""A key's controls across two gateway processes on PostgreSQL and Redis: the daily cap never
overspent, a change in the portal applied by both at once, the concurrency limit held by both
(and freed after streams end and after a process is killed), and one alert per threshold
though both processes settle at once.

PostgreSQL and Redis only: the embedded defaults (SQLite, no Redis) run one server process.
"""

import asyncio
import contextlib
import json
import signal
import threading
import time

import aiohttp
import pytest
import requests
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core import mail
from django.db import connection

from alerts import delivery
from alerts.models import Alert
from gateway.models import Model
from keys.models import ApiKey
from keys.services import api_key_set_controls
from tests.acceptance.conftest import wait_for
from tests.acceptance.live import demo_upstream, gateway_servers, start_gateway_server
from tests.acceptance.live import wait_for_port as wait_for_server
from usage.models import KeyDailyUsage, Reservation
from usage.quota import quota_day

pytestmark = pytest.mark.slow

MODEL = "LongCat-Flash-Chat"
HELLO = [{"role": "user", "content": "Hello!"}]
SERVER_ENV = {"RATE_LIMIT_RPM": 1_000_000, "GATEWAY_CONCURRENCY_LEASE_SECONDS": 2}


@pytest.fixture
def live(transactional_db):
    if connection.vendor != "postgresql" or not settings.REDIS_URL:
        pytest.skip("needs PostgreSQL and Redis (the embedded defaults run one process)")
    from accounts.services import account_create_with_key
    from gateway.services import catalog_bootstrap

    catalog_bootstrap()
    user, key = account_create_with_key(email="two@example.com")
    with demo_upstream() as upstream:
        yield user, key, upstream


def chat(url, key, *, model=MODEL, stream=False, headers=None, timeout=30):
    return requests.post(
        f"{url}/openai/v1/chat/completions",
        json={"model": model, "messages": HELLO, "max_tokens": 50, "stream": stream},
        headers={"Authorization": f"Bearer {key}", **(headers or {})},
        timeout=timeout,
    )


def code(response):
    return response.json()["error"]["code"] if response.status_code != 200 else "ok"


async def _burst(urls, key, count, *, extra_headers=None):
    outcomes = []
    async with aiohttp.ClientSession() as session:

        async def one(n):
            url = urls[n % len(urls)]
            payload = {"model": MODEL, "messages": HELLO, "max_tokens": 200}
            headers = {
                "Authorization": f"Bearer {key}",
                "x-demo-tokens": "200",
                **(extra_headers or {}),
            }
            async with session.post(
                f"{url}/openai/v1/chat/completions", data=json.dumps(payload), headers=headers
            ) as response:
                body = await response.read()
                outcomes.append(
                    "ok" if response.status == 200 else json.loads(body)["error"]["code"]
                )

        await asyncio.gather(*(one(n) for n in range(count)))
    return outcomes


def test_a_keys_daily_cap_is_never_overspent_across_two_processes(live):
    user, key, upstream = live
    api_key = ApiKey.objects.get(user=user)
    api_key_set_controls(api_key=api_key, daily_token_cap=6_000)
    with gateway_servers(2, DEMO_UPSTREAM_URL=upstream, **SERVER_ENV) as urls:
        outcomes = asyncio.run(_burst(urls, key, 120))
        assert set(outcomes) == {"ok", "key_daily_limit_exceeded"}, set(outcomes)
        wait_for(lambda: not Reservation.objects.filter(user=user).exists(), timeout=15)
    counter = KeyDailyUsage.objects.get(api_key=api_key, day=quota_day())
    assert counter.reserved_tokens == 0
    assert 6_000 * 0.9 < counter.used_tokens <= 6_000


def test_a_control_changed_in_the_portal_applies_in_both_processes_within_a_second(live):
    user, key, upstream = live
    Model.objects.create(name="other-chat", upstream_kind=Model.UpstreamKind.DEMO)
    api_key = ApiKey.objects.get(user=user)
    with gateway_servers(2, DEMO_UPSTREAM_URL=upstream, **SERVER_ENV) as urls:
        assert [code(chat(url, key)) for url in urls] == ["ok", "ok"]  # both cache the key
        api_key_set_controls(api_key=api_key, allowed_models=["other-chat"])
        changed = time.monotonic()
        assert [code(chat(url, key)) for url in urls] == ["model_not_allowed"] * 2
        api_key_set_controls(api_key=api_key, allowed_models=[], allowed_ips=["203.0.113.0/24"])
        assert [code(chat(url, key)) for url in urls] == ["ip_not_allowed"] * 2
        api_key_set_controls(api_key=api_key, allowed_ips=[])
        assert [code(chat(url, key)) for url in urls] == ["ok", "ok"]
        assert time.monotonic() - changed < 1.0


def _stream_holding(url, key) -> tuple[threading.Thread, threading.Event]:
    started = threading.Event()

    def run():
        with (
            contextlib.suppress(requests.RequestException),
            requests.post(
                f"{url}/openai/v1/chat/completions",
                json={"model": MODEL, "messages": HELLO, "max_tokens": 50, "stream": True},
                headers={
                    "Authorization": f"Bearer {key}",
                    "x-demo-delay-ms": "200",
                    "x-demo-tokens": "15",
                },
                stream=True,
                timeout=30,
            ) as response,
        ):
            for _line in response.iter_lines():
                started.set()

    thread = threading.Thread(target=run)
    thread.start()
    return thread, started


def test_the_concurrency_limit_holds_across_processes_and_frees_its_slots(live):
    user, key, upstream = live
    api_key_set_controls(api_key=ApiKey.objects.get(user=user), max_concurrent_requests=2)
    with gateway_servers(2, DEMO_UPSTREAM_URL=upstream, **SERVER_ENV) as (a, b):
        holders = [_stream_holding(url, key) for url in (a, b)]
        assert all(started.wait(10) for _thread, started in holders)
        assert [code(chat(url, key)) for url in (a, b)] == ["concurrency_limit_exceeded"] * 2
        for thread, _started in holders:
            thread.join(30)
        # Both streams ended: their slots are back in both processes.
        assert [code(chat(url, key)) for url in (a, b)] == ["ok", "ok"]


def test_the_slots_of_a_killed_process_expire_with_their_lease(live):
    user, key, upstream = live
    api_key_set_controls(api_key=ApiKey.objects.get(user=user), max_concurrent_requests=2)
    env = {"DEMO_UPSTREAM_URL": upstream, **SERVER_ENV}
    with gateway_servers(1, **env) as (survivor,):
        doomed, doomed_url = start_gateway_server(**env)
        try:
            wait_for_server(int(doomed_url.rsplit(":", 1)[1]), doomed)
            holders = [_stream_holding(doomed_url, key) for _ in range(2)]
            assert all(started.wait(10) for _thread, started in holders)
            assert code(chat(survivor, key)) == "concurrency_limit_exceeded"
            doomed.send_signal(signal.SIGKILL)
            doomed.wait(10)
            killed = time.monotonic()
        finally:
            if doomed.poll() is None:
                doomed.kill()
                doomed.wait(10)
        for thread, _started in holders:
            thread.join(30)
        # Nobody renews the dead process's slots: free within the 2 s lease (and a beat).
        assert wait_for(lambda: code(chat(survivor, key)) == "ok", timeout=5)
        assert time.monotonic() - killed < 4


def test_two_processes_settling_at_once_alert_once_per_threshold(live):
    user, key, upstream = live
    get_user_model().objects.filter(pk=user.pk).update(daily_quota=10_000)
    with gateway_servers(2, DEMO_UPSTREAM_URL=upstream, **SERVER_ENV) as urls:
        # No usage reported: each request is charged its whole reservation by estimate, so the
        # last one admitted lands exactly on the quota (100 %).
        outcomes = asyncio.run(_burst(urls, key, 80, extra_headers={"x-demo-fault": "nousage"}))
        assert "insufficient_quota" in outcomes
        wait_for(lambda: Alert.objects.filter(user=user).count() >= 2, timeout=10)
        time.sleep(0.5)  # any late batch of either process
    alerts = list(Alert.objects.filter(user=user).order_by("threshold"))
    assert [(a.threshold, a.api_key_id) for a in alerts] == [(80, None), (100, None)]
    # The worker's delivery (run here with locmem email), twice as after a redelivery.
    for alert in alerts * 2:
        delivery.alert_deliver(alert_id=alert.pk)
    assert len(mail.outbox) == 2
    assert {m.to[0] for m in mail.outbox} == {user.email}
