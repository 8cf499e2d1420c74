# ruff: noqa: S608 - SQL is built from table names only
"""The usage records' daily partitions on PostgreSQL (migration 0007, ``usage.ledger.partitions``)
and the behaviour both backends share (retention, exports bounded in time)."""

import datetime as dt
import importlib
import itertools
import uuid

import pytest
import time_machine
from django.conf import settings
from django.db import connection
from django.urls import reverse

from usage import tasks
from usage.ledger import partitions, upkeep
from usage.models import UsageRecord

from .conftest import record_request, streamed_body

UTC = dt.UTC
# Far enough ahead that no partition the migration made covers it.
FUTURE_MIDNIGHT = dt.datetime(2031, 6, 9, 16, 0, tzinfo=UTC)  # 2031-06-10 00:00 in Beijing

postgres_only = pytest.mark.skipif(
    not settings.DATABASES["default"]["ENGINE"].endswith("postgresql"),
    reason="partitioning is PostgreSQL's",
)


def _partition_of(record) -> str:
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT tableoid::regclass::text FROM {UsageRecord._meta.db_table} WHERE id = %s",
            [record.id],
        )
        return cursor.fetchone()[0]


@postgres_only
def test_it_partitions_the_records_by_day_with_a_default_and_a_week_ahead(db):
    assert partitions.is_partitioned()
    found = partitions.usage_partitions()
    assert found[-1].default
    days = [p for p in found if not p.default and p.start is not None]
    assert len(days) >= partitions.AHEAD_DAYS
    for earlier, later in itertools.pairwise(days):
        assert earlier.end == later.start  # contiguous
        assert later.end - later.start == dt.timedelta(days=1)
    # Bounded at midnight in the quota time zone, so a quota day is one partition.
    assert days[0].start.astimezone(partitions.quota_zone()).time() == dt.time(0)


@postgres_only
def test_it_creates_partitions_ahead_once_and_records_land_in_their_day(alice):
    created = partitions.usage_partitions_ensure(now=FUTURE_MIDNIGHT)
    assert "usage_usagerecord_p20310610" in created
    assert created[-1] == f"usage_usagerecord_p{20310610 + partitions.AHEAD_DAYS}"
    assert partitions.usage_partitions_ensure(now=FUTURE_MIDNIGHT) == []
    record = record_request(alice, when=FUTURE_MIDNIGHT + dt.timedelta(hours=5))
    assert _partition_of(record) == "usage_usagerecord_p20310610"


@postgres_only
def test_it_moves_rows_out_of_the_default_partition_when_their_day_is_created(alice):
    record = record_request(alice, when=FUTURE_MIDNIGHT + dt.timedelta(days=1, hours=2))
    assert _partition_of(record) == "usage_usagerecord_default"
    partitions.usage_partitions_ensure(now=FUTURE_MIDNIGHT)
    assert _partition_of(record) == "usage_usagerecord_p20310611"
    assert UsageRecord.objects.filter(pk=record.pk).exists()


@postgres_only
def test_the_beat_task_keeps_partitions_ahead(alice):
    with time_machine.travel(FUTURE_MIDNIGHT, tick=False):
        assert "usage_usagerecord_p20310610" in tasks.partitions_maintain()
    assert "usage-partitions-maintain" in settings.CELERY_BEAT_SCHEDULE


@postgres_only
def test_retention_drops_whole_partitions_and_deletes_only_what_straddles(alice, settings):
    settings.USAGE_RETENTION_DAYS = 3
    partitions.usage_partitions_ensure(now=FUTURE_MIDNIGHT)
    start = FUTURE_MIDNIGHT
    for hours in (1, 2, 30, 50, 70, 75):  # days 10, 10, 11, 12, 12, 13 (Beijing)
        record_request(alice, when=start + dt.timedelta(hours=hours))
    # The gateway's records commit before the reset runs; here they share the test's
    # transaction, whose deferred foreign-key checks would keep a partition from being dropped.
    with connection.cursor() as cursor:
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
    now = start + dt.timedelta(days=5, minutes=5)  # 2031-06-15 00:05: cutoff 06-12 00:05
    with time_machine.travel(now, tick=False):
        run = upkeep.usage_daily_reset()
    names = {p.name for p in partitions.usage_partitions()}
    assert "usage_usagerecord_p20310610" not in names
    assert "usage_usagerecord_p20310611" not in names
    assert "usage_usagerecord_p20310612" in names  # straddles the cutoff: kept
    assert run.records_pruned == 3
    assert UsageRecord.objects.count() == 3


