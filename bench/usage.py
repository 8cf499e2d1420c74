# ruff: noqa: S608 - SQL is built from model table names only; values are always bound
"""Benchmark the Usage page, the usage REST API and the daily reset at production scale.

On a fresh PostgreSQL database (created beside ``DATABASE_URL``'s and dropped afterwards):

1. accounts by COPY; ``--records`` usage records (default 100 million) over the last 90 days
   by set-based INSERTs inside PostgreSQL into the daily partitions, spread over
   ``--accounts`` accounts (default 100,000) with one busy account holding ``--busy-share``
   of them; rollups and counters derived in SQL, as the gateway keeps them;
2. p50/p95 of the Usage page, its live fragment, the REST endpoints and the CSV export for the
   busy account, and the requests list and export of a quiet one (Django's test client in
   this process: middleware, ORM and templates, no HTTP server);
3. the daily reset over ``--reset-accounts`` accounts (default 1 million, all of them active
   yesterday), with 1% of their rollups wrong, stale reservations to release and two days of
   expired records to drop; then dropping one more day's partition on its own.

Targets (issue 19): Usage page p95 < 100 ms, live panel p95 < 20 ms, reset < 10 s, a day's
partition dropped < 1 s. ``--records`` etc. scale it down; the report says what actually ran.
Needs PostgreSQL: ``DATABASE_URL=postgres://…``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from urllib.parse import urlparse, urlunparse

BASE_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(BASE_DIR))

MODELS = ("LongCat-Flash-Chat", "LongCat-Flash-Thinking")
BUSY_KEYS = ("default", "ci", "notebook")
TARGET_PAGE_P95_MS = 100
TARGET_LIVE_P95_MS = 20
TARGET_RESET_SECONDS = 10
TARGET_DROP_SECONDS = 1


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=100_000_000)
    parser.add_argument("--accounts", type=int, default=100_000)
    parser.add_argument("--reset-accounts", type=int, default=1_000_000)
    parser.add_argument("--busy-share", type=float, default=0.01)
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument("--samples", type=int, default=60, help="timed requests per URL")
    parser.add_argument("--keep", action="store_true", help="keep the benchmark database")
    parser.add_argument(
        "--database", default="", help="name of the throwaway database (default bench_usage_PID)"
    )
    parser.add_argument(
        "--profile", action="store_true", help="print a cProfile of one Usage page request"
    )
    parser.add_argument(
        "--reuse",
        metavar="NAME",
        default="",
        help="time the pages again on a database an earlier run kept (--keep): no loading, "
        "no reset (which changes the data)",
    )
    return parser.parse_args(argv)


# --- the benchmark database ------------------------------------------------------------------


def bench_database_url(name: str = "") -> tuple[str, str, str]:
    """(server URL for admin work, benchmark database URL, benchmark database name)."""
    url = os.environ.get("DATABASE_URL", "")
    if not url.startswith(("postgres://", "postgresql://")):
        raise SystemExit("bench/usage.py needs PostgreSQL: set DATABASE_URL=postgres://…")
    parsed = urlparse(url)
    name = name or f"bench_usage_{os.getpid()}"
    return (
        urlunparse(parsed._replace(path="/postgres")),
        urlunparse(parsed._replace(path=f"/{name}")),
        name,
    )


def admin(server_url: str, sql: str) -> None:
    import psycopg

    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(sql)


# --- loading -----------------------------------------------------------------------------------


class Clock:
    def __init__(self):
        self.steps: list[tuple[str, float]] = []

    def step(self, name: str):
        clock = self

        class _Step:
            def __enter__(self):
                self.started = time.perf_counter()
                print(f"  {name} …", flush=True)

            def __exit__(self, *exc):
                seconds = time.perf_counter() - self.started
                clock.steps.append((name, seconds))
                print(f"  {name}: {seconds:.1f} s", flush=True)

        return _Step()


def _columns_with_defaults(model, given: dict) -> tuple[list[str], list]:
    """Every concrete column except the primary key: ``given`` values or field defaults, so the
    loader keeps working when another app adds a column with a default."""
    from django.utils import timezone

    columns, values = [], []
    now = timezone.now()
    for field in model._meta.concrete_fields:
        if field.primary_key:
            continue
        columns.append(field.column)
        if field.column in given:
            values.append(given[field.column])
        elif getattr(field, "auto_now", False) or getattr(field, "auto_now_add", False):
            values.append(now)
        elif field.has_default():
            values.append(field.get_default())
        else:
            values.append(None)
    return columns, values


def copy_accounts(cursor, start: int, count: int) -> None:
    from accounts.models import User

    columns, template = _columns_with_defaults(
        User,
        {"email": None, "public_id": None, "password": "!", "daily_quota": None},
    )
    email_at = columns.index("email")
    public_at = columns.index("public_id")
    base = uuid.uuid4().int
    table = User._meta.db_table
    with cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
        for n in range(start, start + count):
            row = list(template)
            row[email_at] = f"bench{n}@example.com"
            row[public_at] = uuid.UUID(int=(base + n) & ((1 << 128) - 1))
            copy.write_row(row)


def _table_indexes(cursor, table: str) -> tuple[list[str], list[tuple[str, str]]]:
    """Index and constraint definitions of ``table`` other than its primary key."""
    cursor.execute(
        """
        SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint
        WHERE conrelid = %s::regclass AND contype IN ('u', 'f', 'c')
        """,
        [table],
    )
    constraints = cursor.fetchall()
    cursor.execute(
        """
        SELECT indexdef FROM pg_indexes i
        WHERE tablename = %s AND indexname NOT IN (
            SELECT conname FROM pg_constraint WHERE conrelid = %s::regclass)
        """,
        [table, table],
    )
    return [row[0] for row in cursor.fetchall()], constraints


def without_indexes(cursor, table: str):
    """Drop secondary indexes and constraints for a bulk load; put them back afterwards."""
    indexes, constraints = _table_indexes(cursor, table)

    class _Ctx:
        def __enter__(self):
            for name, _definition in constraints:
                cursor.execute(f'ALTER TABLE {table} DROP CONSTRAINT "{name}"')
            for definition in indexes:
                name = definition.split(" INDEX ", 1)[1].split(" ON ", 1)[0]
                cursor.execute(f"DROP INDEX {name}")

        def __exit__(self, *exc):
            for definition in indexes:
                # A partitioned table's index reads "ON ONLY parent": as such it would be left
                # invalid, without the partitions' indexes; built on the parent, they come too.
                cursor.execute(definition.replace(" ON ONLY ", " ON ", 1))
            for name, definition in constraints:
                cursor.execute(f'ALTER TABLE {table} ADD CONSTRAINT "{name}" {definition}')

    return _Ctx()


RECORDS_PER_STATEMENT = 1_000_000

_RECORD_COLUMNS = (
    "public_id, user_id, api_key_id, key_name, model, endpoint, stream, input_tokens, "
    "output_tokens, estimated, status_code, error_code, latency_ms, first_token_ms, day, "
    "created_at"
)


def _other_record_columns() -> tuple[str, str, dict]:
    """The usage record columns the generators do not write (added by later migrations, such
    as ``playground``), with their model defaults: (", cols", ", values", named parameters)."""
    from usage.models import UsageRecord

    written = {c.strip() for c in _RECORD_COLUMNS.split(",")}
    columns, values, params = [], [], {}
    for field in UsageRecord._meta.concrete_fields:
        if field.primary_key or field.column in written:
            continue
        columns.append(field.column)
        values.append(f"%(extra_{field.column})s")
        params[f"extra_{field.column}"] = field.get_default()
    if not columns:
        return "", "", {}
    return ", " + ", ".join(columns), ", " + ", ".join(values), params


def daily_partitions(cursor, *, first_day: dt.date, last_day: dt.date) -> int:
    """A partition per quota day over the benchmark's history. A fresh database has only the
    migration's: the (empty) legacy one up to the day after tomorrow and a week ahead."""
    from usage.ledger import partitions
    from usage.models import UsageRecord

    table = UsageRecord._meta.db_table
    cursor.execute(f"DROP TABLE IF EXISTS {table}_legacy")
    existing = {p.name for p in partitions.usage_partitions()}
    made = 0
    day = first_day
    while day <= last_day:
        name = f"{table}_p{day:%Y%m%d}"
        if name not in existing:
            partitions.usage_partition_create(
                name, _day_start(day), _day_start(day + dt.timedelta(days=1))
            )
            made += 1
        day += dt.timedelta(days=1)
    return made


