"""Gateway benchmark: CPU per request and throughput, beside a bare pass-through.

Starts the demo upstream, the gateway (``portal.asgi`` under one uvicorn worker, uvloop +
httptools, with the production default logs: its own JSON access line per request, into
``var/bench/gateway.log``; uvicorn's access log off, as in production) and
``bench/bare_proxy.py`` on the same stack, then sends the same load to each: non-streamed
requests and streamed ones of 20 content chunks. Server CPU is the
server process's user + system time from /proc (not wall time), divided by the requests served.
Uses whatever DATABASE_URL / REDIS_URL say (PostgreSQL + Redis is what the targets assume).
Then, in this process and free of the load's noise, the CPU of a dialect's own work and of the
routing step (one upstream endpoint against two).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
TICKS = os.sysconf("SC_CLK_TCK")
CHUNKS = 20
PATHS = {"openai": "/openai/v1/chat/completions", "anthropic": "/anthropic/v1/messages"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def postgres_cpu_seconds() -> float:
    """CPU of the PostgreSQL server processes working for this benchmark: the backends
    connected to its database (the gateway's own connections), read from /proc like the
    servers' (the database runs on this machine). Backends that left during a run are not
    counted; the gateway keeps its connections, so none do. 0 when not on PostgreSQL."""
    from django.db import connection

    if connection.vendor != "postgresql":
        return 0.0
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid()"
        )
        pids = [pid for (pid,) in cursor.fetchall()]
    total = 0.0
    for pid in pids:
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            total += cpu_seconds(pid)
    return total


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


def start(args: list[str], env: dict, *, log=None) -> tuple[subprocess.Popen, int]:
    """A server on a free port; ``log`` (a file) takes its stderr, where its logs go."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, *[a.replace("{port}", str(port)) for a in args]],
        cwd=BASE_DIR,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=log,
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


def bench_account(accounts: int = 32) -> list[str]:
    """Benchmark accounts with room for any load, and their keys (rate limits out of the way).

    One account per concurrent client, as real traffic spreads over many accounts; ``main``
    also sends every client's requests on the first account, where they meet on its counter
    row (natural batching shares a commit among them: ``bench/one_account.py``).
    """
    from accounts.models import User
    from accounts.services import account_create_with_key
    from gateway.services import catalog_bootstrap
    from keys.models import ApiKey

    catalog_bootstrap()
    keys = []
    for n in range(accounts):
        user, key = account_create_with_key(email=f"bench-{time.time_ns()}-{n}@example.invalid")
        User.objects.filter(pk=user.pk).update(daily_quota=10**15)
        ApiKey.objects.filter(user=user).update(rate_limit_rpm=10**9, rate_limit_tpm=10**15)
        keys.append(key)
    return keys


async def load(
    url: str,
    key: str | list[str],
    *,
    stream: bool,
    requests: int,
    concurrency: int,
    dialect: str = "openai",
) -> float:
    import aiohttp

    from gateway.models import DEMO_MODEL_NAME

    payload = json.dumps(
        {
            "model": DEMO_MODEL_NAME,
            "messages": [{"role": "user", "content": "Hello, please introduce yourself."}],
            "max_tokens": CHUNKS,
            "stream": stream,
            # The same request in both dialects (Anthropic has no stream_options).
            **(
                {"stream_options": {"include_usage": True}}
                if stream and dialect == "openai"
                else {}
            ),
        }
    ).encode()
    keys = key if isinstance(key, list) else [key]
    failures = 0
    queue = iter(range(requests))

    async def worker(session, n):
        nonlocal failures
        headers = {
            "Authorization": f"Bearer {keys[n % len(keys)]}",
            "Content-Type": "application/json",
        }
        for _ in queue:
            async with session.post(url, data=payload, headers=headers) as response:
                await response.read()
                if response.status != 200:
                    failures += 1

    connector = aiohttp.TCPConnector(limit=concurrency)
    started = time.perf_counter()
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(worker(session, n) for n in range(concurrency)))
    elapsed = time.perf_counter() - started
    if failures:
        raise RuntimeError(f"{failures} of {requests} requests failed against {url}")
    return elapsed