@postgres_only
@pytest.mark.django_db(transaction=True)
def test_a_partition_it_cannot_lock_is_left_whole_for_the_next_run(alice, monkeypatch):
    import psycopg

    partitions.usage_partitions_ensure(now=FUTURE_MIDNIGHT)
    record_request(alice, when=FUTURE_MIDNIGHT + dt.timedelta(hours=1))
    record_request(alice, when=FUTURE_MIDNIGHT + dt.timedelta(days=1, hours=1))
    monkeypatch.setattr(partitions, "DROP_LOCK_TIMEOUT", "200ms")
    db = connection.settings_dict
    cutoff = FUTURE_MIDNIGHT + dt.timedelta(days=1, hours=2)
    with psycopg.connect(
        dbname=db["NAME"], user=db["USER"], host=db["HOST"], port=db["PORT"] or 5432
    ) as reader:
        # A long report reading the first day: its partition cannot be dropped meanwhile.
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM usage_usagerecord_p20310610")
        # The next day's expired hour still goes; the busy day is not emptied row by row.
        assert upkeep.usage_records_prune(before=cutoff) == 1
        assert UsageRecord.objects.get().created_at == FUTURE_MIDNIGHT + dt.timedelta(hours=1)
        reader.execute("ROLLBACK")
    assert upkeep.usage_records_prune(before=cutoff) == 1
    assert not UsageRecord.objects.exists()


@postgres_only
@pytest.mark.django_db(transaction=True)
def test_the_migration_attaches_the_old_table_with_its_rows_and_carries_the_ids_on():
    migration = importlib.import_module("usage.migrations.0007_partitioned_usage_records")
    table = "scratch_usage_record"
    with connection.cursor() as cursor:
        cursor.execute(f"DROP TABLE IF EXISTS {table} CASCADE")
        cursor.execute(
            f"""CREATE TABLE {table} (
                id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
                public_id uuid NOT NULL UNIQUE, user_id bigint NOT NULL,
                status_code smallint NOT NULL CHECK (status_code >= 0),
                created_at timestamptz NOT NULL)"""
        )
        cursor.execute(f"CREATE INDEX scratch_user_time ON {table} (user_id, created_at DESC)")
        cursor.execute(
            f"INSERT INTO {table} (public_id, user_id, status_code, created_at) "
            "SELECT gen_random_uuid(), g % 7, 200, now() - g * interval '1 hour' "
            "FROM generate_series(1, 500) g"
        )
        try:
            today = dt.datetime.now(partitions.quota_zone()).date()
            migration.partition_table(cursor, table, today + dt.timedelta(days=2), ahead_days=2)
            migration.partition_table(cursor, table, today + dt.timedelta(days=2))  # again: no-op
            cursor.execute(f"SELECT relkind FROM pg_class WHERE oid = '{table}'::regclass")
            assert cursor.fetchone()[0] == "p"
            cursor.execute(f"SELECT tableoid::regclass::text, count(*) FROM {table} GROUP BY 1")
            assert cursor.fetchall() == [(f"{table}_legacy", 500)]
            cursor.execute(
                f"INSERT INTO {table} (public_id, user_id, status_code, created_at) "
                "VALUES (%s, 1, 200, now() + interval '3 days') RETURNING id, tableoid::regclass",
                [uuid.uuid4()],
            )
            new_id, partition = cursor.fetchone()
            assert new_id == 501
            assert partition.startswith(f"{table}_p")
            # The old table's index serves the partition: adopted, not rebuilt beside it.
            cursor.execute(
                "SELECT count(*) FROM pg_indexes WHERE tablename = %s", [f"{table}_legacy"]
            )
            assert cursor.fetchone()[0] == 3  # key, public id, (user, time)
        finally:
            cursor.execute(f"DROP TABLE IF EXISTS {table} CASCADE")


def test_prune_deletes_rows_past_retention_on_every_backend(alice):
    now = dt.datetime(2026, 3, 1, 16, 0, tzinfo=UTC)
    record_request(alice, when=now - dt.timedelta(days=2))
    kept = record_request(alice, when=now - dt.timedelta(hours=1))
    assert upkeep.usage_records_prune(before=now - dt.timedelta(days=1)) == 1
    assert list(UsageRecord.objects.values_list("id", flat=True)) == [kept.id]