def insert_records(cursor, *, count, first_user, accounts, busy_user, busy_share, days, now):
    """``count`` records over the last ``days`` days, generated inside PostgreSQL.

    A set-based ``INSERT … SELECT generate_series`` rather than COPY: on this shared 2-core
    machine the per-row Python of a COPY feed was the bottleneck (about 10x slower).
    About 1.5% of requests fail (429 or 502); the busy account uses three keys.
    """
    from django.conf import settings

    from usage.models import UsageRecord

    table = UsageRecord._meta.db_table
    extra_columns, extra_values, extra_params = _other_record_columns()
    sql = f"""
        WITH s AS (
            SELECT random() < %(busy_share)s AS busy,
                   floor(random() * %(accounts)s)::bigint AS account,
                   floor(random() * 3)::int AS k, floor(random() * 2)::int AS m,
                   random() AS fault, random() < 0.5 AS stream, random() < 0.5 AS anthropic,
                   floor(random() * %(span)s) AS age,
                   floor(random() * 3000)::int AS inp, floor(random() * 800)::int AS outp,
                   floor(random() * 4000)::int AS latency
            FROM generate_series(1, %(n)s)
        ), t AS (
            SELECT *, %(now)s::timestamptz - age * interval '1 second' AS at FROM s
        )
        INSERT INTO {table} ({_RECORD_COLUMNS}{extra_columns})
        SELECT gen_random_uuid(),
               CASE WHEN busy THEN %(busy_user)s ELSE %(first_user)s + account END,
               NULL,
               CASE WHEN busy THEN (ARRAY['default', 'ci', 'notebook'])[k + 1] ELSE 'default' END,
               (ARRAY[%(model_a)s, %(model_b)s])[m + 1],
               CASE WHEN anthropic THEN 'anthropic.messages' ELSE 'openai.chat' END,
               stream, 50 + inp,
               CASE WHEN fault < 0.015 THEN 0 ELSE 20 + outp END,
               false,
               CASE WHEN fault < 0.005 THEN 502 WHEN fault < 0.015 THEN 429 ELSE 200 END,
               CASE WHEN fault < 0.005 THEN 'bad_gateway'
                    WHEN fault < 0.015 THEN 'rate_limit_exceeded' ELSE '' END,
               100 + latency,
               CASE WHEN stream THEN 30 + latency %% 300 END,
               (at AT TIME ZONE %(zone)s)::date,
               at{extra_values}
        FROM t
    """
    done = 0
    while done < count:
        n = min(RECORDS_PER_STATEMENT, count - done)
        cursor.execute(
            sql,
            {
                "busy_share": busy_share,
                "accounts": accounts,
                "span": days * 86400,
                "n": n,
                "now": now,
                "busy_user": busy_user,
                "first_user": first_user,
                "model_a": MODELS[0],
                "model_b": MODELS[1],
                "zone": settings.QUOTA_TIMEZONE,
                **extra_params,
            },
        )
        done += n
        print(f"    {done:,} records", flush=True)


