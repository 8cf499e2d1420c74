import datetime as dt
import os
import threading
import time

import pytest
import time_machine
from django.db import connection
from django.db.models import Count, Sum

from usage import tasks
from usage.ledger import upkeep
from usage.models import DailyRollup, DailyUsage, QuotaReset, Reservation, UsageRecord
from usage.quota import quota_day
from usage.selectors import usage_today

from .conftest import record_request, reserve

UTC = dt.UTC
MIDNIGHT = dt.datetime(2026, 3, 1, 16, 0, 0, tzinfo=UTC)  # 2026-03-02 00:00:00 in Beijing
ONE_SECOND_BEFORE = MIDNIGHT - dt.timedelta(seconds=1)  # 2026-03-01 23:59:59 in Beijing


@pytest.fixture(params=["UTC", "America/New_York", "Asia/Shanghai", "Pacific/Auckland"])
def server_zone(request, settings, monkeypatch):
    """Run a test under several server time zones: Django's and the process's own."""
    settings.TIME_ZONE = request.param
    monkeypatch.setenv("TZ", request.param)
    time.tzset()
    yield request.param
    monkeypatch.undo()
    time.tzset()


def test_it_starts_the_new_day_from_zero_at_midnight_beijing_time(alice, server_zone, settings):
    settings.DAILY_FREE_QUOTA = 500_000
    with time_machine.travel(ONE_SECOND_BEFORE, tick=False):
        record_request(alice, input_tokens=400_000, output_tokens=99_000)
        today = usage_today(user=alice)
        assert today.day == dt.date(2026, 3, 1)
        assert today.remaining_tokens == 1_000
        assert today.seconds_until_reset == 1
    with time_machine.travel(MIDNIGHT, tick=False):
        today = usage_today(user=alice)
        assert today.day == dt.date(2026, 3, 2)
        assert (today.used_tokens, today.requests, today.remaining_tokens) == (0, 0, 500_000)
        assert today.seconds_until_reset == 24 * 3600
        # Enforcement does not wait for the reset task: nothing has run yet.
        assert not QuotaReset.objects.exists()


def test_it_closes_the_day_that_just_ended(alice, bob, server_zone):
    with time_machine.travel(ONE_SECOND_BEFORE, tick=False):
        record_request(alice, input_tokens=10, output_tokens=5)
        # A batch of rollup updates that never arrived (a writer killed mid-flight).
        record_request(bob, input_tokens=7, output_tokens=3, rollup=False)
    with time_machine.travel(MIDNIGHT + dt.timedelta(seconds=2), tick=False):
        result = tasks.daily_reset.apply().get()
    run = QuotaReset.objects.get()
    assert run.day == dt.date(2026, 3, 1) and run.days_closed == 1
    assert result["day"] == "2026-03-01"
    assert run.rollups_written == 1  # bob's slot; alice's already agreed with the ledger
    bob_slot = DailyRollup.objects.get(user=bob, day=dt.date(2026, 3, 1))
    assert (bob_slot.requests, bob_slot.input_tokens, bob_slot.output_tokens) == (1, 7, 3)


def test_it_makes_rollups_agree_with_the_ledger(alice):
    day = dt.date(2026, 3, 1)
    with time_machine.travel(ONE_SECOND_BEFORE - dt.timedelta(hours=5), tick=False):
        record_request(alice, input_tokens=10, output_tokens=5)
        record_request(alice, input_tokens=1, output_tokens=0, status_code=502)
        record_request(alice, input_tokens=2, output_tokens=2, model="other-model")
    DailyRollup.objects.filter(user=alice, model="other-model").delete()
    DailyRollup.objects.filter(user=alice).update(input_tokens=999)
    assert upkeep.usage_day_finalise(day=day) == 2
    rows = {
        r.model: (r.requests, r.errors, r.input_tokens, r.output_tokens)
        for r in DailyRollup.objects.filter(user=alice, day=day)
    }
    assert rows == {"LongCat-Flash-Chat": (2, 1, 11, 5), "other-model": (1, 0, 2, 2)}
    assert upkeep.usage_day_finalise(day=day) == 0


def test_it_is_idempotent(alice):
    with time_machine.travel(ONE_SECOND_BEFORE, tick=False):
        record_request(alice, rollup=False)
    with time_machine.travel(MIDNIGHT, tick=False):
        first = upkeep.usage_daily_reset()
        rollups_before = list(DailyRollup.objects.values_list("requests", "input_tokens"))
        second = upkeep.usage_daily_reset()
    assert (first.days_closed, first.rollups_written) == (1, 1)
    assert (second.days_closed, second.rollups_written) == (0, 0)
    assert second.day == first.day
    assert list(DailyRollup.objects.values_list("requests", "input_tokens")) == rollups_before
    assert QuotaReset.objects.count() == 2  # one row per run


def test_it_catches_up_missed_days(alice):
    with time_machine.travel(MIDNIGHT, tick=False):
        upkeep.usage_daily_reset()  # closes March 1
    for offset in range(3):  # March 2, 3, 4: beat was down
        with time_machine.travel(MIDNIGHT + dt.timedelta(days=offset, hours=3), tick=False):
            record_request(alice, input_tokens=offset + 1, rollup=False)
    with time_machine.travel(MIDNIGHT + dt.timedelta(days=3, minutes=1), tick=False):
        run = upkeep.usage_daily_reset()
    assert (run.day, run.days_closed, run.rollups_written) == (dt.date(2026, 3, 4), 3, 3)
    assert list(DailyRollup.objects.order_by("day").values_list("day", "input_tokens")) == [
        (dt.date(2026, 3, 2), 1),
        (dt.date(2026, 3, 3), 2),
        (dt.date(2026, 3, 4), 3),
    ]


