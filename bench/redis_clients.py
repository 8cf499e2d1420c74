"""What the rate limiter's one Redis call per request costs the gateway's process: the small
pipelined client (``gateway.serving.redis_wire``) against redis-py's asyncio client, with its
own Python reply parser and with ``hiredis`` (redis-py's C parser).

Every call is the limiter's real script (``gateway.serving.ratelimit._LUA`` by ``EVALSHA``,
keys under ``bench:rl:``, which expire with their window), so what differs is the client;
``--calls`` calls per run, by one task after the other and by 32 at once, each case run
``--rounds`` times interleaved; reported: this process's CPU per call (best and worst run) and
calls per second. ``hiredis`` is not one of the project's dependencies: if it cannot be
imported, the benchmark installs it into ``var/bench/hiredis`` (pip ``--target``) and loads it
from there. Usage: ``REDIS_URL=redis://… python bench/redis_clients.py [--calls N]``.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(BASE_DIR))
HIREDIS_DIR = BASE_DIR / "var" / "bench" / "hiredis"
TASKS = (1, 32)


def _hiredis_importable() -> bool:
    """Before redis-py is imported: it decides once, at import, whether hiredis is there."""
    if importlib.util.find_spec("hiredis") is not None:
        return True
    if not HIREDIS_DIR.exists():
        print(f"installing hiredis into {HIREDIS_DIR.relative_to(BASE_DIR)}")
        pip = [sys.executable, "-m", "pip", "install", "--quiet", "--target", str(HIREDIS_DIR)]
        if subprocess.run([*pip, "hiredis"], check=False).returncode != 0:
            return False
    sys.path.insert(0, str(HIREDIS_DIR))
    importlib.invalidate_caches()
    return importlib.util.find_spec("hiredis") is not None


async def _run(call, calls: int, tasks: int) -> None:
    left = iter(range(calls))

    async def task():
        for n in left:
            await call(n)

    await asyncio.gather(*(task() for _ in range(tasks)))


def _limiter_call(script):
    """One admission of the key ``n % 100`` in this minute's window, as ``check`` makes it."""

    def call(n):
        window = int(time.time() // 60)
        return script([f"bench:rl:{n % 100}:{window}"], [1_000_000, 100_000_000, 10, 0])

    return call


async def _measure(redis_url: str, calls: int, rounds: int, with_hiredis: bool) -> None:
    import redis.asyncio as redis_asyncio
    from redis._parsers import _AsyncRESP2Parser

    from bench.connections import print_runs
    from gateway.serving.ratelimit import _LUA
    from gateway.serving.redis_wire import RespClient, Script

    own = RespClient(redis_url)
    cases = {"redis_wire (the gateway's)": _limiter_call(Script(own, _LUA))}
    parsers = {"redis-py, Python parser": _AsyncRESP2Parser}
    if with_hiredis:
        from redis._parsers import _AsyncHiredisParser

        parsers["redis-py + hiredis"] = _AsyncHiredisParser
    clients = []
    for name, parser in parsers.items():
        pool = redis_asyncio.ConnectionPool.from_url(redis_url, parser_class=parser)
        client = redis_asyncio.Redis(connection_pool=pool)
        clients.append(client)
        cases[name] = _limiter_call(client.register_script(_LUA))
    figures = {(name, tasks): [] for name in cases for tasks in TASKS}
    for call in cases.values():  # warm up: connections open, the script loaded
        await _run(call, 500, 32)
    for _ in range(rounds):
        for (name, tasks), runs in figures.items():
            started, cpu = time.perf_counter(), time.process_time()
            await _run(cases[name], calls, tasks)
            elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
            runs.append((cpu * 1e6 / calls, calls / elapsed))
    await own.close()
    for client in clients:
        await client.aclose()
    print(
        f"\n{calls} rate-limit calls per run, best and worst of {rounds} runs; "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}"
    )
    print_runs(("client", "call", "calls"), figures)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    redis_url = os.environ.get("REDIS_URL")
    if not redis_url:
        print("redis clients: REDIS_URL is not set; skipped")
        return
    with_hiredis = _hiredis_importable()
    if not with_hiredis:
        print("redis clients: hiredis could not be installed; measuring without it")
    try:
        import uvloop
    except ImportError:  # the gateway runs on uvloop where it is installed
        asyncio.run(_measure(redis_url, args.calls, args.rounds, with_hiredis))
    else:
        uvloop.run(_measure(redis_url, args.calls, args.rounds, with_hiredis))


if __name__ == "__main__":
    main()
