"""Upkeep of the ledger, run by Celery beat: the stale-reservation sweeper and the daily reset
(finalise each closed day's rollups, prune old usage records), each under a lock so that one
runs at a time. The sweeper keeps the invariant described in ``usage.ledger``.
"""

import contextlib
import datetime as dt
import fcntl
import hashlib
import logging
import time
from collections import defaultdict
from pathlib import Path

from django.conf import settings
from django.db import connection, transaction
from django.db.models import F, Max, Q, Value
from django.db.models.functions import Greatest
from django.utils import timezone

from usage.ledger import partitions
from usage.models import (
    DailyRollup,
    DailyUsage,
    KeyDailyUsage,
    QuotaReset,
    Reservation,
    UsageRecord,
)
from usage.quota import quota_day, quota_zone

logger = logging.getLogger(__name__)

RESERVATION_SWEEP_BATCH = 500
RESERVATION_SWEEP_BATCH_PG = 5_000
PRUNE_BATCH = 10_000


def reservation_stale_after() -> dt.timedelta:
    """How old an out-of-lease reservation must be before the sweeper takes it for an orphan
    (``RESERVATION_STALE_SECONDS``, longer than the longest request; ``gateway.checks``)."""
    return dt.timedelta(seconds=settings.RESERVATION_STALE_SECONDS)


# --- reservations --------------------------------------------------------------------------


def reservations_release_stale(
    *, older_than: dt.timedelta, now: dt.datetime | None = None, batch_size: int | None = None
) -> tuple[int, int]:
    """Delete reservations older than ``older_than`` and give their tokens back.

    Only orphans: a reservation whose lease (``lease_until``, renewed by its live request's
    process) has not run out is kept, however old; so is one that is not yet ``older_than``.

    Safe beside the gateway settling the same reservation: rows are taken with
    ``FOR UPDATE SKIP LOCKED`` (a reservation the gateway is deleting right now is skipped,
    and one we hold makes the gateway's delete find nothing), and the row's deletion and the
    subtraction from ``DailyUsage.reserved_tokens`` commit together. Whoever deletes the row
    subtracts its tokens, exactly once. One sweeper runs at a time (a lock): the periodic
    sweep and the daily reset may overlap. Returns (reservations released, tokens released).
    """
    now = now or timezone.now()
    cutoff = now - older_than
    released = tokens_released = 0
    with _exclusive("usage-reservation-sweep") as acquired:
        if not acquired:
            logger.info("reservation sweep skipped: another sweep is running")
            return 0, 0
        if connection.vendor == "postgresql":
            batch = _release_batch_pg
            batch_size = batch_size or RESERVATION_SWEEP_BATCH_PG
        else:
            batch = _release_batch_orm
            batch_size = batch_size or RESERVATION_SWEEP_BATCH
        while True:
            count, tokens = batch(cutoff, now, batch_size)
            released += count
            tokens_released += tokens
            if count < batch_size:
                break
    if released:
        logger.warning(
            "released %d stale reservations (%d tokens) older than %s",
            released,
            tokens_released,
            cutoff.isoformat(),
        )
    return released, tokens_released


def _release_batch_orm(cutoff: dt.datetime, now: dt.datetime, batch_size: int) -> tuple[int, int]:
    with transaction.atomic():
        rows = list(
            Reservation.objects.select_for_update(skip_locked=True)
            .filter(created_at__lt=cutoff)
            .filter(Q(lease_until__isnull=True) | Q(lease_until__lt=now))
            .order_by("created_at", "id")
            .values_list("id", "user_id", "day", "tokens", "capped_key_id")[:batch_size]
        )
        if not rows:
            return 0, 0
        Reservation.objects.filter(id__in=[row[0] for row in rows]).delete()
        per_counter: dict[tuple[int, dt.date], int] = defaultdict(int)
        per_key: dict[tuple[int, dt.date], int] = defaultdict(int)
        for _id, user_id, day, tokens, capped_key_id in rows:
            per_counter[(user_id, day)] += tokens
            if capped_key_id is not None:
                per_key[(capped_key_id, day)] += tokens
        # Key counters before account counters: the order the gateway locks them in.
        for (key_id, day), tokens in sorted(per_key.items()):
            KeyDailyUsage.objects.filter(api_key_id=key_id, day=day).update(
                reserved_tokens=Greatest(F("reserved_tokens") - tokens, Value(0))
            )
        for (user_id, day), tokens in sorted(per_counter.items()):
            # Greatest() only matters if the invariant was already broken elsewhere; the
            # check constraint would otherwise make every later sweep fail.
            DailyUsage.objects.filter(user_id=user_id, day=day).update(
                reserved_tokens=Greatest(F("reserved_tokens") - tokens, Value(0))
            )
    return len(rows), sum(row[3] for row in rows)