def derive_rollups_and_counters(cursor, *, since: dt.date) -> None:
    """What the gateway would have written as the records settled (tables start empty, so
    plain inserts with the indexes dropped, rebuilt once at the end)."""
    from usage.models import DailyRollup, DailyUsage, UsageRecord

    records, rollups, counters = (m._meta.db_table for m in (UsageRecord, DailyRollup, DailyUsage))
    cursor.execute("SET work_mem = '256MB'")
    with without_indexes(cursor, rollups):
        cursor.execute(
            f"""
            INSERT INTO {rollups} (user_id, api_key_id, key_name, model, day, requests, errors,
                                   input_tokens, output_tokens)
            SELECT user_id, NULL, key_name, model, day, COUNT(*),
                   SUM(CASE WHEN status_code >= 400 THEN 1 ELSE 0 END),
                   SUM(input_tokens), SUM(output_tokens)
            FROM {records} GROUP BY user_id, key_name, model, day
            """
        )
    with without_indexes(cursor, counters):
        cursor.execute(
            f"""
            INSERT INTO {counters} (user_id, day, input_tokens, output_tokens, reserved_tokens,
                                    requests, updated_at)
            SELECT user_id, day, SUM(input_tokens), SUM(output_tokens), 0, COUNT(*), now()
            FROM {records} WHERE day >= %s GROUP BY user_id, day
            """,
            [since],
        )
    cursor.execute("RESET work_mem")


