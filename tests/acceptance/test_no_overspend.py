"""No overspend under concurrency: three gateway processes, one account, many requests at once.

PostgreSQL only: SQLite serialises every writer on one file lock, so it cannot race (and the
embedded default runs one server process anyway).
"""

import asyncio
import itertools
import json
import time

import aiohttp
import pytest
from django.db import connection

from accounts.models import User
from tests.acceptance.conftest import wait_for
from tests.acceptance.live import demo_upstream, gateway_servers
from usage.models import DailyUsage, Reservation, UsageRecord

pytestmark = pytest.mark.slow

QUOTA = 30_000
REQUESTS = 450
CONCURRENCY = 60


async def _one(session, url, key, n, outcomes):
    stream = n % 3 == 0
    abort = stream and n % 9 == 0
    payload = {
        "model": "LongCat-Flash-Chat",
        "messages": [{"role": "user", "content": "Hello!"}],
        "max_tokens": 200,
        "stream": stream,
    }
    headers = {
        "Authorization": f"Bearer {key}",
        # Answers as long as allowed, so that usage lands close to each reservation.
        "x-demo-tokens": "200",
        "x-demo-delay-ms": "2",
    }
    async with session.post(
        f"{url}/openai/v1/chat/completions", data=json.dumps(payload), headers=headers
    ) as response:
        if abort and response.status == 200:
            await response.content.readline()
            response.close()  # the client walks away mid-stream
            outcomes.append("aborted")
            return
        body = await response.read()
        if response.status == 200:
            outcomes.append("ok")
        elif response.status == 429:
            assert json.loads(body)["error"]["code"] == "insufficient_quota"
            outcomes.append("refused")
        else:
            outcomes.append(f"status {response.status}")


async def _load(urls, key):
    outcomes: list[str] = []
    limit = asyncio.Semaphore(CONCURRENCY)
    targets = itertools.cycle(urls)
    connector = aiohttp.TCPConnector(limit=CONCURRENCY)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def guarded(n, url):
            async with limit:
                await _one(session, url, key, n, outcomes)

        await asyncio.gather(*(guarded(n, next(targets)) for n in range(REQUESTS)))
    return outcomes


def test_it_never_spends_past_the_quota_across_processes(transactional_db):
    if connection.vendor != "postgresql":
        pytest.skip("needs PostgreSQL: SQLite serialises all writers, there is no race to lose")
    from accounts.services import account_create_with_key
    from gateway.services import catalog_bootstrap

    catalog_bootstrap()
    user, key = account_create_with_key(email="race@example.com")
    User.objects.filter(pk=user.pk).update(daily_quota=QUOTA)

    with (
        demo_upstream() as upstream,
        gateway_servers(3, DEMO_UPSTREAM_URL=upstream, RATE_LIMIT_RPM=1_000_000) as urls,
    ):
        started = time.monotonic()
        outcomes = asyncio.run(_load(urls, key))
        elapsed = time.monotonic() - started
        assert len(outcomes) == REQUESTS
        assert set(outcomes) <= {"ok", "refused", "aborted"}, set(outcomes)
        assert outcomes.count("refused") > 0, "the quota was never reached"
        # Aborted streams settle as their cancellation lands: wait for every reservation.
        wait_for(lambda: not Reservation.objects.filter(user=user).exists(), timeout=15)
        wait_for(lambda: UsageRecord.objects.filter(user=user).count() >= REQUESTS, timeout=15)

    counter = DailyUsage.objects.get(user=user)
    records = UsageRecord.objects.filter(user=user)
    used = counter.input_tokens + counter.output_tokens
    admitted = records.exclude(status_code=429)

    assert used <= QUOTA
    assert used > QUOTA * 0.9  # and the quota really was used
    assert counter.reserved_tokens == 0
    assert not Reservation.objects.filter(user=user).exists()
    assert records.count() == REQUESTS
    assert records.filter(status_code=429).count() == outcomes.count("refused")
    assert admitted.count() == outcomes.count("ok") + outcomes.count("aborted")
    assert counter.requests == admitted.count()
    assert sum(r.input_tokens + r.output_tokens for r in records) == used
    print(f"{REQUESTS} requests in {elapsed:.1f} s over 3 processes; used {used} of {QUOTA}")
