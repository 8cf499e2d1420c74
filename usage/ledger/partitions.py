# ruff: noqa: S608 - SQL is built from model and catalog table names only; values are bound
"""The daily partitions of ``usage_usagerecord`` on PostgreSQL (migration 0006).

One partition per quota day, bounded at midnight in ``QUOTA_TIMEZONE``, so that retention
drops a day as one file instead of deleting its rows, and a query bounded in time (the daily
reset, the staff console's refusals, an export) reads only the days it asks for. Partitions
are kept ``AHEAD_DAYS`` (a week) ahead by an hourly beat task and by the daily reset; a
DEFAULT partition takes any row no daily partition covers (maintenance missed for a week, a
clock far off), so an insert never fails for want of a partition, and the next maintenance
moves such rows into the daily partition it creates for them.

On SQLite (and on a PostgreSQL table not yet partitioned) every function here is a no-op.
"""

import datetime as dt
import logging
from dataclasses import dataclass

from django.db import connection, transaction
from django.db.utils import OperationalError
from django.utils import timezone

from usage.models import UsageRecord
from usage.quota import quota_day, quota_zone

logger = logging.getLogger(__name__)

AHEAD_DAYS = 7
# Dropping a partition takes an ACCESS EXCLUSIVE lock on the parent for an instant. Queued
# behind a long report it would hold every insert up: give up instead, next run tries again.
DROP_LOCK_TIMEOUT = "5s"
LOCK_NOT_AVAILABLE = "55P03"


@dataclass(frozen=True)
class Partition:
    name: str
    start: dt.datetime | None  # None: MINVALUE (the legacy partition)
    end: dt.datetime | None
    default: bool = False


def _table() -> str:
    return UsageRecord._meta.db_table


def is_partitioned() -> bool:
    if connection.vendor != "postgresql":
        return False
    with connection.cursor() as cursor:
        cursor.execute("SELECT relkind FROM pg_class WHERE oid = to_regclass(%s)", [_table()])
        row = cursor.fetchone()
    return bool(row) and row[0] == "p"


def usage_partitions() -> list[Partition]:
    """The partitions, oldest first (the DEFAULT partition last)."""
    if not is_partitioned():
        return []
    with connection.cursor() as cursor:
        # The bounds as timestamps, read from the catalog's own expression for them.
        cursor.execute(
            """
            SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i
            JOIN pg_class c ON c.oid = i.inhrelid
            WHERE i.inhparent = %s::regclass
            """,
            [_table()],
        )
        rows = cursor.fetchall()
        found = []
        for name, bound in rows:
            if bound == "DEFAULT":
                found.append(Partition(name, None, None, default=True))
                continue
            low, high = bound.split(" FROM (", 1)[1].split(") TO (", 1)
            high = high.rstrip(")")
            found.append(Partition(name, _timestamp(cursor, low), _timestamp(cursor, high)))
    found.sort(key=lambda p: (p.default, p.start or dt.datetime.min.replace(tzinfo=dt.UTC)))
    return found


def _timestamp(cursor, literal: str) -> dt.datetime | None:
    if literal == "MINVALUE" or literal == "MAXVALUE":
        return None
    cursor.execute("SELECT %s::timestamptz", [literal.strip("'")])
    return cursor.fetchone()[0]


def _midnight(day: dt.date) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(0), tzinfo=quota_zone())


