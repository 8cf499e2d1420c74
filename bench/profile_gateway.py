"""Where the gateway's CPU goes: the gateway under cProfile, served by uvicorn as in
``bench/gateway.py`` (production logs on), over the demo upstream, with the same load.

``DATABASE_URL=postgres://… REDIS_URL=redis://… python bench/profile_gateway.py
[--requests N] [--stream] [--out FILE]`` writes the profile (``var/bench/gateway.prof`` by
default; read it with ``python -m pstats``) and prints the functions with the most time of
their own. The profiler's own overhead inflates Python-heavy code several times over, so the
figures are shares, not costs: ``bench/gateway.py`` measures the costs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import os
import pstats
import signal
import sys
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(BASE_DIR))


def serve(out: str, port: int) -> None:
    """The gateway, profiled from SIGUSR1 (after the warm-up: start-up and imports left out)
    until SIGTERM; then the profile is written."""
    import uvicorn

    server = uvicorn.Server(
        uvicorn.Config(
            "portal.asgi:application",
            port=port,
            loop="uvloop",
            http="httptools",
            access_log=False,
            log_level="warning",
        )
    )
    # uvicorn's own handlers re-raise the signal once stopped, which would end the process
    # before the profile is written.
    server.capture_signals = contextlib.nullcontext
    signal.signal(signal.SIGTERM, lambda *_: setattr(server, "should_exit", True))
    profile = cProfile.Profile()
    signal.signal(signal.SIGUSR1, lambda *_: profile.enable())
    try:
        server.run()
    finally:
        profile.disable()
        profile.dump_stats(out)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--stream", action="store_true", help="20-chunk streams")
    parser.add_argument("--out", default=str(BASE_DIR / "var" / "bench" / "gateway.prof"))
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--serve", nargs=2, metavar=("OUT", "PORT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.serve[0], int(args.serve[1]))
        return
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
    import django

    django.setup()
    from django.db import connection

    from bench import gateway

    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    demo, demo_port = gateway.start(["manage.py", "demo_upstream", "--port", "{port}"], env)
    server = None
    try:
        keys = gateway.bench_account(32)
        connection.close()
        server_env = {
            **env,
            "DEMO_UPSTREAM_URL": f"http://127.0.0.1:{demo_port}/v1",
            "ACCESS_LOG": "true",
            "LOG_FORMAT": "json",
        }
        with (BASE_DIR / "var" / "bench" / "profile-gateway.log").open("w") as log:
            server, port = gateway.start(
                [__file__, "--serve", args.out, "{port}"], server_env, log=log
            )
            url = f"http://127.0.0.1:{port}{gateway.PATHS['openai']}"
            load = {"stream": args.stream, "concurrency": 32}
            asyncio.run(gateway.load(url, keys, requests=300, **load))  # warm up
            server.send_signal(signal.SIGUSR1)
            asyncio.run(gateway.load(url, keys, requests=args.requests, **load))
            server.send_signal(signal.SIGTERM)
            server.wait(60)
    finally:
        for process in (server, demo):
            if process is not None and process.poll() is None:
                process.terminate()
                process.wait(10)
    print(f"profile of {args.requests} requests written to {args.out}")
    pstats.Stats(args.out).sort_stats("tottime").print_stats(args.top)


if __name__ == "__main__":
    main()