def _release_batch_pg(cutoff: dt.datetime, now: dt.datetime, batch_size: int) -> tuple[int, int]:
    """One statement per batch: pick, delete and subtract together (thousands of rows a
    second instead of one UPDATE per account)."""
    reservation = Reservation._meta.db_table
    counter = DailyUsage._meta.db_table
    key_counter = KeyDailyUsage._meta.db_table
    sql = f"""
        WITH picked AS (
            SELECT id FROM {reservation}
            WHERE created_at < %s AND (lease_until IS NULL OR lease_until < %s)
            ORDER BY created_at, id LIMIT %s FOR UPDATE SKIP LOCKED
        ), gone AS (
            DELETE FROM {reservation} r USING picked WHERE r.id = picked.id
            RETURNING r.user_id, r.day, r.tokens, r.capped_key_id
        ), key_sums AS (
            SELECT capped_key_id, day, SUM(tokens) AS tokens
            FROM gone WHERE capped_key_id IS NOT NULL GROUP BY capped_key_id, day
        ), key_locks AS (
            -- Counters are locked as the gateway's batches lock them: key counters, then
            -- account counters, each in id order (in another order, a batch and the sweep
            -- could each hold what the other waits for).
            SELECT kd.id FROM {key_counter} kd JOIN key_sums
              ON kd.api_key_id = key_sums.capped_key_id AND kd.day = key_sums.day
            ORDER BY kd.id FOR UPDATE OF kd
        ), key_counters AS (
            -- Each one-time filter below runs its lock list to the end before its update.
            UPDATE {key_counter} kd
            SET reserved_tokens = GREATEST(kd.reserved_tokens - key_sums.tokens, 0),
                updated_at = now()
            FROM key_sums
            WHERE kd.api_key_id = key_sums.capped_key_id AND kd.day = key_sums.day
              AND (SELECT count(*) FROM key_locks) >= 0
            RETURNING 1
        ), sums AS (
            SELECT user_id, day, SUM(tokens) AS tokens, COUNT(*) AS n
            FROM gone GROUP BY user_id, day
        ), account_locks AS (
            SELECT du.id FROM {counter} du JOIN sums
              ON du.user_id = sums.user_id AND du.day = sums.day
            WHERE (SELECT count(*) FROM key_counters) >= 0
            ORDER BY du.id FOR UPDATE OF du
        ), counters AS (
            UPDATE {counter} du
            SET reserved_tokens = GREATEST(du.reserved_tokens - sums.tokens, 0),
                updated_at = now()
            FROM sums WHERE du.user_id = sums.user_id AND du.day = sums.day
              AND (SELECT count(*) FROM account_locks) >= 0
            RETURNING 1
        )
        SELECT COALESCE(SUM(n), 0), COALESCE(SUM(tokens), 0) FROM sums
    """  # noqa: S608  (table names come from model metadata, values are parameters)
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(sql, [cutoff, now, batch_size])
        count, tokens = cursor.fetchone()
    return int(count), int(tokens)


# --- the daily reset -----------------------------------------------------------------------


def _day_bounds(day: dt.date) -> tuple[dt.datetime, dt.datetime]:
    zone = quota_zone()
    start = dt.datetime.combine(day, dt.time(0), tzinfo=zone)
    end = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(0), tzinfo=zone)
    return start, end


