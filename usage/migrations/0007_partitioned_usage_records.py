"""On PostgreSQL, ``usage_usagerecord`` becomes a table partitioned by range of ``created_at``,
one partition per quota day (``usage.ledger.partitions``); on SQLite nothing changes.

Existing rows are not copied: the old table becomes the first partition, ``legacy``, covering
everything before the first daily boundary. Every step that reads the old table runs before
the swap, without blocking writes (``CREATE INDEX CONCURRENTLY``, a ``CHECK`` added ``NOT
VALID`` and then validated under ``SHARE UPDATE EXCLUSIVE``); the swap itself is one short
transaction of catalog changes: ``ATTACH PARTITION`` finds the validated ``CHECK`` and the
matching indexes and neither scans the table nor builds an index. The column list is never
written out: the new table is built ``LIKE`` the old one, so columns added by earlier
migrations come along, and later ``AddField`` migrations reach every partition.

Written out here rather than imported from ``usage.ledger.partitions``, so that this migration
keeps doing what it did when that module changes.
"""

import datetime as dt
import zoneinfo

from django.conf import settings
import django.db.models.deletion
from django.db import migrations, models

TABLE = "usage_usagerecord"
LEGACY = f"{TABLE}_legacy"
DEFAULT = f"{TABLE}_default"
BOUND_CHECK = "usage_record_legacy_bound"
AHEAD_DAYS = 7
# A lock the swap cannot get in this time (a long report holding the table) fails the
# migration, to be run again, rather than queueing every insert behind it.
LOCK_TIMEOUT = "10s"


def _midnight(day: dt.date) -> dt.datetime:
    zone = zoneinfo.ZoneInfo(settings.QUOTA_TIMEZONE)
    return dt.datetime.combine(day, dt.time(0), tzinfo=zone)


def _quota_today() -> dt.date:
    return dt.datetime.now(zoneinfo.ZoneInfo(settings.QUOTA_TIMEZONE)).date()


def partition_table(cursor, table: str, bound_day: dt.date, ahead_days: int = AHEAD_DAYS):
    """Turn the plain ``table`` into a partitioned one whose first partition is the old
    table (everything before midnight of ``bound_day``), plus daily partitions from there for
    ``ahead_days`` and a DEFAULT partition. Idempotent up to the swap; runs in autocommit."""
    legacy, bound = f"{table}_legacy", _midnight(bound_day)
    cursor.execute("SELECT relkind FROM pg_class WHERE oid = %s::regclass", [table])
    if cursor.fetchone()[0] == "p":
        return
    # 1. Unique indexes that include the partition key, built without blocking writes. A
    #    build that failed half-way leaves an invalid index behind: start that one again.
    for name, columns in (
        (f"{table}_id_time_key", "id, created_at"),
        (f"{table}_public_id_time_key", "public_id, created_at"),
    ):
        cursor.execute(
            "SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass(%s)", [name]
        )
        found = cursor.fetchone()
        if found and not found[0]:
            cursor.execute(f'DROP INDEX CONCURRENTLY "{name}"')
        if not found or not found[0]:
            cursor.execute(f'CREATE UNIQUE INDEX CONCURRENTLY "{name}" ON {table} ({columns})')
    # 2. The bound the old table will hold as a partition, proven without an exclusive lock.
    cursor.execute(f'ALTER TABLE {table} DROP CONSTRAINT IF EXISTS "{BOUND_CHECK}"')
    cursor.execute(
        f'ALTER TABLE {table} ADD CONSTRAINT "{BOUND_CHECK}" '
        "CHECK (created_at IS NOT NULL AND created_at < %s) NOT VALID",
        [bound],
    )
    cursor.execute(f'ALTER TABLE {table} VALIDATE CONSTRAINT "{BOUND_CHECK}"')
    # 3. The swap: catalog changes only, in one transaction.
    cursor.execute("BEGIN")
    try:
        cursor.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
        cursor.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
        _swap(cursor, table, legacy, bound)
        _create_partitions(cursor, table, bound_day, ahead_days)
    except BaseException:
        cursor.execute("ROLLBACK")
        raise
    cursor.execute("COMMIT")