def usage_partitions_ensure(*, now: dt.datetime | None = None, ahead_days: int = AHEAD_DAYS):
    """Create daily partitions up to ``ahead_days`` quota days after ``now``'s; returns the
    names created. Contiguous from the newest partition's end (after a change of
    ``QUOTA_TIMEZONE`` the first new one is shorter or longer than a day, never overlapping).
    Cheap when nothing is missing: one catalog query."""
    if not is_partitioned():
        return []
    now = now or timezone.now()
    until = _midnight(quota_day(now) + dt.timedelta(days=ahead_days + 1))
    ranged = [p for p in usage_partitions() if not p.default]
    newest = max((p.end for p in ranged if p.end), default=None)
    # Never further back than today: should maintenance stop for longer than the days made
    # ahead, the days missed keep their rows in the DEFAULT partition (read and pruned there)
    # instead of this run creating a partition for each of them.
    start = max(newest, _midnight(quota_day(now))) if newest else _midnight(quota_day(now))
    created = []
    while start < until:
        day = quota_day(start)
        end = _midnight(day + dt.timedelta(days=1))
        if end <= start:  # a bound that is not a midnight of today's zone
            end = _midnight(day + dt.timedelta(days=2))
        created.append(usage_partition_create(f"{_table()}_p{day:%Y%m%d}", start, end))
        start = end
    if created:
        logger.info("usage record partitions created: %s", ", ".join(created))
    return created


def usage_partition_create(name: str, start: dt.datetime, end: dt.datetime) -> str:
    """Create the partition [start, end). Rows of that range already in the DEFAULT partition
    are moved into it in the same transaction (PostgreSQL refuses the partition otherwise)."""
    table = _table()
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SELECT to_regclass(%s) IS NOT NULL", [name])
        if cursor.fetchone()[0]:
            name = f"{name}_{start:%H%M}"
        cursor.execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = %s::regclass AND pg_get_expr(c.relpartbound, c.oid) = 'DEFAULT'",
            [table],
        )
        default = cursor.fetchone()
        stray = False
        if default:
            cursor.execute(
                f"SELECT EXISTS (SELECT 1 FROM {default[0]} WHERE created_at >= %s "
                "AND created_at < %s)",
                [start, end],
            )
            stray = cursor.fetchone()[0]
        if not stray:
            cursor.execute(
                f'CREATE TABLE "{name}" PARTITION OF {table} FOR VALUES FROM (%s) TO (%s)',
                [start, end],
            )
            return name
        cursor.execute(
            f'CREATE TABLE "{name}" (LIKE {table} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)'
        )
        cursor.execute(
            f"""WITH moved AS (DELETE FROM {default[0]} WHERE created_at >= %s
                AND created_at < %s RETURNING *) INSERT INTO "{name}" SELECT * FROM moved""",
            [start, end],
        )
        logger.warning("moved %d usage records out of the DEFAULT partition", cursor.rowcount)
        cursor.execute(
            f'ALTER TABLE {table} ATTACH PARTITION "{name}" FOR VALUES FROM (%s) TO (%s)',
            [start, end],
        )
    return name


def usage_partitions_drop_before(cutoff: dt.datetime) -> tuple[int, int, dt.datetime | None]:
    """Drop every daily partition that ends at or before ``cutoff``.

    Returns (partitions dropped, records they held, the end of the newest partition left in
    place for want of a lock, or None); the caller deletes row by row only what is left
    older than ``cutoff`` in the partitions that straddle it (the legacy and DEFAULT ones,
    and the day that holds the cutoff) — never in one kept back here, which the next run
    drops whole.
    """
    if not is_partitioned():
        return 0, 0, None
    dropped = rows = 0
    kept_until = None
    for partition in usage_partitions():
        if partition.default or partition.end is None or partition.end > cutoff:
            continue
        try:
            with transaction.atomic(), connection.cursor() as cursor:
                cursor.execute(f"SET LOCAL lock_timeout = '{DROP_LOCK_TIMEOUT}'")
                cursor.execute(f'SELECT count(*) FROM "{partition.name}"')
                held = cursor.fetchone()[0]
                cursor.execute(f'DROP TABLE "{partition.name}"')
        except OperationalError as error:
            if getattr(error.__cause__, "sqlstate", None) != LOCK_NOT_AVAILABLE:
                raise
            logger.warning("usage record partition %s not dropped: table busy", partition.name)
            kept_until = max(kept_until or partition.end, partition.end)
            continue
        dropped += 1
        rows += held
        logger.info("usage record partition %s dropped (%d records)", partition.name, held)
    return dropped, rows, kept_until