def usage_day_finalise(*, day: dt.date) -> int:
    """Make the day's rollups agree with its usage records; returns the rollup slots corrected.

    The gateway updates rollups as requests settle, in batches; this recomputes the closed day
    from the ledger in one statement and touches only slots that differ (normally none), so a
    lost batch or a crash between the record and the rollup cannot leave the charts wrong.
    ``errors`` counts records with an HTTP status of 400 or more, as the gateway does.

    It adds the *difference* between the ledger and the rollup, both read in one snapshot,
    rather than overwriting: a request of that day that settles while this runs (a stream
    still going at midnight) commits its record and its rollup increment together, after the
    snapshot, and overwriting would drop that increment.
    """
    start, end = _day_bounds(day)
    rollup = DailyRollup._meta.db_table
    record = UsageRecord._meta.db_table
    # created_at bounds use the (created_at) index; ``day`` keeps the result exact for a
    # request that started just before midnight and was recorded on the day it reserved on.
    margin = dt.timedelta(hours=1)
    sql = f"""
        INSERT INTO {rollup}
            (user_id, api_key_id, key_name, model, day, requests, errors,
             input_tokens, output_tokens, cached_input_tokens)
        SELECT t.user_id, t.api_key_id, t.key_name, t.model, t.day,
               t.requests - COALESCE(r.requests, 0),
               t.errors - COALESCE(r.errors, 0),
               t.input_tokens - COALESCE(r.input_tokens, 0),
               t.output_tokens - COALESCE(r.output_tokens, 0),
               t.cached_input_tokens - COALESCE(r.cached_input_tokens, 0)
        FROM (
            SELECT user_id, MAX(api_key_id) AS api_key_id, key_name, model, day,
                   COUNT(*) AS requests,
                   SUM(CASE WHEN status_code >= 400 THEN 1 ELSE 0 END) AS errors,
                   CAST(SUM(input_tokens) AS BIGINT) AS input_tokens,
                   CAST(SUM(output_tokens) AS BIGINT) AS output_tokens,
                   CAST(SUM(cached_input_tokens) AS BIGINT) AS cached_input_tokens
            FROM {record}
            WHERE day = %s AND created_at >= %s AND created_at < %s
            GROUP BY user_id, key_name, model, day
        ) t
        LEFT JOIN (
            -- Only the day's slots: joining against every rollup ever kept was most of the
            -- time on 10 million records.
            SELECT id, user_id, key_name, model, day, requests, errors, input_tokens,
                   output_tokens, cached_input_tokens
            FROM {rollup} WHERE day = %s
        ) r
            ON r.user_id = t.user_id AND r.key_name = t.key_name AND r.model = t.model
           AND r.day = t.day
        WHERE r.id IS NULL
           OR r.requests <> t.requests OR r.errors <> t.errors
           OR r.input_tokens <> t.input_tokens OR r.output_tokens <> t.output_tokens
           OR r.cached_input_tokens <> t.cached_input_tokens
        ON CONFLICT (user_id, key_name, model, day) DO UPDATE SET
            requests = {rollup}.requests + excluded.requests,
            errors = {rollup}.errors + excluded.errors,
            input_tokens = {rollup}.input_tokens + excluded.input_tokens,
            output_tokens = {rollup}.output_tokens + excluded.output_tokens,
            cached_input_tokens = {rollup}.cached_input_tokens + excluded.cached_input_tokens
    """  # noqa: S608  (table names come from model metadata, values are parameters)
    with transaction.atomic(), connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            # A million accounts' slots aggregate and hash in memory instead of on disk.
            cursor.execute("SET LOCAL work_mem = '256MB'")
        ops = connection.ops
        cursor.execute(
            sql,
            [
                ops.adapt_datefield_value(day),
                ops.adapt_datetimefield_value(start - margin),
                ops.adapt_datetimefield_value(end + margin),
                ops.adapt_datefield_value(day),
            ],
        )
        return max(cursor.rowcount, 0)


def usage_records_prune(*, before: dt.datetime, batch_size: int | None = None) -> int:
    """Remove usage records created before ``before``; returns how many.

    On partitioned PostgreSQL, whole daily partitions go first (a file unlinked, however many
    rows it held); what is left older than ``before`` — the hours of the day that straddles
    it, rows in the legacy or DEFAULT partition — is deleted in batches (short
    transactions), as on SQLite, where that is the whole job.
    """
    batch_size = batch_size or PRUNE_BATCH
    _dropped, pruned, kept_until = partitions.usage_partitions_drop_before(before)
    records = UsageRecord.objects.filter(created_at__lt=before)
    if kept_until is not None:
        # A partition left for want of a lock is dropped whole by the next run.
        records = records.filter(created_at__gte=kept_until)
    while True:
        ids = list(records.order_by().values_list("id", flat=True)[:batch_size])
        if not ids:
            return pruned
        deleted, _ = UsageRecord.objects.filter(id__in=ids).delete()
        pruned += deleted
        if len(ids) < batch_size:
            return pruned