def test_the_export_of_a_day_keeps_a_request_that_ended_after_its_midnight(alice_client, alice):
    midnight = dt.datetime(2026, 3, 1, 16, 0, tzinfo=UTC)  # 2026-03-02 00:00 in Beijing
    late = record_request(alice, when=midnight + dt.timedelta(minutes=20))
    UsageRecord.objects.filter(pk=late.pk).update(day=dt.date(2026, 3, 1))  # reserved before
    record_request(alice, when=midnight - dt.timedelta(days=1, minutes=1))  # 02-28: not asked
    with time_machine.travel(midnight + dt.timedelta(hours=3), tick=False):
        response = alice_client.get(
            reverse("usage:export"),
            {"start": "2026-03-01", "end": "2026-03-01", "kind": "requests"},
        )
    lines = streamed_body(response).decode().strip().splitlines()
    assert len(lines) == 2
    assert lines[1].split(",")[1] == "2026-03-01"


@pytest.mark.parametrize("ages_hours", [(1, 2, 3, 4, 5), (1, 30, 100, 200, 300), (300, 400, 500)])
def test_the_requests_page_is_the_newest_records_whichever_window_holds_them(alice, ages_hours):
    from usage import selectors

    now = dt.datetime(2026, 3, 1, 4, 0, tzinfo=UTC)
    for hours in ages_hours:
        record_request(alice, when=now - dt.timedelta(hours=hours))
    everything = list(selectors.usage_records(user=alice).values_list("id", flat=True))
    with time_machine.travel(now, tick=False):
        first, cursor = selectors.usage_records_page(selectors.usage_records(user=alice), size=2)
        second, _ = selectors.usage_records_page(
            selectors.usage_records(user=alice), size=2, cursor=cursor
        )
    assert [r.id for r in first + second] == everything[:4]


def test_a_busy_accounts_page_is_read_from_the_newest_day_alone(alice, django_assert_num_queries):
    from usage import selectors

    now = dt.datetime(2026, 3, 1, 4, 0, tzinfo=UTC)
    for minutes in range(6):
        record_request(alice, when=now - dt.timedelta(minutes=minutes))
    with time_machine.travel(now, tick=False), django_assert_num_queries(1) as captured:
        page, _ = selectors.usage_records_page(selectors.usage_records(user=alice), size=5)
    assert len(page) == 5
    assert "created_at" in captured.captured_queries[0]["sql"].split("WHERE", 1)[1]


def test_a_quiet_accounts_page_reads_back_only_to_its_last_pages_worth_of_days(
    alice, django_assert_num_queries
):
    """Records a day apart: neither the newest day nor 8 days hold a page, so the rollups say
    how far back a page's worth of requests goes, and no query reads the whole history."""
    from usage import selectors

    now = dt.datetime(2026, 3, 1, 4, 0, tzinfo=UTC)
    for days in range(20):
        record_request(alice, when=now - dt.timedelta(days=days, minutes=5))
    everything = list(selectors.usage_records(user=alice).values_list("id", flat=True))
    with time_machine.travel(now, tick=False), django_assert_num_queries(4) as captured:
        page, cursor = selectors.usage_records_page(
            selectors.usage_records(user=alice),
            size=11,
            activity=lambda: selectors.usage_activity(user=alice),
        )
    assert [r.id for r in page] == everything[:11]
    record_queries = [
        q["sql"] for q in captured.captured_queries if "usage_usagerecord" in q["sql"]
    ]
    assert len(record_queries) == 3
    assert all("created_at" in sql.split("WHERE", 1)[1] for sql in record_queries)
    with time_machine.travel(now, tick=False):
        rest, _ = selectors.usage_records_page(
            selectors.usage_records(user=alice),
            size=11,
            cursor=cursor,
            activity=lambda: selectors.usage_activity(user=alice),
        )
    assert [r.id for r in page + rest] == everything


@pytest.mark.parametrize("status", ["", "ok", "error"])
def test_the_rollup_window_is_exact_for_each_status_filter(alice, status):
    from usage import selectors

    now = dt.datetime(2026, 3, 1, 4, 0, tzinfo=UTC)
    for days in range(30):
        record_request(
            alice,
            when=now - dt.timedelta(days=days, minutes=5),
            status_code=500 if days % 3 == 0 else 200,
        )
    expected = list(selectors.usage_records(user=alice, status=status).values_list("id", flat=True))
    with time_machine.travel(now, tick=False):
        page, _ = selectors.usage_records_page(
            selectors.usage_records(user=alice, status=status),
            size=7,
            activity=lambda: selectors.usage_activity(user=alice, status=status),
        )
    assert [r.id for r in page] == expected[:7]
