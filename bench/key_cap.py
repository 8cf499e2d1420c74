# ruff: noqa: S608 - SQL is built from model table names only; values are always bound
"""What a key's daily cap costs the reservation statement (PostgreSQL).

On a fresh database (created beside ``DATABASE_URL``'s and dropped afterwards), one account
with a key without a cap and one with a cap; for each, ``--rounds`` reserve + settle pairs
through ``PgLedger`` one after another (no contention), timing the reserve round trip in this
process, plus the server's own execution time of the reserve statement (``EXPLAIN ANALYZE``).
The baseline is the reserve statement as it was before key caps (account quota only), on the
uncapped key. Usage: ``DATABASE_URL=postgres://… python bench/key_cap.py [--rounds N]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(BASE_DIR))

from bench.usage import admin, bench_database_url  # noqa: E402


def _baseline_sql() -> str:
    """The reserve statement before key caps: the cost an uncapped key must keep paying."""
    from accounts.models import User
    from keys.models import ApiKey
    from usage.models import DailyUsage, Reservation

    return f"""
WITH auth AS (
    SELECT k.user_id, COALESCE(u.daily_quota, $1::bigint) AS quota
    FROM {ApiKey._meta.db_table} k JOIN {User._meta.db_table} u ON u.id = k.user_id
    WHERE k.id = $2 AND k.digest = $3 AND k.is_active AND u.is_active
), cur AS (
    SELECT du.id, du.input_tokens + du.output_tokens + du.reserved_tokens AS total, auth.quota
    FROM {DailyUsage._meta.db_table} du JOIN auth ON du.user_id = auth.user_id
    WHERE du.day = $4
    FOR UPDATE OF du
), granted AS (
    SELECT id, $5::bigint + LEAST($6::bigint, quota - total - $5::bigint) AS tokens
    FROM cur WHERE quota - total - $5::bigint >= 1
), upd AS (
    UPDATE {DailyUsage._meta.db_table} du
    SET reserved_tokens = du.reserved_tokens + g.tokens, updated_at = now()
    FROM granted g WHERE du.id = g.id
    RETURNING g.tokens
), res AS (
    INSERT INTO {Reservation._meta.db_table} (user_id, day, tokens, created_at, lease_until)
    SELECT auth.user_id, $4, upd.tokens, now(), now() + make_interval(secs => $7::float8)
    FROM upd CROSS JOIN auth
    RETURNING id, tokens
)
SELECT auth.user_id, auth.quota, (SELECT total FROM cur), (SELECT id FROM res),
       (SELECT tokens FROM res)
FROM auth
"""


async def _measure(rounds: int) -> None:
    from django.conf import settings

    from accounts.services import account_create_with_key
    from keys.crypto import key_digest
    from keys.models import ApiKey
    from keys.services import api_key_set_controls
    from usage.ledger import Reserved
    from usage.ledger import postgres as pg
    from usage.models import Reservation
    from usage.quota import quota_day

    def make(email, cap):
        user, secret = account_create_with_key(email=email)
        type(user).objects.filter(pk=user.pk).update(daily_quota=10**12)
        key = ApiKey.objects.get(user=user)
        if cap:
            api_key_set_controls(api_key=key, daily_token_cap=10**12)
        return key.pk, key_digest(secret)

    from asgiref.sync import sync_to_async

    free = await sync_to_async(make)("free@example.com", False)
    capped = await sync_to_async(make)("capped@example.com", True)
    ledger = pg.PgLedger(max_size=2)
    await ledger.open()
    day = quota_day()
    baseline = _baseline_sql()
    lease = float(settings.GATEWAY_RESERVATION_LEASE_SECONDS)

    async def reserve(kind, key):
        key_id, digest = key
        if kind == "baseline":
            row = await ledger._fetchrow(
                baseline, settings.DAILY_FREE_QUOTA, key_id, digest, day, 100, 400, lease
            )
            user_id, _q, _t, reservation_id, tokens = row
            return Reserved(reservation_id, user_id, day, tokens, 100, tokens - 100)
        return await ledger.reserve(
            key_id=key_id, digest=digest, day=day, input_tokens=100, max_output_tokens=400
        )

    # "uncapped" first: its first reservation creates the account's counter for the day.
    cases = [("uncapped", free), ("baseline", free), ("capped", capped)]
    for kind, key in cases:  # warm up: counters created, statements prepared
        for _ in range(50):
            done = await reserve(kind, key)
            await ledger.settle(reserved=done, input_tokens=100, output_tokens=10)
    timings = {kind: [] for kind, _ in cases}
    for _ in range(rounds):
        for kind, key in cases:  # interleaved, so that drift hits every case alike
            started = time.perf_counter()
            done = await reserve(kind, key)
            timings[kind].append(time.perf_counter() - started)
            await ledger.settle(reserved=done, input_tokens=100, output_tokens=10)
    conn = await ledger.connections.acquire()
    server = {}
    for kind, (key_id, digest) in cases:
        sql = {
            "baseline": baseline,
            "uncapped": pg._RESERVE_SQL,
            "capped": pg._RESERVE_CAPPED_SQL,
        }[kind]
        args = [settings.DAILY_FREE_QUOTA, key_id, digest, day, 100, 400, lease]
        if kind != "baseline":
            args.append(None)
        samples = []
        for _ in range(200):
            plan = await conn.fetchval(f"EXPLAIN (ANALYZE, FORMAT JSON) {sql}", *args)
            samples.append(json.loads(plan)[0]["Execution Time"])
        server[kind] = statistics.median(samples)
    ledger.connections.release(conn)
    await ledger.close()
    await sync_to_async(lambda: Reservation.objects.all().delete())()
    print(f"\n{rounds} reserve round trips per case (PostgreSQL, one connection, no contention)")
    print("| reserve statement | p50 round trip | mean | server execution (median) |")
    print("|---|---|---|---|")
    for kind, _ in cases:
        values = timings[kind]
        print(
            f"| {kind} | {statistics.median(values) * 1e6:.0f} µs "
            f"| {statistics.fmean(values) * 1e6:.0f} µs | {server[kind] * 1000:.0f} µs |"
        )


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3000)
    args = parser.parse_args(argv)
    server_url, bench_url, name = bench_database_url()
    admin(server_url, f'CREATE DATABASE "{name}"')
    try:
        os.environ["DATABASE_URL"] = bench_url
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
        import django
        from django.core.management import call_command

        django.setup()
        call_command("migrate", verbosity=0)
        asyncio.run(_measure(args.rounds))
    finally:
        from django.db import connections

        connections.close_all()
        admin(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