def key_counters_prune(*, before: dt.date) -> int:
    """Delete the daily-cap counters of quota days before ``before``. A counter only matters
    while its day can still be charged (today, and yesterday for a request that crossed
    midnight); older ones go with the usage records they summarise."""
    deleted, _ = KeyDailyUsage.objects.filter(day__lt=before).delete()
    return deleted


@contextlib.contextmanager
def _exclusive(name: str):
    """Yield True when this process holds the named lock, False when another one does.

    PostgreSQL: a session advisory lock (works across machines, freed if the process dies).
    SQLite (one machine by nature): an ``flock`` on a file in ``VAR_DIR``.
    """
    if connection.vendor == "postgresql":
        key = int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), signed=True)
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_try_advisory_lock(%s)", [key])
            acquired = cursor.fetchone()[0]
        try:
            yield acquired
        finally:
            if acquired:
                with connection.cursor() as cursor:
                    cursor.execute("SELECT pg_advisory_unlock(%s)", [key])
        return
    folder = Path(settings.VAR_DIR) / "locks"
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f"{name}.lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _days_to_close(today: dt.date) -> list[dt.date]:
    yesterday = today - dt.timedelta(days=1)
    last_closed = QuotaReset.objects.filter(finished_at__isnull=False).aggregate(last=Max("day"))[
        "last"
    ]
    if last_closed is None:
        return [yesterday]
    # Older days than the retention window have no records left to finalise.
    first = max(
        last_closed + dt.timedelta(days=1),
        today - dt.timedelta(days=settings.USAGE_RETENTION_DAYS),
    )
    return [first + dt.timedelta(days=n) for n in range((yesterday - first).days + 1)]


def usage_daily_reset() -> QuotaReset | None:
    """Close the quota days that ended since the last run; one ``QuotaReset`` row per run.

    Releases stale reservations, finalises the rollups of every day not yet closed (catching
    up after missed runs), and prunes usage records older than ``USAGE_RETENTION_DAYS``.
    Also prunes keys' daily-cap counters past the same retention.
    Idempotent: a second run finds nothing left to close. Returns ``None`` when another run
    holds the lock. Enforcement never waits for this: counters are keyed by quota day.
    Quota changes are never scheduled for the new day: approvals and staff changes apply the
    moment they are made (``quota_set``), so there is nothing for the reset to apply.
    """
    with _exclusive("usage-daily-reset") as acquired:
        if not acquired:
            logger.info("daily reset skipped: another run holds the lock")
            return None
        started_at = timezone.now()
        today = quota_day(started_at)
        # Also here, not only in its own beat task: one catalog query when nothing is missing.
        partitions.usage_partitions_ensure(now=started_at)
        clock = time.monotonic()
        released, tokens = reservations_release_stale(
            older_than=reservation_stale_after(), now=started_at
        )
        sweep_seconds, clock = time.monotonic() - clock, time.monotonic()
        days = _days_to_close(today)
        rollups = sum(usage_day_finalise(day=day) for day in days)
        finalise_seconds, clock = time.monotonic() - clock, time.monotonic()
        pruned = usage_records_prune(
            before=started_at - dt.timedelta(days=settings.USAGE_RETENTION_DAYS)
        )
        key_counters = key_counters_prune(
            before=today - dt.timedelta(days=settings.USAGE_RETENTION_DAYS)
        )
        prune_seconds = time.monotonic() - clock
        run = QuotaReset.objects.create(
            day=days[-1] if days else today - dt.timedelta(days=1),
            days_closed=len(days),
            started_at=started_at,
            finished_at=timezone.now(),
            reservations_released=released,
            tokens_released=tokens,
            rollups_written=rollups,
            records_pruned=pruned,
        )
    logger.info(
        "daily reset closed %d day(s) up to %s: %d reservations released (%.1f s), "
        "%d rollups corrected (%.1f s), %d records and %d key cap counters pruned (%.1f s)",
        run.days_closed,
        run.day,
        released,
        sweep_seconds,
        rollups,
        finalise_seconds,
        pruned,
        key_counters,
        prune_seconds,
    )
    return run
