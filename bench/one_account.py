"""How many requests one busy account can make per second, as far as the ledger is concerned
(PostgreSQL), with and without natural batching (``usage.ledger.postgres._Batcher``).

On a fresh database (created beside ``DATABASE_URL``'s and dropped afterwards), one account
with a key without a cap; ``--clients`` concurrent clients each reserve and settle, one request
after the other, through one ``PgLedger`` (``GATEWAY_DB_POOL_SIZE`` connections), until
``--requests`` pairs are done. Two cases, interleaved ``--rounds`` times: every call its own
statement (the ledger before batching: its batchers bypassed) and natural batching. Reported:
pairs per second, this process's CPU per pair (the ledger's side of what the gateway pays),
the CPU of the PostgreSQL backends per pair (read from /proc: the database runs on this
machine), and statements per pair. The gateway's HTTP work is left out on purpose: on a
shared 2-core machine it, not the account's counter row, bounds the gateway benchmark.
Usage: ``DATABASE_URL=postgres://… python bench/one_account.py [--clients 32] [--requests N]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(BASE_DIR))

from bench.gateway import cpu_seconds  # noqa: E402
from bench.usage import admin, bench_database_url  # noqa: E402


async def _backends_cpu(ledger) -> float:
    conn = await ledger.connections.acquire()
    try:
        pids = await conn.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
        )
    finally:
        ledger.connections.release(conn)
    return sum(cpu_seconds(row["pid"]) for row in pids)


async def _run(ledger, key_id: int, digest: str, *, clients: int, requests: int) -> None:
    from usage.ledger import Reserved
    from usage.quota import quota_day

    day = quota_day()
    left = iter(range(requests))

    async def client():
        for _ in left:
            reserved = await ledger.reserve(
                key_id=key_id, digest=digest, day=day, input_tokens=100, max_output_tokens=400
            )
            assert isinstance(reserved, Reserved), reserved
            await ledger.settle(reserved=reserved, input_tokens=100, output_tokens=10)

    await asyncio.gather(*(client() for _ in range(clients)))


async def _measure(clients: int, requests: int, rounds: int) -> None:
    from asgiref.sync import sync_to_async
    from django.conf import settings

    from accounts.services import account_create_with_key
    from keys.crypto import key_digest
    from keys.models import ApiKey
    from usage.ledger import postgres as pg

    def make():
        user, secret = account_create_with_key(email="busy@example.com")
        type(user).objects.filter(pk=user.pk).update(daily_quota=10**15)
        return ApiKey.objects.get(user=user).pk, key_digest(secret)

    key_id, digest = await sync_to_async(make)()
    ledger = pg.PgLedger(max_size=settings.GATEWAY_DB_POOL_SIZE)
    await ledger.open()
    batched = (ledger._reserving.call, ledger._settling.call)
    alone = (ledger._reserving._one, ledger._settling._one)
    # Warm up: the day's counter, prepared statements, every connection open.
    await _run(ledger, key_id, digest, clients=clients, requests=500)
    figures = {"one statement per call": [], "natural batching": []}
    for _ in range(rounds):
        for case, (reserve, settle) in zip(figures, (alone, batched), strict=True):
            ledger._reserving.call, ledger._settling.call = reserve, settle
            trips, db = ledger.round_trips, await _backends_cpu(ledger)
            started, cpu = time.perf_counter(), time.process_time()
            await _run(ledger, key_id, digest, clients=clients, requests=requests)
            elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
            db = await _backends_cpu(ledger) - db
            figures[case].append(
                (
                    requests / elapsed,
                    cpu * 1000 / requests,
                    db * 1000 / requests,
                    (ledger.round_trips - trips) / requests,
                )
            )
    await ledger.close()
    print(
        f"\none account, {clients} clients, {requests} reserve + settle pairs per run, "
        f"{settings.GATEWAY_DB_POOL_SIZE} connections; {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.2f}; best and worst of {rounds} interleaved runs"
    )
    print("| ledger | pairs/s | ledger CPU/pair | PostgreSQL CPU/pair | statements/pair |")
    print("|---|---|---|---|---|")
    for case, runs in figures.items():
        cells = []
        for n, unit in ((0, ""), (1, " ms"), (2, " ms"), (3, "")):
            values = sorted(run[n] for run in runs)
            digits = 0 if n == 0 else 2 if n == 3 else 3
            cells.append(f"{values[0]:.{digits}f}-{values[-1]:.{digits}f}{unit}")
        print(f"| {case} | " + " | ".join(cells) + " |")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    server_url, bench_url, name = bench_database_url(f"bench_one_account_{os.getpid()}")
    admin(server_url, f'CREATE DATABASE "{name}"')
    try:
        os.environ["DATABASE_URL"] = bench_url
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
        import django
        from django.core.management import call_command

        django.setup()
        call_command("migrate", verbosity=0)
        asyncio.run(_measure(args.clients, args.requests, args.rounds))
    finally:
        from django.db import connections

        connections.close_all()
        admin(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
