"""What borrowing a connection costs the gateway's process: asyncpg's pool (its default reset
on release, and ``reset=`` a no-op, asyncpg >= 0.30) against the ledger's own free list
(``usage.ledger.postgres._Connections``).

One trivial statement per borrow (``SELECT $1::int``), so that what differs is the borrowing;
``--statements`` borrows per run, by one task after the other and by 32 at once, each case run
``--rounds`` times interleaved; reported: this process's CPU per statement (best and worst
run) and statements per second. Uses ``DATABASE_URL``'s database as it is (it writes nothing).
Usage: ``DATABASE_URL=postgres://… python bench/connections.py [--statements N]``.
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


async def _no_reset(_connection) -> None:
    """The ledger borrows a connection for one statement and changes no session state."""


async def _run(borrow, give_back, statements: int, tasks: int) -> None:
    left = iter(range(statements))

    async def task():
        for n in left:
            conn = await borrow()
            try:
                await conn.fetchval("SELECT $1::int", n)
            finally:
                await give_back(conn)

    await asyncio.gather(*(task() for _ in range(tasks)))


async def _measure(statements: int, rounds: int) -> None:
    import asyncpg
    from django.conf import settings

    from usage.ledger.postgres import _Connections, pg_connect_args

    size = settings.GATEWAY_DB_POOL_SIZE
    args = pg_connect_args()
    pools = {
        "asyncpg pool, default reset": await asyncpg.create_pool(
            **args, min_size=size, max_size=size
        ),
        "asyncpg pool, reset=no-op": await asyncpg.create_pool(
            **args, min_size=size, max_size=size, reset=_no_reset
        ),
    }
    own = _Connections(max_size=size)

    async def own_release(conn):
        own.release(conn)

    cases = {name: (pool.acquire, pool.release) for name, pool in pools.items()}
    cases["the ledger's free list"] = (own.acquire, own_release)
    figures = {(name, tasks): [] for name in cases for tasks in (1, 32)}
    for borrow, give_back in cases.values():  # warm up: every connection open
        await _run(borrow, give_back, 500, 32)
    for _ in range(rounds):
        for (name, tasks), runs in figures.items():
            borrow, give_back = cases[name]
            started, cpu = time.perf_counter(), time.process_time()
            await _run(borrow, give_back, statements, tasks)
            elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
            runs.append((cpu * 1e6 / statements, statements / elapsed))
    for pool in pools.values():
        await pool.close()
    await own.close()
    print(
        f"\n{statements} statements per run, {size} connections, best and worst of {rounds} "
        f"runs; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}"
    )
    print_runs(("connections", "statement", "statements"), figures)


def print_runs(names: tuple[str, str, str], figures: dict) -> None:
    """A Markdown table of ``figures`` ({(case, tasks): [(CPU µs per call, calls/s), …]}):
    best and worst run of each; ``names`` are the case column's and a call's, singular and
    plural."""
    case, call, calls = names
    print(f"| {case} | tasks | CPU per {call} | {calls}/s |")
    print("|---|---|---|---|")
    for (name, tasks), runs in figures.items():
        cpu = sorted(run[0] for run in runs)
        rate = sorted(run[1] for run in runs)
        print(
            f"| {name} | {tasks} | {cpu[0]:.0f}-{cpu[-1]:.0f} µs | {rate[0]:.0f}-{rate[-1]:.0f} |"
        )


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--statements", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
    import django

    django.setup()
    asyncio.run(_measure(args.statements, args.rounds))


if __name__ == "__main__":
    main()
