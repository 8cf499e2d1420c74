"""Processes killed with SIGKILL mid-work: the daily reset, and a gateway with requests in
flight. Nothing may be lost for good or done twice."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import signal
import subprocess
import sys
import threading

import pytest
import requests
from django.db.models import Sum
from django.utils import timezone

from tests.acceptance.live import (
    BASE_DIR,
    demo_upstream,
    server_env,
    start_gateway_server,
    wait_for_port,
)
from tests.reliability.conftest import assert_books_balance, wait_for
from tests.usage.conftest import record_request, reserve
from usage.ledger import upkeep
from usage.models import DailyRollup, DailyUsage, QuotaReset, Reservation, UsageRecord
from usage.quota import quota_day, quota_zone

pytestmark = pytest.mark.slow


def _noon(day: dt.date) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(12), tzinfo=quota_zone())


def _rollups_match_records(day: dt.date) -> bool:
    ledger = UsageRecord.objects.filter(day=day).aggregate(i=Sum("input_tokens"))["i"] or 0
    rolled = DailyRollup.objects.filter(day=day).aggregate(i=Sum("input_tokens"))["i"] or 0
    return ledger == rolled


def test_a_reset_killed_midway_is_finished_by_the_next_run_with_nothing_done_twice(
    transactional_db,
):
    from accounts.services import account_create

    alice = account_create(email="alice@example.com")
    today = quota_day()
    days = [today - dt.timedelta(days=n) for n in (3, 2, 1)]
    # The last finished run closed the day before these three; beat was down since.
    QuotaReset.objects.create(
        day=today - dt.timedelta(days=4),
        days_closed=1,
        started_at=timezone.now() - dt.timedelta(days=4),
        finished_at=timezone.now() - dt.timedelta(days=4),
    )
    for n, day in enumerate(days, start=1):
        record_request(alice, input_tokens=100 * n, when=_noon(day), rollup=False)
    # A request that died in flight an hour ago: its reservation is stale.
    stale = reserve(alice, 500, when=timezone.now() - dt.timedelta(hours=1))

    worker = subprocess.Popen(
        [sys.executable, "tests/reliability/reset_until_killed.py"],
        cwd=BASE_DIR,
        env=server_env(),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = worker.stdout.readline()
        assert line.strip() == f"closed {days[0].isoformat()}", line
        worker.send_signal(signal.SIGKILL)
        worker.wait(10)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait(10)

    # Killed after the first day: that day and the release are committed, the rest is not,
    # and no run was recorded as finished.
    assert _rollups_match_records(days[0])
    assert not _rollups_match_records(days[1])
    assert not Reservation.objects.filter(pk=stale.pk).exists()
    assert QuotaReset.objects.count() == 1

    run = upkeep.usage_daily_reset()  # the next run (beat's next tick, or the retry)

    assert run is not None, "the killed run's lock was never freed"
    assert run.days_closed == 3
    assert run.rollups_written == 2  # the day the killed run closed is not corrected again
    assert run.reservations_released == 0  # and the stale reservation is not released twice
    for day in days:
        assert _rollups_match_records(day)
    counter = DailyUsage.objects.get(user=alice, day=stale.day)
    assert counter.reserved_tokens == 0
    again = upkeep.usage_daily_reset()
    assert (again.days_closed, again.rollups_written, again.reservations_released) == (0, 0, 0)


def _uvicorn(env: dict) -> tuple[subprocess.Popen, str]:
    process, base_url = start_gateway_server(**env)
    wait_for_port(int(base_url.rsplit(":", 1)[1]), process)
    return process, base_url


def test_a_gateway_killed_with_requests_in_flight_leaves_nothing_reserved_for_good(live_key):
    user, key = live_key
    headers = {"Authorization": f"Bearer {key}"}
    body = {"model": "LongCat-Flash-Chat", "messages": [{"role": "user", "content": "Hi"}]}
    with demo_upstream() as upstream:
        process, base_url = _uvicorn({"DEMO_UPSTREAM_URL": upstream, "RATE_LIMIT_RPM": 100000})
        try:
            # Two requests that complete and are recorded before the crash.
            for _ in range(2):
                answer = requests.post(
                    f"{base_url}/openai/v1/chat/completions",
                    json={**body, "max_tokens": 10},
                    headers=headers,
                    timeout=30,
                )
                assert answer.status_code == 200
            assert wait_for(lambda: UsageRecord.objects.filter(user=user).count() == 2)

            # Six slow ones, streamed and not, still running when the process dies.
            def slow(stream: bool):
                # The server dies under it: a connection error is expected.
                with contextlib.suppress(requests.RequestException):
                    requests.post(
                        f"{base_url}/openai/v1/chat/completions",
                        json={**body, "max_tokens": 100, "stream": stream},
                        headers={**headers, "x-demo-delay-ms": "300", "x-demo-tokens": "100"},
                        timeout=30,
                    )

            clients = [threading.Thread(target=slow, args=(n % 2 == 0,)) for n in range(6)]
            for client in clients:
                client.start()
            assert wait_for(lambda: Reservation.objects.filter(user=user).count() == 6)
            process.send_signal(signal.SIGKILL)
            process.wait(10)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(10)
        for client in clients:
            client.join(30)

    counter = DailyUsage.objects.get(user=user)
    held = Reservation.objects.filter(user=user)
    assert held.count() == 6
    assert counter.reserved_tokens == sum(r.tokens for r in held)

    # The sweeper (every 5 minutes, and in the daily reset) once the cut-off has passed.
    later = timezone.now() + upkeep.reservation_stale_after() + dt.timedelta(seconds=1)
    released, tokens = upkeep.reservations_release_stale(
        older_than=upkeep.reservation_stale_after(), now=later
    )
    assert released == 6
    assert upkeep.reservations_release_stale(
        older_than=upkeep.reservation_stale_after(), now=later
    ) == (0, 0)

    counter.refresh_from_db()
    records = list(UsageRecord.objects.filter(user=user))
    # The two completed requests are charged once each; the killed ones charge nothing
    # (their answers never completed) and hold nothing any more.
    assert len(records) == 2
    assert counter.requests == 2
    assert counter.input_tokens + counter.output_tokens == sum(
        r.input_tokens + r.output_tokens for r in records
    )
    assert_books_balance(user)
    print(json.dumps({"released": released, "tokens_released": tokens}))