def _swap(cursor, table: str, legacy: str, bound: dt.datetime) -> None:
    cursor.execute("SELECT COALESCE(MAX(id), 0) FROM " + table)
    last_id = cursor.fetchone()[0]
    # The key constraints that do not include created_at cannot live on a partitioned table;
    # the unique indexes of step 1 take their place on the old table.
    cursor.execute(
        "SELECT conname FROM pg_constraint WHERE conrelid = %s::regclass AND contype IN "
        "('p', 'u')",
        [table],
    )
    for (name,) in cursor.fetchall():
        cursor.execute(f'ALTER TABLE {table} DROP CONSTRAINT "{name}"')
    cursor.execute(
        f'ALTER TABLE {table} ADD CONSTRAINT "{table}_id_time_key" '
        f'PRIMARY KEY USING INDEX "{table}_id_time_key"'
    )
    cursor.execute(
        f'ALTER TABLE {table} ADD CONSTRAINT "{table}_public_id_time_key" '
        f'UNIQUE USING INDEX "{table}_public_id_time_key"'
    )
    # An identity sequence belongs to its table and would go when the legacy partition is
    # dropped: the partitioned table gets a sequence of its own that carries on from it.
    cursor.execute(
        "SELECT attidentity FROM pg_attribute WHERE attrelid = %s::regclass AND attname = 'id'",
        [table],
    )
    if cursor.fetchone()[0]:
        cursor.execute(f"ALTER TABLE {table} ALTER COLUMN id DROP IDENTITY")
    else:
        cursor.execute(f"ALTER TABLE {table} ALTER COLUMN id DROP DEFAULT")
    cursor.execute(f"ALTER TABLE {table} RENAME TO {legacy}")
    cursor.execute(
        """
        SELECT i.relname, pg_get_indexdef(i.oid) FROM pg_index x
        JOIN pg_class i ON i.oid = x.indexrelid
        WHERE x.indrelid = %s::regclass AND NOT EXISTS (
            SELECT 1 FROM pg_constraint c WHERE c.conindid = i.oid)
        """,
        [legacy],
    )
    indexes = cursor.fetchall()
    cursor.execute(
        "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint "
        "WHERE conrelid = %s::regclass AND contype = 'f'",
        [legacy],
    )
    foreign_keys = cursor.fetchall()
    for name, _definition in indexes:
        cursor.execute(f'ALTER INDEX "{name}" RENAME TO "{name[:55]}_legacy"')
    cursor.execute(f'ALTER INDEX "{table}_id_time_key" RENAME TO "{legacy}_pkey"')
    cursor.execute(
        f'ALTER INDEX "{table}_public_id_time_key" RENAME TO "{legacy}_public_id_key"'
    )

    # LIKE copies every column with its type, NOT NULL, default and CHECK constraint.
    cursor.execute(
        f"CREATE TABLE {table} (LIKE {legacy} INCLUDING DEFAULTS INCLUDING CONSTRAINTS "
        "INCLUDING STORAGE INCLUDING COMMENTS) PARTITION BY RANGE (created_at)"
    )
    cursor.execute(f'ALTER TABLE {table} DROP CONSTRAINT "{BOUND_CHECK}"')
    cursor.execute(f"CREATE SEQUENCE {table}_id_seq OWNED BY {table}.id")
    cursor.execute(f"SELECT setval('{table}_id_seq', %s, %s)", [max(last_id, 1), last_id > 0])
    cursor.execute(f"ALTER TABLE {table} ALTER COLUMN id SET DEFAULT nextval('{table}_id_seq')")
    # PostgreSQL requires the partition key in every unique constraint. Django still treats
    # ``id`` alone as the primary key, which is safe: ids come from one sequence and are never
    # written by hand, so (id, created_at) unique means id unique; likewise ``public_id`` is a
    # random UUID made with the row, and nothing looks a record up by it alone on a hot path.
    cursor.execute(f'ALTER TABLE {table} ADD CONSTRAINT "{table}_pkey" PRIMARY KEY (id, created_at)')
    cursor.execute(
        f'ALTER TABLE {table} ADD CONSTRAINT "{table}_public_id_key" UNIQUE (public_id, created_at)'
    )
    # Same names as Django gave them, so later AddIndex/RemoveIndex migrations find them; on
    # the empty partitioned table these are instant, and ATTACH adopts the old table's copies.
    for name, definition in indexes:
        head, tail = definition.split(" ON ", 1)
        head = head.replace(f" {name}", f' "{name}"', 1)
        cursor.execute(f"{head} ON {table} {tail.split(' ', 1)[1]}")
    for name, definition in foreign_keys:
        cursor.execute(f'ALTER TABLE {table} ADD CONSTRAINT "{name}" {definition}')
    cursor.execute(
        f"ALTER TABLE {table} ATTACH PARTITION {legacy} FOR VALUES FROM (MINVALUE) TO (%s)",
        [bound],
    )
    cursor.execute(f'ALTER TABLE {legacy} DROP CONSTRAINT "{BOUND_CHECK}"')