# --- timing ------------------------------------------------------------------------------------


def _read_async(response) -> bytes:
    from asgiref.sync import async_to_sync

    async def read():
        return b"".join([chunk async for chunk in response.streaming_content])

    return async_to_sync(read)()


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(share * (len(ordered) - 1))))
    return ordered[index]


FRESH = " (fresh connection)"


def time_urls(client, urls: list[tuple[str, str]], samples: int) -> list[dict]:
    """p50/p95 per URL. A label ending in ``FRESH`` closes the database connection before
    each request, as production does (``CONN_MAX_AGE=0``): PostgreSQL then opens each
    partition a query can reach anew, which a reused connection has cached."""
    from django.db import connection

    results = []
    for label, url in urls:
        for _ in range(3):  # warm caches and connections
            assert client.get(url).status_code == 200, url
        timings, cpu = [], []
        for _ in range(samples):
            if label.endswith(FRESH):
                connection.close()
            started, started_cpu = time.perf_counter(), time.process_time()
            response = client.get(url)
            if getattr(response, "is_async", False):
                _read_async(response)
            elif hasattr(response, "streaming_content"):
                b"".join(response.streaming_content)
            timings.append((time.perf_counter() - started) * 1000)
            # This process's CPU only (Django, not PostgreSQL): steadier on a busy machine.
            cpu.append((time.process_time() - started_cpu) * 1000)
            assert response.status_code == 200, (url, response.status_code)
        r = {
            "label": label,
            "url": url,
            "p50": statistics.median(timings),
            "p95": percentile(timings, 0.95),
            "cpu_p50": statistics.median(cpu),
            "max": max(timings),
        }
        results.append(r)
        print(f"    {label:<55} p50 {r['p50']:7.1f} ms  p95 {r['p95']:7.1f} ms")
    return results


# --- main --------------------------------------------------------------------------------------


def main(argv=None) -> int:
    args = parse_args(argv)
    if "django" in sys.modules and __import__("django.conf").conf.settings.configured:
        # Django already points at some database here; this script must choose its own.
        raise SystemExit("run bench/usage.py in its own process (python bench/usage.py)")
    server_url, database_url, name = bench_database_url(args.reuse or args.database)
    if args.reuse:
        args.keep = True
    else:
        admin(server_url, f'CREATE DATABASE "{name}"')
    os.environ["DATABASE_URL"] = database_url
    os.environ.setdefault("VAR_DIR", tempfile.mkdtemp(prefix="bench-usage-"))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
    try:
        return run(args)
    finally:
        from django.db import connections

        connections.close_all()
        if args.keep:
            print(f"kept database {name}")
        else:
            admin(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def existing_data() -> tuple[int, int, int]:
    """(busy account, its records, all records) of a kept database; counts as PostgreSQL's
    statistics have them (a count(*) over 10^8 rows would take minutes)."""
    from django.db import connection

    from accounts.models import User
    from usage.models import UsageRecord

    busy_user = User.objects.order_by("pk").values_list("pk", flat=True).first()
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT coalesce(sum(c.reltuples), 0)::bigint FROM pg_inherits i "
            "JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = %s::regclass",
            [UsageRecord._meta.db_table],
        )
        all_records = cursor.fetchone()[0]
        cursor.execute(
            f"SELECT count(*) FROM {UsageRecord._meta.db_table} WHERE user_id = %s", [busy_user]
        )
        busy_records = cursor.fetchone()[0]
    return busy_user, busy_records, all_records