def test_it_skips_while_another_run_holds_the_lock(alice):
    # The lock is held from another connection, as a second worker would hold it.
    taken, release = threading.Event(), threading.Event()

    def hold():
        try:
            with upkeep._exclusive("usage-daily-reset") as held:
                assert held
                taken.set()
                release.wait(timeout=30)
        finally:
            connection.close()

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert taken.wait(timeout=30)
        assert upkeep.usage_daily_reset() is None
        assert not QuotaReset.objects.exists()
    finally:
        release.set()
        holder.join(timeout=30)
    assert upkeep.usage_daily_reset() is not None


def test_it_prunes_records_past_retention_in_batches(alice, settings, monkeypatch):
    settings.USAGE_RETENTION_DAYS = 90
    monkeypatch.setattr(upkeep, "PRUNE_BATCH", 2)
    now = MIDNIGHT
    for days_ago in (95, 92, 91, 90.5, 89, 1):
        record_request(alice, when=now - dt.timedelta(days=days_ago))
    rollups_before = DailyRollup.objects.count()
    with time_machine.travel(now, tick=False):
        run = upkeep.usage_daily_reset()
    assert run.records_pruned == 4
    assert UsageRecord.objects.count() == 2
    # Rollups are history the charts keep; only raw records go.
    assert DailyRollup.objects.count() == rollups_before


def test_it_releases_stale_reservations_during_the_reset(alice, settings):
    settings.RESERVATION_STALE_SECONDS = 900
    with time_machine.travel(ONE_SECOND_BEFORE - dt.timedelta(hours=1), tick=False):
        reserve(alice, 8_000)
    with time_machine.travel(ONE_SECOND_BEFORE, tick=False):
        fresh = reserve(alice, 500)  # a request still streaming across midnight
    with time_machine.travel(MIDNIGHT, tick=False):
        run = upkeep.usage_daily_reset()
    assert (run.reservations_released, run.tokens_released) == (1, 8_000)
    assert list(Reservation.objects.values_list("id", flat=True)) == [fresh.id]
    counter = DailyUsage.objects.get(user=alice, day=dt.date(2026, 3, 1))
    assert counter.reserved_tokens == 500


def test_the_quota_day_never_depends_on_the_process_time_zone(server_zone):
    assert os.environ["TZ"] == server_zone
    assert quota_day(ONE_SECOND_BEFORE) == dt.date(2026, 3, 1)
    assert quota_day(MIDNIGHT) == dt.date(2026, 3, 2)


def test_the_ledger_and_the_counter_agree_after_a_reset(alice, bob):
    with time_machine.travel(ONE_SECOND_BEFORE - dt.timedelta(hours=2), tick=False):
        for n in range(5):
            record_request(alice, input_tokens=n, output_tokens=n)
            record_request(bob, input_tokens=2 * n, output_tokens=1, rollup=n % 2 == 0)
    with time_machine.travel(MIDNIGHT, tick=False):
        upkeep.usage_daily_reset()
    day = dt.date(2026, 3, 1)
    for user in (alice, bob):
        counter = DailyUsage.objects.get(user=user, day=day)
        sums = DailyRollup.objects.filter(user=user, day=day).aggregate(
            i=Sum("input_tokens"), o=Sum("output_tokens"), r=Sum("requests")
        )
        assert (sums["i"], sums["o"], sums["r"]) == (
            counter.input_tokens,
            counter.output_tokens,
            counter.requests,
        )


@pytest.mark.django_db(transaction=True)
def test_finalising_keeps_a_settlement_that_commits_while_it_runs(alice):
    """A request of the closed day settles while the day is finalised (a stream across
    midnight): its record and rollup increment commit together, after finalising took its
    snapshot and while it waits for the rollup row. The increment must survive."""
    from django.db import transaction

    day = dt.date(2026, 3, 1)
    when = ONE_SECOND_BEFORE - dt.timedelta(minutes=1)
    record_request(alice, input_tokens=5, output_tokens=5, when=when)
    # A lost batch, so that finalising has this slot to correct.
    record_request(alice, input_tokens=1_000, output_tokens=0, when=when, rollup=False)
    holding, commit = threading.Event(), threading.Event()

    def settle_late():
        try:
            with transaction.atomic():
                record_request(alice, input_tokens=70, output_tokens=7, when=when)
                holding.set()  # the rollup row is locked, the record not yet visible
                commit.wait(timeout=30)
        finally:
            connection.close()

    def finalise():
        try:
            upkeep.usage_day_finalise(day=day)
        finally:
            connection.close()

    writer = threading.Thread(target=settle_late)
    writer.start()
    assert holding.wait(timeout=30)
    finaliser = threading.Thread(target=finalise)
    finaliser.start()
    time.sleep(1.0)  # let it take its snapshot and wait on the row (PostgreSQL; SQLite waits)
    commit.set()
    writer.join(timeout=30)
    finaliser.join(timeout=30)

    ledger = UsageRecord.objects.filter(day=day).aggregate(
        n=Count("id"), i=Sum("input_tokens"), o=Sum("output_tokens")
    )
    assert (ledger["n"], ledger["i"], ledger["o"]) == (3, 1_075, 12)
    slot = DailyRollup.objects.get(user=alice, day=day)
    assert (slot.requests, slot.input_tokens, slot.output_tokens) == (3, 1_075, 12)
