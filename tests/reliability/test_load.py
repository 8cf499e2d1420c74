"""A bounded load test on loopback: two gateway processes, many keys of many accounts, a few
accounts close to their quota, streamed and plain requests mixed, some streams abandoned.

Bounded twice: at most ``LOAD_REQUESTS`` requests (default 2,400) and at most
``LOAD_SECONDS`` seconds of sending (default 60). Afterwards: no 5xx from the gateway, no
account past its quota, every counter equal to the sum of its records, nothing reserved.
The figures (requests/s, p50/p95 latency, answers by status) are printed to quote.

PostgreSQL only, like the no-overspend test: SQLite serialises every writer on one file.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import random
import statistics
import time

import aiohttp
import pytest
from django.db import connection
from django.db.models import Sum

from tests.acceptance.live import demo_upstream, gateway_servers
from tests.reliability.conftest import wait_for
from usage.models import DailyUsage, Reservation, UsageRecord

pytestmark = pytest.mark.slow

REQUESTS = int(os.environ.get("LOAD_REQUESTS", "2400"))
SECONDS = float(os.environ.get("LOAD_SECONDS", "60"))
CONCURRENCY = 48
ACCOUNTS = 24
KEYS_PER_ACCOUNT = 2
NEAR_QUOTA_ACCOUNTS = 4
NEAR_QUOTA = 3_000  # tokens: a few dozen requests' worth
MODEL = "LongCat-Flash-Chat"


def _setup_accounts():
    from accounts.models import User
    from accounts.services import account_create_with_key
    from keys.services import api_key_create

    accounts = []
    for n in range(ACCOUNTS):
        user, key = account_create_with_key(email=f"load{n}@example.com")
        keys = [key] + [
            api_key_create(user=user, name=f"k{i}")[1] for i in range(1, KEYS_PER_ACCOUNT)
        ]
        if n < NEAR_QUOTA_ACCOUNTS:
            User.objects.filter(pk=user.pk).update(daily_quota=NEAR_QUOTA)
        accounts.append((user, keys))
    return accounts


async def _one(session, url, key, rng, stats):
    stream = rng.random() < 0.4
    abandon = stream and rng.random() < 0.1
    anthropic = rng.random() < 0.3
    max_tokens = rng.randint(5, 60)
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Hello " * rng.randint(1, 20)}],
        "max_tokens": max_tokens,
        "stream": stream,
    }
    headers = {"Authorization": f"Bearer {key}", "x-demo-tokens": str(rng.randint(5, 80))}
    path = "/openai/v1/chat/completions"
    if anthropic:
        path = "/anthropic/v1/messages"
        headers["anthropic-version"] = "2023-06-01"
    started = time.perf_counter()
    try:
        async with session.post(url + path, data=json.dumps(body), headers=headers) as response:
            if abandon and response.status == 200:
                await response.content.readline()
                response.close()
                stats["status"]["abandoned"] += 1
                return
            payload = await response.read()
            stats["status"][response.status] += 1
            if response.status >= 500:
                stats["server_errors"].append(payload[:300])
            # A stream that started fine must also end fine (no error event inside).
            if response.status == 200 and stream and b'"error"' in payload:
                stats["status"]["stream error"] += 1
    except aiohttp.ClientError as error:
        stats["status"][f"client {error.__class__.__name__}"] += 1
        return
    stats["latency"].append(time.perf_counter() - started)


async def _load(urls, keys):
    stats = {"status": collections.Counter(), "latency": [], "server_errors": []}
    rng = random.Random(9)  # a fixed mix, the same every run
    deadline = time.monotonic() + SECONDS
    queue = asyncio.Queue()
    for n in range(REQUESTS):
        queue.put_nowait((urls[n % len(urls)], keys[rng.randrange(len(keys))]))
    connector = aiohttp.TCPConnector(limit=CONCURRENCY)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def worker():
            while time.monotonic() < deadline:
                try:
                    url, key = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                await _one(session, url, key, rng, stats)

        started = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
        stats["elapsed"] = time.monotonic() - started
    stats["sent"] = REQUESTS - queue.qsize()
    return stats


def test_a_bounded_mixed_load_keeps_the_books_exact(transactional_db):
    if connection.vendor != "postgresql":
        pytest.skip("needs PostgreSQL: SQLite serialises every writer, there is no race to lose")
    from gateway.services import catalog_bootstrap

    catalog_bootstrap()
    accounts = _setup_accounts()
    keys = [key for _user, account_keys in accounts for key in account_keys]
    with (
        demo_upstream() as upstream,
        gateway_servers(2, DEMO_UPSTREAM_URL=upstream, RATE_LIMIT_RPM=1_000_000) as urls,
    ):
        stats = asyncio.run(_load(urls, keys))
        # Abandoned streams settle as their cancellation lands; records flush in batches.
        assert wait_for(lambda: not Reservation.objects.exists(), timeout=30)
        admitted = stats["sent"] - sum(
            n for code, n in stats["status"].items() if isinstance(code, str) and "client" in code
        )
        wait_for(lambda: UsageRecord.objects.count() >= admitted, timeout=30)

    latencies = sorted(stats["latency"])
    figures = {
        "requests sent": stats["sent"],
        "seconds": round(stats["elapsed"], 1),
        "requests/s": round(stats["sent"] / stats["elapsed"], 1),
        "p50 ms": round(statistics.median(latencies) * 1000, 1),
        "p95 ms": round(latencies[int(len(latencies) * 0.95) - 1] * 1000, 1),
        "answers": {str(code): n for code, n in sorted(stats["status"].items(), key=str)},
    }
    print("\nload figures:", json.dumps(figures))

    assert stats["sent"] >= min(REQUESTS, 500), "far too few requests in the time allowed"
    assert stats["server_errors"] == [], stats["server_errors"][:3]
    assert not any(isinstance(code, int) and code >= 500 for code in stats["status"])
    assert stats["status"]["stream error"] == 0
    assert stats["status"][429] > 0, "no account reached its quota: the test proves nothing"

    assert UsageRecord.objects.count() == stats["sent"]
    for user, _keys in accounts:
        counter = DailyUsage.objects.get(user=user)
        records = UsageRecord.objects.filter(user=user)
        sums = records.aggregate(i=Sum("input_tokens"), o=Sum("output_tokens"))
        used = counter.input_tokens + counter.output_tokens
        assert counter.reserved_tokens == 0
        assert (counter.input_tokens, counter.output_tokens) == (sums["i"] or 0, sums["o"] or 0)
        assert counter.requests == records.exclude(error_code="insufficient_quota").count()
        quota = user.daily_quota or 500_000
        assert used <= quota, f"{user.email} spent {used} of {quota}"
        if user.daily_quota == NEAR_QUOTA:
            assert records.filter(error_code="insufficient_quota").exists()