def load(args, clock: Clock, *, now: dt.datetime, yesterday: dt.date) -> tuple[int, int, int]:
    """Fill the benchmark database; (busy account, its records, all records)."""
    from django.core.management import call_command
    from django.db import connection

    from accounts.models import User
    from usage.models import DailyRollup, UsageRecord
    from usage.quota import quota_day

    today = quota_day(now)
    total_accounts = max(args.accounts, args.reset_accounts)
    with clock.step("migrate"):
        call_command("migrate", verbosity=0)
    with connection.cursor() as cursor:
        with clock.step("daily partitions"):
            daily_partitions(
                cursor,
                first_day=today - dt.timedelta(days=args.days + 3),
                last_day=today + dt.timedelta(days=1),
            )
        raw = cursor.connection  # psycopg connection: COPY
        with (
            clock.step(f"COPY {total_accounts:,} accounts"),
            raw.cursor() as pg,
            without_indexes(pg, User._meta.db_table),
        ):
            copy_accounts(pg, 0, total_accounts)
        cursor.execute(f"SELECT min(id), count(*) FROM {User._meta.db_table}")
        first_user, user_count = cursor.fetchone()
        assert user_count == total_accounts
        busy_user = first_user

        record_table = UsageRecord._meta.db_table
        with (
            clock.step(f"INSERT {args.records:,} usage records"),
            without_indexes(cursor, record_table),
        ):
            insert_records(
                cursor,
                count=args.records,
                first_user=first_user,
                accounts=args.accounts,
                busy_user=busy_user,
                busy_share=args.busy_share,
                days=args.days,
                now=now,
            )
        # Yesterday, every account of the reset population made a request.
        with clock.step(f"INSERT yesterday's records for {args.reset_accounts:,} accounts"):
            extra_columns, extra_values, extra_params = _other_record_columns()
            cursor.execute(
                f"""
                INSERT INTO {record_table} ({_RECORD_COLUMNS}{extra_columns})
                SELECT gen_random_uuid(), id, NULL, 'default', %(model)s, 'openai.chat', false,
                       100 + id %% 900, 50 + id %% 300, false, 200, '', 150, NULL, %(day)s,
                       %(start)s::timestamptz + (id %% 80000) * interval '1 second'{extra_values}
                FROM {User._meta.db_table}
                """,
                {
                    "model": MODELS[0],
                    "day": yesterday,
                    "start": _day_start(yesterday),
                    **extra_params,
                },
            )
        with clock.step("rollups and counters from the records"):
            derive_rollups_and_counters(cursor, since=yesterday)
        with clock.step("vacuum analyze"):
            for table in (record_table, DailyRollup._meta.db_table, "usage_dailyusage"):
                cursor.execute(f"VACUUM ANALYZE {table}")
        cursor.execute(f"SELECT count(*) FROM {record_table} WHERE user_id = %s", [busy_user])
        busy_records = cursor.fetchone()[0]
        cursor.execute(f"SELECT count(*) FROM {record_table}")
        all_records = cursor.fetchone()[0]

    return busy_user, busy_records, all_records


