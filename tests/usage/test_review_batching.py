"""Review of natural batching (usage.ledger.postgres._Batcher): failing tests for edge cases."""

import asyncio

import pytest
from django.db import connection

from usage.models import DailyUsage, Reservation
from usage.quota import quota_day

from .test_ledger_batching import _account, _call, _gated, _open_the_day

pytestmark = pytest.mark.skipif(
    connection.vendor != "postgresql", reason="batching is the PostgreSQL ledger's"
)


def test_a_settle_that_left_its_failed_batch_and_retried_is_not_charged_twice(ledger):
    """A settle caller times out while its batch is in flight (the pipeline then retries with
    retry=True, alone). The batch fails on another row's database error and falls back to
    one statement per call -- including the call whose caller already left and retried. The
    fallback runs the unconditional _SETTLE_SQL for it: charged twice."""
    user, key, secret = _account("twice@example.com", quota=10**9)
    _open_the_day(ledger, key, secret)
    first = ledger.run(_call(ledger, key, secret, 10, 10))
    mine = ledger.run(_call(ledger, key, secret, 10, 10))
    other = ledger.run(_call(ledger, key, secret, 10, 10))
    before = DailyUsage.objects.get(user=user, day=quota_day())

    async def scenario():
        permits, ungate = _gated(ledger)
        alone = asyncio.ensure_future(ledger.settle(reserved=first, input_tokens=1, output_tokens=1))
        gone = asyncio.ensure_future(ledger.settle(reserved=mine, input_tokens=5, output_tokens=5))
        # Numbers the database refuses: the batch fails as a whole and falls back.
        bad = asyncio.ensure_future(
            ledger.settle(reserved=other, input_tokens=2**63 - 1, output_tokens=2**63 - 1)
        )
        await asyncio.sleep(0)
        permits.release()  # the lone settle
        await alone
        await asyncio.sleep(0)  # the batch (mine, other) is now waiting for its permit
        gone.cancel()  # its caller's timeout fired while the batch was in flight
        await asyncio.sleep(0)
        # What _settle_until_done does next: retry alone, charging only if still reserved.
        retry = asyncio.ensure_future(
            ledger.settle(reserved=mine, input_tokens=5, output_tokens=5, retry=True)
        )
        await asyncio.sleep(0)
        permits.release()  # the batch: fails, falls back to one statement per call
        await asyncio.sleep(0.2)
        permits.release()  # the retry (queued on the gate before the fallback's first)
        await retry
        ungate()
        for _ in range(3):
            permits.release()
        with pytest.raises(Exception):  # noqa: B017
            await bad
        await asyncio.sleep(0.2)

    ledger.run(scenario())
    counter = DailyUsage.objects.get(user=user, day=quota_day())
    assert not Reservation.objects.filter(pk=mine.reservation_id).exists()
    # first charged 2, mine charged 10 once: requests +2.
    assert counter.used_tokens - before.used_tokens == 2 + 10
    assert counter.requests - before.requests == 2


def test_reservations_made_by_a_fallback_are_released_when_every_caller_leaves(ledger):
    """A batch of reservations fails (one bad row) and falls back to one statement per call,
    in the batch task. Every caller leaves (their timeout) while the fallback runs: the task
    is cancelled and the reservations the fallback already committed are neither handed to a
    caller nor released -- they outlive their requests until the sweeper."""
    user, key, secret = _account("fallback@example.com", quota=10**9)
    _open_the_day(ledger, key, secret)

    async def scenario():
        permits, ungate = _gated(ledger)
        alone = asyncio.ensure_future(_call(ledger, key, secret, 1, 1))
        good = asyncio.ensure_future(_call(ledger, key, secret, 10, 10))
        bad = asyncio.ensure_future(_call(ledger, key, secret, -(2**63), 1))
        await asyncio.sleep(0)
        permits.release()  # the lone call
        kept = await alone
        permits.release()  # the batch: fails as a whole
        await asyncio.sleep(0.2)
        permits.release()  # the fallback's statement for `good`: committed
        await asyncio.sleep(0.2)
        # Both callers leave while the fallback waits on the bad row's statement.
        good.cancel()
        bad.cancel()
        await asyncio.sleep(0)
        ungate()
        permits.release()
        permits.release()
        await asyncio.sleep(0.3)
        return kept

    kept = ledger.run(scenario())
    assert {r.pk for r in Reservation.objects.all()} == {kept.reservation_id}
    counter = DailyUsage.objects.get(user=user, day=quota_day())
    assert counter.reserved_tokens == kept.tokens
