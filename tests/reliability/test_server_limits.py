"""A uvicorn reachable directly (no proxy in front) and an unauthenticated burst: the server
and its database connections stay bounded.

The server is started the way every launcher starts it (``python -m portal.serve``, two
workers, production settings) on the test database.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest
import requests
from django.db import connection

from tests.acceptance.live import BASE_DIR, free_port, server_env, stop_process, wait_for_port

pytestmark = pytest.mark.slow

PRODUCTION = {
    "DEBUG": "false",
    "ALLOWED_HOSTS": "127.0.0.1",
    "SECURE_SSL_REDIRECT": "false",
    "LOG_LEVEL": "WARNING",
}


@contextmanager
def portal_server(workers: int = 2, **env):
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "portal.serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            str(workers),
            "--no-access-log",
        ],
        cwd=BASE_DIR,
        env=server_env(**{**PRODUCTION, **env}),
    )
    try:
        wait_for_port(port, process)
        yield f"http://127.0.0.1:{port}", port, process
    finally:
        stop_process(process)


def _database_connections() -> int:
    """Connections to the test database other than this test's own."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND pid <> pg_backend_pid()"
        )
        return cursor.fetchone()[0]


# Per worker: Django's requests at once (PORTAL_MAX_CONCURRENCY, 16), each with its own
# connection, plus the gateway's asyncpg connections (GATEWAY_DB_POOL_SIZE, 10), which the
# health check uses too; two workers.
MAX_CONNECTIONS_DURING_BURST = 2 * (16 + 10)


def test_a_burst_of_unauthenticated_requests_leaves_the_database_connections_bounded(
    transactional_db,
):
    if connection.vendor != "postgresql":
        pytest.skip("counts PostgreSQL connections")
    with portal_server() as (base_url, _port, _process):
        assert requests.get(base_url + "/healthz", timeout=30).status_code == 200
        peak = 0

        def one(n):
            if n % 2:
                return requests.get(base_url + "/healthz", timeout=60).status_code
            # A made-up session cookie: Django looks the session up in the database (one
            # query, no sign-in needed) and the API answers 403.
            cookie = {"sessionid": f"{n:032d}"}
            return requests.get(base_url + "/api/v1/keys/", cookies=cookie, timeout=60).status_code

        with ThreadPoolExecutor(max_workers=60) as pool:
            answers = [pool.submit(one, n) for n in range(180)]
            while not all(answer.done() for answer in answers):
                peak = max(peak, _database_connections())
                time.sleep(0.05)
            statuses = [answer.result() for answer in answers]
        peak = max(peak, _database_connections())
        assert set(statuses) == {200, 403}, statuses
        assert peak <= MAX_CONNECTIONS_DURING_BURST, peak
        # Afterwards Django's connections are closed; the gateway keeps its own (at most
        # GATEWAY_DB_POOL_SIZE per worker). What must not happen is one left open per request
        # (CONN_MAX_AGE under ASGI).
        time.sleep(2)
        after = _database_connections()
        assert after <= 2 * 10, after
        print(f"database connections: peak {peak}, 2 s after the burst {after}")


# --- a server reachable directly: head size, head time, portal body --------------------------
def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _send_head(port: int, header_bytes: int, *, chunk: int = 1 << 20) -> tuple[bytes, float]:
    """A GET whose one header is ``header_bytes`` long; the answer's first bytes and when."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: ")
        sent = 0
        try:
            while sent < header_bytes:
                sock.sendall(b"a" * min(chunk, header_bytes - sent))
                sent += chunk
            sock.sendall(b"\r\n\r\n")
        except OSError:
            pass  # the server closed the connection: what the answer says is below
        try:
            answer = sock.recv(200)
        except OSError:
            answer = b""
    return answer, time.monotonic() - started


@pytest.fixture
def tmp_dir():
    with tempfile.TemporaryDirectory() as folder:
        yield Path(folder)


def test_an_oversized_request_head_gets_431_and_no_memory(transactional_db):
    with portal_server(workers=1, WEB_MAX_HEADER_BYTES=16384) as (_url, port, process):
        before = _rss_kb(process.pid)
        answer, elapsed = _send_head(port, 200_000)
        assert answer.startswith(b"HTTP/1.1 431"), answer
        assert elapsed < 5
        # Eight 64 MB heads at once (production saw +570 MB): each is cut off at the limit.
        with ThreadPoolExecutor(max_workers=8) as pool:
            answers = list(pool.map(lambda _: _send_head(port, 64 << 20)[0], range(8)))
        grown_mb = (_rss_kb(process.pid) - before) / 1024
        print(f"worker RSS after eight 64 MB heads: {grown_mb:+.1f} MB")
        assert grown_mb < 50, f"the worker grew by {grown_mb:.0f} MB"
        assert all(a == b"" or a.startswith(b"HTTP/1.1 431") for a in answers), answers
        # A head within the limit is served as before.
        answer, _ = _send_head(port, 8000)
        assert answer.startswith(b"HTTP/1.1 200"), answer


def test_a_slowloris_connection_is_closed_after_the_head_timeout(transactional_db):
    with portal_server(workers=1, WEB_HEADER_TIMEOUT_SECONDS=1) as (_url, port, _process):
        started = time.monotonic()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            closed_after = None
            while time.monotonic() - started < 8:
                try:
                    sock.sendall(b"X-Slow-" + str(int(time.monotonic() * 10)).encode() + b": a\r\n")
                    sock.settimeout(0.3)
                    if sock.recv(200) is not None:
                        closed_after = time.monotonic() - started
                        break
                except TimeoutError:
                    continue
                except OSError:
                    closed_after = time.monotonic() - started
                    break
        assert closed_after is not None, "the connection stayed open"
        assert closed_after < 4, closed_after
        # A connection that sends nothing at all is closed too.
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            started = time.monotonic()
            answer = sock.recv(200)
            assert answer == b"" or answer.startswith(b"HTTP/1.1 408"), answer
            assert time.monotonic() - started < 4


def test_an_oversized_portal_body_gets_413_unread_and_nothing_on_disk(transactional_db, tmp_dir):
    with portal_server(workers=1, TMPDIR=str(tmp_dir), PORTAL_MAX_BODY_BYTES=1 << 20) as (
        base_url,
        port,
        _process,
    ):
        # Declared 300 MB; only the first megabyte is ever sent.
        started = time.monotonic()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(
                b"POST /accounts/login/ HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Content-Type: application/x-www-form-urlencoded\r\n"
                b"Content-Length: 314572800\r\n\r\n"
            )
            with suppress(OSError):
                sock.sendall(b"a" * (1 << 20))
            answer = sock.recv(200)
        assert answer.startswith(b"HTTP/1.1 413"), answer
        assert time.monotonic() - started < 3

        # No length declared (chunked): cut off once past the limit, still 413.
        def chunks():
            for _ in range(40):
                yield b"a" * (256 << 10)

        response = requests.post(base_url + "/accounts/login/", data=chunks(), timeout=30)
        assert response.status_code == 413
        assert list(tmp_dir.iterdir()) == []
        # A body within the limit still reaches Django (which refuses it for CSRF: 403).
        response = requests.post(base_url + "/accounts/login/", data={"login": "x"}, timeout=30)
        assert response.status_code == 403
