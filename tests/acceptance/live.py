"""Real processes for acceptance tests: uvicorn serving ``portal.asgi`` and the demo upstream."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from django.conf import settings
from django.db import connection

BASE_DIR = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def database_url() -> str:
    """The URL of the database this test run uses (the test database, with any xdist suffix)."""
    db = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{db['NAME']}"
    auth = db["USER"] or ""
    if db.get("PASSWORD"):
        auth += f":{db['PASSWORD']}"
    return f"postgres://{auth}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


def server_env(**extra) -> dict:
    env = dict(os.environ)
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "portal.settings",
            "DATABASE_URL": database_url(),
            "VAR_DIR": str(settings.VAR_DIR),
            "SECRET_KEY": settings.SECRET_KEY,
            "KEY_ENCRYPTION_KEY": settings.KEY_ENCRYPTION_KEY,
            "API_KEY_HMAC_SECRET": settings.API_KEY_HMAC_SECRET,
            "REDIS_URL": settings.REDIS_URL,
            "ACCESS_LOG": "false",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update({k: str(v) for k, v in extra.items()})
    return env


def wait_for_port(port: int, process: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port} after {timeout} s")


def stop_process(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


@contextmanager
def demo_upstream():
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "manage.py", "demo_upstream", "--port", str(port)],
        cwd=BASE_DIR,
        env=server_env(),
        stdout=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, process)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        stop_process(process)


def start_gateway_server(**env) -> tuple[subprocess.Popen, str]:
    """One uvicorn process (one worker) on a free port; the caller waits for it and stops it."""
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "portal.asgi:application",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--no-access-log",
            "--log-level",
            "warning",
        ],
        cwd=BASE_DIR,
        env=server_env(**env),
    )
    return process, f"http://127.0.0.1:{port}"


@contextmanager
def gateway_servers(count: int = 1, **env):
    """``count`` uvicorn processes (one worker each) on their own ports. Yields base URLs."""
    processes, urls = [], []
    try:
        for _ in range(count):
            process, url = start_gateway_server(**env)
            processes.append(process)
            urls.append(url)
        for process, url in zip(processes, urls, strict=True):
            wait_for_port(int(url.rsplit(":", 1)[1]), process)
        yield urls
    finally:
        for process in processes:
            stop_process(process)