def _create_partitions(cursor, table: str, first_day: dt.date, ahead_days: int) -> None:
    cursor.execute(f"CREATE TABLE {table}_default PARTITION OF {table} DEFAULT")
    for n in range(ahead_days + 1):
        day = first_day + dt.timedelta(days=n)
        cursor.execute(
            f"CREATE TABLE {table}_p{day:%Y%m%d} PARTITION OF {table} FOR VALUES FROM (%s) TO (%s)",
            [_midnight(day), _midnight(day + dt.timedelta(days=1))],
        )


# The requests list orders by (created_at, id) newest first: with the id in the index too,
# PostgreSQL merges the partitions' index scans and stops after one page, instead of sorting
# all of an account's records. The account-only index is left out: the new one serves those
# lookups, and every index a partition has is one more the planner opens per partition.
NEW_INDEX = "usage_record_user_time_id_idx"
OLD_INDEXES = ("usage_record_user_time_idx", "usage_usagerecord_user_id_2f8497c4")


def forwards(apps, schema_editor):
    with schema_editor.connection.cursor() as cursor:
        if schema_editor.connection.vendor != "postgresql":
            # SQLite keeps the plain table (the daily reset deletes its old rows).
            cursor.execute(
                f'CREATE INDEX "{NEW_INDEX}" ON {TABLE} (user_id, created_at DESC, id DESC)'
            )
            for name in OLD_INDEXES:
                cursor.execute(f'DROP INDEX IF EXISTS "{name}"')
            return
        cursor.execute("SELECT relkind FROM pg_class WHERE oid = %s::regclass", [TABLE])
        if cursor.fetchone()[0] != "p":
            # Built (and the old ones dropped) without a write lock, before the swap adopts them.
            cursor.execute(f'DROP INDEX CONCURRENTLY IF EXISTS "{NEW_INDEX}"')
            cursor.execute(
                f'CREATE INDEX CONCURRENTLY "{NEW_INDEX}" '
                f"ON {TABLE} (user_id, created_at DESC, id DESC)"
            )
            for name in OLD_INDEXES:
                cursor.execute(f'DROP INDEX CONCURRENTLY IF EXISTS "{name}"')
        # Midnight after tomorrow: rows written while the CHECK is validated (created now)
        # are inside it. Rows from then on go to the daily partitions.
        partition_table(cursor, TABLE, _quota_today() + dt.timedelta(days=2))


class Migration(migrations.Migration):
    # CREATE INDEX CONCURRENTLY and VALIDATE must run outside the swap's transaction.
    atomic = False

    dependencies = [
        ("usage", "0006_key_daily_usage"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.RemoveIndex(model_name="usagerecord", name=OLD_INDEXES[0]),
                migrations.AddIndex(
                    model_name="usagerecord",
                    index=models.Index(
                        fields=["user", "-created_at", "-id"], name=NEW_INDEX
                    ),
                ),
                migrations.AlterField(
                    model_name="usagerecord",
                    name="user",
                    field=models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="+",
                        to=settings.AUTH_USER_MODEL,
                    ),
                ),
            ],
            database_operations=[
                # No reverse: going back would mean copying every row into a plain table, a
                # step to plan for a maintenance window, not to run as an automatic rollback.
                migrations.RunPython(forwards, migrations.RunPython.noop, elidable=False),
            ],
        ),
    ]