def measure(
    pid: int,
    url: str,
    key: str | list[str],
    *,
    stream: bool,
    requests: int,
    concurrency: int,
    dialect: str = "openai",
    cpu_of=cpu_seconds,
    database: bool = False,
):
    """Requests per second and server CPU per request; with ``database``, also the CPU of the
    PostgreSQL backends per request (``db_ms``)."""
    kwargs = {"stream": stream, "concurrency": concurrency, "dialect": dialect}
    asyncio.run(load(url, key, requests=min(300, requests), **kwargs))
    before = cpu_of(pid)
    db_before = postgres_cpu_seconds() if database else 0.0
    elapsed = asyncio.run(load(url, key, requests=requests, **kwargs))
    cpu = cpu_of(pid) - before
    figures = {"rps": requests / elapsed, "cpu_ms": cpu * 1000 / requests}
    if database:
        figures["db_ms"] = (postgres_cpu_seconds() - db_before) * 1000 / requests
    return figures


def compare_dialects(
    pid: int, port: int, key: str | list[str], *, requests: int, concurrency: int
) -> dict:
    """The OpenAI and the Anthropic path of the same gateway process under the same load,
    interleaved and best of three rounds: this machine's load moves a single figure by more than
    the difference sought."""
    best: dict = {}
    for _round in range(3):
        for stream in (False, True):
            for dialect, path in PATHS.items():
                figures = measure(
                    pid,
                    f"http://127.0.0.1:{port}{path}",
                    key,
                    stream=stream,
                    requests=requests,
                    concurrency=concurrency,
                    dialect=dialect,
                )
                case = f"{dialect} {'streamed' if stream else 'non-streamed'}"
                if case not in best or figures["cpu_ms"] < best[case]["cpu_ms"]:
                    best[case] = figures
    return best