def run(args) -> int:
    import django

    django.setup()
    from django.db import connection
    from django.test import Client
    from django.utils import timezone

    from accounts.models import User
    from usage.quota import quota_day

    clock = Clock()
    now = timezone.now()
    today = quota_day(now)
    yesterday = today - dt.timedelta(days=1)
    name = connection.settings_dict["NAME"]
    if args.reuse:
        print(f"usage bench on {name}, as an earlier run left it (--reuse)")
        busy_user, busy_records, all_records = existing_data()
        total_accounts = User.objects.count()
    else:
        total_accounts = max(args.accounts, args.reset_accounts)
        print(
            f"usage bench on {name}: {args.records:,} records, {args.accounts:,} dashboard "
            f"accounts, {args.reset_accounts:,} accounts in the reset"
        )
        busy_user, busy_records, all_records = load(args, clock, now=now, yesterday=yesterday)
    busy = User.objects.get(pk=busy_user)
    client = Client(HTTP_HOST="localhost")
    client.force_login(busy)
    print(f"  busy account: {busy_records:,} records of {all_records:,}")
    print("  timing (in-process Django test client, warm):")
    start = (today - dt.timedelta(days=89)).isoformat()
    urls = [
        ("Usage page, 7 days", "/usage/?days=7"),
        ("Usage page, 7 days" + FRESH, "/usage/?days=7"),
        ("Usage page, 30 days", "/usage/?days=30"),
        ("Usage page, 90 days", "/usage/?days=90"),
        ("Usage page, filtered: errors", "/usage/?status=error"),
        ("Usage page, filtered: key+model", f"/usage/?key=ci&model={MODELS[1]}"),
        ("live fragment", "/usage/live/"),
        ("GET /api/v1/usage/today/", "/api/v1/usage/today/"),
        ("GET /api/v1/usage/daily/ (90 d)", f"/api/v1/usage/daily/?from={start}"),
        ("GET /api/v1/usage/requests/", "/api/v1/usage/requests/"),
        ("GET /api/v1/usage/requests/" + FRESH, "/api/v1/usage/requests/"),
        ("GET /api/v1/usage/requests/?status=error", "/api/v1/usage/requests/?status=error"),
        (
            "CSV export, requests of yesterday",
            f"/usage/export/?kind=requests&start={yesterday}&end={yesterday}",
        ),
    ]
    timings = time_urls(client, urls, args.samples)
    # A quiet account (about records / accounts of them): what nearly every account sees.
    quiet = User.objects.get(pk=busy_user + 7)
    client.force_login(quiet)
    timings += time_urls(
        client,
        [
            ("quiet account: GET /api/v1/usage/requests/", "/api/v1/usage/requests/"),
            ("quiet account: Usage page, 90 days", "/usage/?days=90"),
            ("quiet account: Usage page, 90 days" + FRESH, "/usage/?days=90"),
            (
                "quiet account: CSV export, 90 days",
                f"/usage/export/?kind=requests&start={start}&end={today}",
            ),
        ],
        args.samples,
    )
    if args.profile:
        import cProfile
        import pstats

        profiler = cProfile.Profile()
        profiler.runcall(client.get, "/usage/?days=90")
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(35)

    if args.reuse:
        reset_lines, reset_ok = ["  daily reset and partition drop: not run (--reuse)"], True
    else:
        reset_lines, reset_ok = reset_and_drop(args, now=now, yesterday=yesterday)

    print()
    print("usage bench results")
    print(f"  data: {all_records:,} usage records, {total_accounts:,} accounts, busy account "
          f"{busy_records:,} records, {args.days} days")  # fmt: skip
    missed = []
    for t in timings:
        target = _target_ms(t["label"])
        flag = "" if target is None else "ok" if t["p95"] < target else "SLOW"
        if flag == "SLOW":
            missed.append(t["label"])
        print(
            f"  {t['label']:<55} p50 {t['p50']:7.1f} ms  p95 {t['p95']:7.1f} ms  "
            f"(portal CPU p50 {t['cpu_p50']:5.1f} ms)  {flag}"
        )
    for line in reset_lines:
        print(line)
    print("  load steps: " + ", ".join(f"{n} {s:.0f} s" for n, s in clock.steps))
    ok = not missed and reset_ok
    load1, _load5, _load15 = os.getloadavg()
    print(f"  machine: {os.cpu_count()} CPUs, load average {load1:.1f} at the end")
    print(f"  targets {'met' if ok else 'MISSED'}")
    return 0 if ok else 1


