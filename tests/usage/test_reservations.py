import datetime as dt
import threading

import pytest
import time_machine
from django.db import connection, transaction
from django.db.models import F
from django.utils import timezone

from usage.ledger.upkeep import reservations_release_stale
from usage.models import DailyUsage, Reservation

from .conftest import reserve


@time_machine.travel(dt.datetime(2026, 3, 1, 4, 0, tzinfo=dt.UTC), tick=False)  # noon, Beijing
def test_it_releases_exactly_the_stale_reservations(alice, bob):
    old = timezone.now() - dt.timedelta(hours=1)
    reserve(alice, 1_000, when=old)
    reserve(alice, 2_000, when=old)
    keep = reserve(alice, 300)
    reserve(bob, 50, when=old)

    released = reservations_release_stale(older_than=dt.timedelta(minutes=15), batch_size=2)

    assert released == (3, 3_050)
    assert list(Reservation.objects.values_list("id", flat=True)) == [keep.id]
    assert DailyUsage.objects.get(user=alice).reserved_tokens == 300
    assert DailyUsage.objects.get(user=bob).reserved_tokens == 0


def test_it_does_nothing_without_stale_reservations(alice):
    reserve(alice, 10)
    assert reservations_release_stale(older_than=dt.timedelta(minutes=15)) == (0, 0)
    assert DailyUsage.objects.get(user=alice).reserved_tokens == 10


def _gateway_settle(reservation_id: int, used_input: int, used_output: int) -> bool:
    """The gateway's settle as the contract has it: whoever deletes the row moves the tokens."""
    try:
        with transaction.atomic():
            with connection.cursor() as cursor:
                cursor.execute(
                    "DELETE FROM usage_reservation WHERE id = %s RETURNING user_id, day, tokens",
                    [reservation_id],
                )
                row = cursor.fetchone()
            if row is None:
                return False
            user_id, day, tokens = row
            DailyUsage.objects.filter(user_id=user_id, day=day).update(
                reserved_tokens=F("reserved_tokens") - tokens,
                input_tokens=F("input_tokens") + used_input,
                output_tokens=F("output_tokens") + used_output,
            )
            return True
    finally:
        connection.close()


@pytest.mark.django_db(transaction=True)
def test_it_races_the_gateway_settle_without_double_release(alice):
    old = timezone.now() - dt.timedelta(hours=1)
    ids = [reserve(alice, 100, when=old).id for _ in range(60)]
    settled = []

    def settle_all():
        for reservation_id in reversed(ids):
            if _gateway_settle(reservation_id, 10, 5):
                settled.append(reservation_id)

    def sweep():
        try:
            while reservations_release_stale(older_than=dt.timedelta(minutes=15), batch_size=7)[0]:
                pass
        finally:
            connection.close()

    threads = [threading.Thread(target=settle_all), threading.Thread(target=sweep)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    counter = DailyUsage.objects.get(user=alice)
    assert not Reservation.objects.exists()
    assert counter.reserved_tokens == 0  # every row subtracted exactly once
    assert counter.input_tokens == 10 * len(settled)


def test_it_skips_while_another_sweep_runs(alice):
    from usage.ledger import upkeep

    reserve(alice, 10, when=timezone.now() - dt.timedelta(hours=1))
    taken, release = threading.Event(), threading.Event()

    def hold():
        try:
            with upkeep._exclusive("usage-reservation-sweep") as held:
                assert held
                taken.set()
                release.wait(timeout=30)
        finally:
            connection.close()

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert taken.wait(timeout=30)
        assert reservations_release_stale(older_than=dt.timedelta(minutes=15)) == (0, 0)
    finally:
        release.set()
        holder.join(timeout=30)
    assert reservations_release_stale(older_than=dt.timedelta(minutes=15)) == (1, 10)


def test_it_keeps_a_reservation_whose_lease_runs_however_old(alice):
    # A live request's process renews its lease: old is not the same as orphaned.
    long_ago = timezone.now() - dt.timedelta(hours=1)
    live = reserve(alice, 1_000, when=long_ago)
    Reservation.objects.filter(pk=live.pk).update(
        lease_until=timezone.now() + dt.timedelta(minutes=2)
    )
    assert reservations_release_stale(older_than=dt.timedelta(minutes=15)) == (0, 0)
    assert DailyUsage.objects.get(user=alice).reserved_tokens == 1_000


def test_it_releases_an_old_reservation_whose_lease_ran_out(alice):
    long_ago = timezone.now() - dt.timedelta(hours=1)
    orphan = reserve(alice, 1_000, when=long_ago)
    Reservation.objects.filter(pk=orphan.pk).update(
        lease_until=timezone.now() - dt.timedelta(seconds=1)
    )
    young = reserve(alice, 7)
    Reservation.objects.filter(pk=young.pk).update(
        lease_until=timezone.now() - dt.timedelta(seconds=1)
    )
    # The young one's lease ran out too, but it is not yet stale: still released only by age.
    assert reservations_release_stale(older_than=dt.timedelta(minutes=15)) == (1, 1_000)
    assert list(Reservation.objects.values_list("id", flat=True)) == [young.id]
    assert DailyUsage.objects.get(user=alice).reserved_tokens == 7
