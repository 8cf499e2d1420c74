"""A uvicorn reachable directly (no proxy in front) and an unauthenticated burst: the server
and its database connections stay bounded.

The server is started the way every launcher starts it (``python -m portal.serve``, two
workers, production settings) on the test database.
"""

from __future__ import annotations

import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

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


# Per worker: Django's pool (DATABASE_POOL_MAX_SIZE, 8) plus the gateway's asyncpg
# connections (GATEWAY_DB_POOL_SIZE, 10), which the health check uses too; two workers.
MAX_CONNECTIONS_DURING_BURST = 2 * (8 + 10)


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
        # Afterwards: Django's connections go back to the pool and close when idle; what
        # must not happen is one left open per request (CONN_MAX_AGE under ASGI).
        time.sleep(2)
        after = _database_connections()
        assert after <= MAX_CONNECTIONS_DURING_BURST, after
        print(f"database connections: peak {peak}, 2 s after the burst {after}")