def reset_and_drop(args, *, now: dt.datetime, yesterday: dt.date) -> tuple[list[str], bool]:
    """The daily reset over yesterday's accounts, then one day's partition dropped: the lines
    to report, and whether both met their targets."""
    from django.db import connection

    from accounts.models import User
    from usage.ledger import partitions
    from usage.ledger.upkeep import usage_daily_reset
    from usage.models import DailyRollup, QuotaReset, Reservation, UsageRecord

    today = yesterday + dt.timedelta(days=1)
    # The reset: 1% of yesterday's rollups wrong (a lost batch), stale reservations, and the
    # records of one day past retention to prune.
    with connection.cursor() as cursor:
        cursor.execute(
            f"""UPDATE {DailyRollup._meta.db_table} SET requests = requests + 1
                WHERE day = %s AND user_id %% 100 = 0""",
            [yesterday],
        )
        corrupted = cursor.rowcount
        cursor.execute(
            f"""INSERT INTO {Reservation._meta.db_table} (user_id, day, tokens, created_at)
                SELECT id, %s, 1000, now() - interval '2 hours'
                FROM {User._meta.db_table} WHERE id %% 100 = 1""",
            [today],
        )
        cursor.execute(
            """INSERT INTO usage_dailyusage (user_id, day, input_tokens, output_tokens,
                   reserved_tokens, requests, updated_at)
               SELECT user_id, day, 0, 0, SUM(tokens), 0, now() FROM usage_reservation
               GROUP BY user_id, day
               ON CONFLICT (user_id, day) DO UPDATE
               SET reserved_tokens = usage_dailyusage.reserved_tokens + excluded.reserved_tokens"""
        )
        cursor.execute(
            f"UPDATE {UsageRecord._meta.db_table} SET created_at = created_at - interval '2 days' "
            f"WHERE created_at < %s",
            [now - dt.timedelta(days=args.days - 1)],
        )
        expiring = cursor.rowcount
    QuotaReset.objects.create(
        day=yesterday - dt.timedelta(days=1), days_closed=1, started_at=now, finished_at=now
    )
    print(
        f"  reset: {args.reset_accounts:,} accounts active yesterday, {corrupted:,} wrong rollups, "
        f"{Reservation.objects.count():,} stale reservations, {expiring:,} expired records"
    )
    started = time.perf_counter()
    closed = usage_daily_reset()
    reset_seconds = time.perf_counter() - started
    started = time.perf_counter()
    again = usage_daily_reset()
    rerun_seconds = time.perf_counter() - started
    # One more day past retention, on its own: the oldest day still holding records.
    with connection.cursor() as cursor:
        for oldest in partitions.usage_partitions():
            if oldest.start and not oldest.default:
                cursor.execute(f'SELECT EXISTS (SELECT 1 FROM "{oldest.name}")')
                if cursor.fetchone()[0]:
                    break
    started = time.perf_counter()
    dropped, dropped_rows, _kept = partitions.usage_partitions_drop_before(oldest.end)
    drop_seconds = time.perf_counter() - started
    assert dropped >= 1, dropped

    lines = [
        f"  daily reset: {reset_seconds:.1f} s (target < {TARGET_RESET_SECONDS} s): "
        f"{closed.rollups_written:,} rollups corrected, {closed.reservations_released:,} "
        f"reservations released, {closed.records_pruned:,} records pruned; second run "
        f"{rerun_seconds:.1f} s ({again.days_closed} days closed)",
        f"  dropping a day's partition ({oldest.name}, {dropped_rows:,} records): "
        f"{drop_seconds:.2f} s (target < {TARGET_DROP_SECONDS} s)",
    ]
    return lines, reset_seconds < TARGET_RESET_SECONDS and drop_seconds < TARGET_DROP_SECONDS


def _target_ms(label: str) -> float | None:
    """The p95 target of a timed URL; None for those with none (lists and exports: what
    matters is that they do not grow with the table, compared between scales)."""
    if label.startswith(("Usage page", "quiet account: Usage page")):
        return TARGET_PAGE_P95_MS
    if label.startswith("live fragment"):
        return TARGET_LIVE_P95_MS
    return None


def _day_start(day: dt.date) -> dt.datetime:
    from usage.quota import quota_zone

    return dt.datetime.combine(day, dt.time(0), tzinfo=quota_zone())


if __name__ == "__main__":
    raise SystemExit(main())
