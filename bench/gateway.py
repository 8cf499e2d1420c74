"""Gateway benchmark: CPU per request and throughput, beside a bare pass-through.

Starts the demo upstream, the gateway (``portal.asgi`` under one uvicorn worker, uvloop +
httptools, no access log) and ``bench/bare_proxy.py`` on the same stack, then sends the same
load to each: non-streamed requests and streamed ones of 20 content chunks. Server CPU is the
server process's user + system time from /proc (not wall time), divided by the requests served.
Uses whatever DATABASE_URL / REDIS_URL say (PostgreSQL + Redis is what the targets assume).
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
TICKS = os.sysconf("SC_CLK_TCK")
MODEL = "LongCat-Flash-Chat"
CHUNKS = 20


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def wait_for_port(port: int, process: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"a benchmark server exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port}")


def start(args: list[str], env: dict) -> tuple[subprocess.Popen, int]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, *[a.replace("{port}", str(port)) for a in args]],
        cwd=BASE_DIR,
        env=env,
        stdout=subprocess.DEVNULL,
    )
    wait_for_port(port, process)
    return process, port


def uvicorn(app: str) -> list[str]:
    return [
        "-m",
        "uvicorn",
        app,
        "--port",
        "{port}",
        "--loop",
        "uvloop",
        "--http",
        "httptools",
        "--no-access-log",
        "--log-level",
        "warning",
    ]


def bench_account() -> str:
    """A benchmark account with room for any load, and its key (rate limits out of the way)."""
    from accounts.models import User
    from accounts.services import account_create_with_key
    from gateway.services import catalog_bootstrap
    from keys.models import ApiKey

    catalog_bootstrap()
    email = f"bench-{int(time.time())}@example.invalid"
    user, key = account_create_with_key(email=email)
    User.objects.filter(pk=user.pk).update(daily_quota=10**15)
    ApiKey.objects.filter(user=user).update(rate_limit_rpm=10**9, rate_limit_tpm=10**15)
    return key


async def load(url: str, key: str, *, stream: bool, requests: int, concurrency: int) -> float:
    import aiohttp

    payload = json.dumps(
        {
            "model": MODEL,
            "messages": [{"role": "user", "content": "Hello, please introduce yourself."}],
            "max_tokens": CHUNKS,
            "stream": stream,
            **({"stream_options": {"include_usage": True}} if stream else {}),
        }
    ).encode()
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    failures = 0
    queue = iter(range(requests))

    async def worker(session):
        nonlocal failures
        for _ in queue:
            async with session.post(url, data=payload, headers=headers) as response:
                await response.read()
                if response.status != 200:
                    failures += 1

    connector = aiohttp.TCPConnector(limit=concurrency)
    started = time.perf_counter()
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    if failures:
        raise RuntimeError(f"{failures} of {requests} requests failed against {url}")
    return elapsed


def measure(pid: int, url: str, key: str, *, stream: bool, requests: int, concurrency: int):
    asyncio.run(load(url, key, stream=stream, requests=min(300, requests), concurrency=concurrency))
    before = cpu_seconds(pid)
    elapsed = asyncio.run(load(url, key, stream=stream, requests=requests, concurrency=concurrency))
    cpu = cpu_seconds(pid) - before
    return {"rps": requests / elapsed, "cpu_ms": cpu * 1000 / requests}


def main(requests: int = 3000, concurrency: int = 32) -> dict:
    import django

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
    django.setup()
    from django.conf import settings
    from django.db import connection

    env = dict(os.environ, ACCESS_LOG="false", PYTHONUNBUFFERED="1")
    processes = []
    try:
        demo, demo_port = start(["manage.py", "demo_upstream", "--port", "{port}"], env)
        processes.append(demo)
        upstream = f"http://127.0.0.1:{demo_port}/v1"
        key = bench_account()
        connection.close()
        gateway, gateway_port = start(
            uvicorn("portal.asgi:application"), {**env, "DEMO_UPSTREAM_URL": upstream}
        )
        processes.append(gateway)
        bare, bare_port = start(
            uvicorn("bench.bare_proxy:app"), {**env, "BARE_UPSTREAM_URL": upstream}
        )
        processes.append(bare)

        print(
            f"gateway benchmark: {requests} requests per case, {concurrency} concurrent; "
            f"database {connection.vendor}, rate limits in "
            f"{'Redis' if settings.REDIS_URL else 'process'}; {os.cpu_count()} CPUs, "
            f"load average {os.getloadavg()[0]:.2f}"
        )
        results = {}
        for name, stream in (("non-streamed", False), (f"streamed ({CHUNKS} chunks)", True)):
            row = {}
            for server, pid, port in (
                ("bare", bare.pid, bare_port),
                ("gateway", gateway.pid, gateway_port),
            ):
                url = f"http://127.0.0.1:{port}/openai/v1/chat/completions"
                row[server] = measure(
                    pid, url, key, stream=stream, requests=requests, concurrency=concurrency
                )
            results[name] = row
            ratio = row["gateway"]["cpu_ms"] / max(row["bare"]["cpu_ms"], 1e-9)
            print(
                f"  {name:<22} gateway {row['gateway']['rps']:7.0f} req/s "
                f"{row['gateway']['cpu_ms']:6.3f} ms CPU/req | bare {row['bare']['rps']:7.0f} "
                f"req/s {row['bare']['cpu_ms']:6.3f} ms CPU/req | CPU ratio {ratio:4.2f}x"
            )
        return results
    finally:
        for process in reversed(processes):
            process.terminate()
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()


if __name__ == "__main__":
    main()