def dialect_costs(iterations: int = 5000) -> dict:
    """CPU of the dialect's own work alone, in this process, for the benchmark's request: parse
    and translate the request, render the answer, and render a 20-chunk stream (chunks as the
    demo upstream writes them). Everything else on the path is the same code for both dialects,
    so these differences are what the translation costs, free of the load's noise."""
    from gateway.models import DEMO_MODEL_NAME as MODEL
    from gateway.serving.dialects.anthropic import dialect as anthropic
    from gateway.serving.dialects.base import UpstreamTarget, Usage
    from gateway.serving.dialects.openai import dialect as openai
    from gateway.serving.upstream import chunk_with_usage

    target = UpstreamTarget(MODEL, MODEL, CHUNKS)
    request = json.dumps(
        {
            "model": MODEL,
            "messages": [{"role": "user", "content": "Hello, please introduce yourself."}],
            "max_tokens": CHUNKS,
        }
    ).encode()
    answer = json.dumps(
        {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "model": MODEL,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "word " * CHUNKS},
                    "finish_reason": "length",
                }
            ],
            "usage": {"prompt_tokens": 14, "completion_tokens": CHUNKS},
        }
    )
    head = '{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":'
    chunks = [
        f'{head}[{{"index":0,"delta":{{"content": " word{i}"}},"finish_reason":null}}],'
        '"usage":null}'.encode()
        for i in range(CHUNKS)
    ]
    costs = {}
    for name, dialect in (("openai", openai), ("anthropic", anthropic)):
        chat = dialect.parse_chat(request, b"")
        started = time.process_time()
        for _ in range(iterations):
            chat = dialect.parse_chat(request, b"")
            dialect.upstream_body(chat, target)
            dialect.render_completion(chat, json.loads(answer), target)
        per_request = (time.process_time() - started) / iterations
        started = time.process_time()
        for _ in range(iterations // 10):
            renderer = dialect.stream_renderer(chat, target)
            renderer.start()
            for data in chunks:
                renderer.chunk(data, chunk_with_usage(data)[0])
            renderer.finish(Usage(14, CHUNKS))
        per_stream = (time.process_time() - started) / (iterations // 10)
        costs[name] = {"request_ms": per_request * 1000, "stream_ms": per_stream * 1000}
    return costs


def routing_costs(iterations: int = 20000) -> dict:
    """CPU of the routing step alone, in this process, per request: ``Router.acquire`` (choose
    and take a slot) and ``finished``, as ``_Call.connect`` calls them, with ``/metrics`` on
    (its per-endpoint series are part of the step). Best of three rounds, each case in turn:
    one endpoint, two in one tier, and two with a concurrency cap (the cap's bookkeeping; the
    cap is never reached, as the queue is only for saturation)."""
    from django.test import override_settings

    from gateway.selectors import CatalogEndpoint, CatalogModel
    from gateway.serving.routing import Router

    def endpoint(pk, cap=None):
        return CatalogEndpoint(
            pk, "openai_compatible", f"http://h{pk}/v1", "m", "", max_concurrency=cap
        )

    cases = {
        "one endpoint": (endpoint(1),),
        "two endpoints": (endpoint(1), endpoint(2)),
        "two capped endpoints": (endpoint(1, 64), endpoint(2, 64)),
    }

    async def run(model: CatalogModel) -> float:
        router = Router()
        started = time.process_time()
        for _ in range(iterations):
            chosen = await router.acquire(model, set(), 1)
            router.finished(model, chosen, ok=True)
        return (time.process_time() - started) / iterations

    best = {}
    with override_settings(METRICS_ENABLED=True):
        for _round in range(3):
            for case, endpoints in cases.items():
                model = CatalogModel("m", "", False, 1000, 100, 0, "platform", endpoints=endpoints)
                seconds = asyncio.run(run(model))
                best[case] = min(best.get(case, seconds), seconds)
    return {case: seconds * 1000 for case, seconds in best.items()}


def routing_summary(costs: dict) -> str:
    lines = [f"  {case:<21} {ms * 1000:6.1f} us CPU per request" for case, ms in costs.items()]
    two, one = costs["two endpoints"], costs["one endpoint"]
    lines.append(
        f"  routing among two endpoints: {two:.4f} ms per request in all (target <= 0.05 ms), "
        f"{two - one:+.4f} ms over one; with caps {costs['two capped endpoints'] - one:+.4f} ms"
    )
    return "\n".join(lines)


def anthropic_summary(best: dict) -> str:
    """What the Anthropic translation costs over the OpenAI path: CPU per request (target: at
    most 0.3 ms more) and per streamed chunk (target: at most 1.5x the OpenAI path's)."""
    cpu = {case: figures["cpu_ms"] for case, figures in best.items()}
    extra_ms = cpu["anthropic non-streamed"] - cpu["openai non-streamed"]
    per_chunk = {
        dialect: (cpu[f"{dialect} streamed"] - cpu[f"{dialect} non-streamed"]) / CHUNKS
        for dialect in PATHS
    }
    ratio = per_chunk["anthropic"] / max(per_chunk["openai"], 1e-9)
    lines = [
        f"  {case:<26} {figures['rps']:7.0f} req/s {figures['cpu_ms']:6.3f} ms CPU/req"
        for case, figures in best.items()
    ]
    lines.append(
        f"  anthropic translation: {extra_ms:+.3f} ms CPU per request over the OpenAI path "
        f"(target <= 0.3); per chunk {per_chunk['anthropic'] * 1000:.1f} us vs "
        f"{per_chunk['openai'] * 1000:.1f} us, {ratio:.2f}x (target <= 1.5x)"
    )
    return "\n".join(lines)


def print_row(row: dict, *, bare: dict | None = None) -> None:
    """One case's servers: throughput, CPU per request and its ratio to the bare proxy's, and
    for the gateway the PostgreSQL backends' CPU per request."""
    bare = bare or row["bare"]
    for server, figures in row.items():
        ratio = figures["cpu_ms"] / max(bare["cpu_ms"], 1e-9)
        database = f"  + PostgreSQL {figures['db_ms']:6.3f} ms" if "db_ms" in figures else ""
        print(
            f"    {server:<8} {figures['rps']:7.0f} req/s "
            f"{figures['cpu_ms']:6.3f} ms CPU/req  {ratio:5.2f}x bare{database}"
        )


def main(requests: int = 3000, concurrency: int = 32, *, dialects: bool = True) -> dict:
    """Every case; ``dialects=False`` leaves out the Anthropic-vs-OpenAI rounds (the longest
    part), for quick repeated runs of the other cases."""
    import django

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
    django.setup()
    from django.conf import settings
    from django.db import connection

    from bench import litellm_peer
    from gateway.models import DEMO_MODEL_NAME

    env = dict(os.environ, ACCESS_LOG="false", PYTHONUNBUFFERED="1")
    processes = []
    stack = contextlib.ExitStack()
    try:
        demo, demo_port = start(["manage.py", "demo_upstream", "--port", "{port}"], env)
        processes.append(demo)
        upstream = f"http://127.0.0.1:{demo_port}/v1"
        key = bench_account(concurrency)
        connection.close()
        # As deployed: an access line per request, in JSON (LOG_FORMAT's production default).
        log_path = BASE_DIR / "var" / "bench" / "gateway.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        gateway_log = stack.enter_context(log_path.open("w"))
        gateway, gateway_port = start(
            uvicorn("portal.asgi:application"),
            {**env, "DEMO_UPSTREAM_URL": upstream, "ACCESS_LOG": "true", "LOG_FORMAT": "json"},
            log=gateway_log,
        )
        processes.append(gateway)
        bare, bare_port = start(
            uvicorn("bench.bare_proxy:app"), {**env, "BARE_UPSTREAM_URL": upstream}
        )
        processes.append(bare)
        servers = [("bare", bare.pid, bare_port, key, cpu_seconds)]
        servers.append(("gateway", gateway.pid, gateway_port, key, cpu_seconds))
        peer = (
            None
            if os.environ.get("BENCH_LITELLM") == "0"
            else litellm_peer.start(upstream, DEMO_MODEL_NAME, env)
        )
        if peer is not None:
            processes.append(peer[0])
            master = [litellm_peer.MASTER_KEY]
            servers.append(("litellm", peer[0].pid, peer[1], master, litellm_peer.tree_cpu_seconds))
            print(
                "  (litellm: its proxy, one worker, master key, budgets off: see bench/README.md)"
            )

        print(
            f"gateway benchmark: {requests} requests per case, {concurrency} concurrent; "
            f"database {connection.vendor}, rate limits in "
            f"{'Redis' if settings.REDIS_URL else 'process'}; {os.cpu_count()} CPUs, "
            f"load average {os.getloadavg()[0]:.2f}"
        )
        results = {}
        for name, stream in (("non-streamed", False), (f"streamed ({CHUNKS} chunks)", True)):
            row = {}
            for server, pid, port, keys, cpu_of in servers:
                path = "/v1/chat/completions" if server == "litellm" else PATHS["openai"]
                row[server] = measure(
                    pid,
                    f"http://127.0.0.1:{port}{path}",
                    keys,
                    stream=stream,
                    requests=requests,
                    concurrency=concurrency,
                    cpu_of=cpu_of,
                    database=server == "gateway",
                )
            results[name] = row
            print(f"  {name}:")
            print_row(row)
        # Every client on one account: its requests meet on the account's counter row.
        one = {
            "gateway": measure(
                gateway.pid,
                f"http://127.0.0.1:{gateway_port}{PATHS['openai']}",
                key[0],
                stream=False,
                requests=requests,
                concurrency=concurrency,
                database=True,
            )
        }
        one["bare"] = results["non-streamed"]["bare"]
        results["one account"] = one
        print(f"  non-streamed, all {concurrency} clients on one account:")
        print_row({"gateway": one["gateway"]}, bare=one["bare"])
        if not dialects:
            return results
        print("Anthropic vs OpenAI path, same gateway process (best of 3 interleaved rounds):")
        results["anthropic"] = compare_dialects(
            gateway.pid, gateway_port, key, requests=requests // 2, concurrency=concurrency
        )
        print(anthropic_summary(results["anthropic"]))
        costs = results["anthropic_dialect"] = dialect_costs()
        extra = costs["anthropic"]["request_ms"] - costs["openai"]["request_ms"]
        extra_per_chunk = (costs["anthropic"]["stream_ms"] - costs["openai"]["stream_ms"]) / CHUNKS
        openai_chunk = (
            results[f"streamed ({CHUNKS} chunks)"]["gateway"]["cpu_ms"]
            - results["non-streamed"]["gateway"]["cpu_ms"]
        ) / CHUNKS
        print(
            f"  dialect work alone (no load noise): anthropic {extra:+.3f} ms CPU per request "
            f"over openai (target <= 0.3); {extra_per_chunk * 1000:+.1f} us per chunk, i.e. "
            f"{(openai_chunk + extra_per_chunk) / max(openai_chunk, 1e-9):.2f}x the OpenAI "
            f"path's {openai_chunk * 1000:.1f} us per chunk measured above (target <= 1.5x)"
        )
        print("Routing step (Router.acquire + finished, in-process, /metrics on, best of 3):")
        results["routing"] = routing_costs()
        print(routing_summary(results["routing"]))
        return results
    finally:
        for process in reversed(processes):
            process.terminate()
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
        stack.close()


if __name__ == "__main__":
    main()
