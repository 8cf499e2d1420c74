"""A model served by a pool of upstream servers, each its own process, behind two gateway
processes on PostgreSQL and Redis: the operator's shell commands, weights across processes, a
server stopped and one killed under load, and the books afterwards.

PostgreSQL and Redis only: the embedded defaults (SQLite, no Redis) run one gateway process.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import threading
import uuid
from collections import Counter
from contextlib import ExitStack, contextmanager

import aiohttp
import pytest
from django.conf import settings
from django.db import connection

from gateway.models import UpstreamEndpoint
from tests.acceptance.conftest import wait_for
from tests.acceptance.live import (
    BASE_DIR,
    free_port,
    gateway_servers,
    server_env,
    stop_process,
    wait_for_port,
)
from tests.reliability.conftest import assert_books_balance
from usage.models import Reservation, UsageRecord
from usage.quota import effective_quota

pytestmark = pytest.mark.slow

MODEL = "LongCat-Flash-Chat"
HELLO = [{"role": "user", "content": "Hello!"}]
# Short cool-downs so that a restarted server is back within the test's few seconds.
SERVER_ENV = {
    "RATE_LIMIT_RPM": 1_000_000,
    "RATE_LIMIT_TPM": 1_000_000_000,
    "GATEWAY_UPSTREAM_EJECT_SECONDS": 1,
    "GATEWAY_UPSTREAM_EJECT_MAX_SECONDS": 2,
}


class UpstreamServer:
    """The demo upstream in its own process, on a port that stays its own across restarts."""

    def __init__(self):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.process: subprocess.Popen | None = None

    def start(self) -> UpstreamServer:
        self.process = subprocess.Popen(
            [sys.executable, "manage.py", "demo_upstream", "--port", str(self.port)],
            cwd=BASE_DIR,
            env=server_env(),
            stdout=subprocess.DEVNULL,
        )
        wait_for_port(self.port, self.process)
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """SIGTERM: a graceful stop (answers in progress finish); SIGKILL: a crash."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(30)

    def close(self) -> None:
        if self.process is not None:
            stop_process(self.process)


@pytest.fixture
def live(transactional_db):
    if connection.vendor != "postgresql" or not settings.REDIS_URL:
        pytest.skip("needs PostgreSQL and Redis (the embedded defaults run one process)")
    from accounts.services import account_create_with_key
    from gateway.services import catalog_bootstrap

    catalog_bootstrap()
    user, key = account_create_with_key(email="pool@example.com")
    return user, key


@contextmanager
def upstream_servers(count: int):
    with ExitStack() as stack:
        servers = []
        for _ in range(count):
            server = UpstreamServer()
            stack.callback(server.close)
            servers.append(server.start())
        yield servers


def manage(*args: str) -> str:
    """``manage.py`` as an operator runs it, against the test database."""
    done = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=BASE_DIR,
        env=server_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout


def pool_from_the_shell(servers, weights=None) -> list[int]:
    """The operator's steps: the built-in demo endpoint disabled, one endpoint per server
    added. Returns the new endpoints' ids, in the servers' order."""
    for line in manage("upstream", "list", "--model", MODEL).splitlines()[1:]:
        manage("upstream", "disable", line.split("\t")[0])
    for server, weight in zip(servers, weights or [1] * len(servers), strict=True):
        manage("upstream", "add", MODEL, server.url, "--weight", str(weight))
    endpoints = UpstreamEndpoint.objects.filter(model__name=MODEL, enabled=True).order_by("id")
    by_url = {endpoint.base_url: endpoint.pk for endpoint in endpoints}
    assert len(by_url) == len(servers)
    return [by_url[server.url] for server in servers]


class Load:
    """Clients sending requests to the gateways in turn, half of them streamed, until stopped.
    ``outcomes`` holds one entry per request: "ok", or what went wrong."""

    def __init__(self, urls: list[str], key: str, clients: int = 8):
        self.urls, self.key, self.clients = urls, key, clients
        self.outcomes: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(60)
        assert not self._thread.is_alive()

    def wait_requests(self, count: int, timeout: float = 30) -> None:
        wait_for(lambda: len(self.outcomes) >= count, timeout)

    async def _run(self) -> None:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
            await asyncio.gather(*(self._client(session, n) for n in range(self.clients)))

    async def _client(self, session, n: int) -> None:
        sent = 0
        while not self._stop.is_set():
            stream = (n + sent) % 2 == 0
            url = self.urls[(n + sent) % len(self.urls)]
            sent += 1
            self.outcomes.append(await self._one(session, url, stream))

    async def _one(self, session, url: str, stream: bool) -> str:
        payload = {"model": MODEL, "messages": HELLO, "max_tokens": 100, "stream": stream}
        try:
            async with session.post(
                f"{url}/openai/v1/chat/completions",
                data=json.dumps(payload),
                headers={"Authorization": f"Bearer {self.key}"},
            ) as response:
                body = await response.read()
        except (aiohttp.ClientError, TimeoutError) as failure:
            return f"client {failure.__class__.__name__}"
        if response.status != 200:
            return f"{response.status} {body[:200]!r}"
        if stream:
            if b'"error"' in body:
                return "stream error event"
            if not body.rstrip().endswith(b"data: [DONE]"):
                return "stream incomplete"
            return "ok"
        return "ok" if json.loads(body)["choices"][0]["message"]["content"] else "empty"


def served_by(user) -> Counter:
    return Counter(
        UsageRecord.objects.filter(user=user, status_code=200).values_list(
            "upstream_endpoint_id", flat=True
        )
    )


def settle_books(user, requests: int) -> None:
    """Every request recorded once, nothing reserved, the counter equal to the records."""
    wait_for(lambda: UsageRecord.objects.filter(user=user).count() >= requests, timeout=20)
    wait_for(lambda: not Reservation.objects.filter(user=user).exists(), timeout=20)
    assert UsageRecord.objects.filter(user=user).count() == requests
    counter = assert_books_balance(user)
    assert counter is not None
    assert counter.requests == requests
    assert counter.input_tokens + counter.output_tokens <= effective_quota(user.daily_quota)


def test_weights_hold_across_two_gateway_processes(live):
    user, key = live
    with upstream_servers(2) as servers:
        light, heavy = pool_from_the_shell(servers, weights=[1, 3])
        with gateway_servers(2, **SERVER_ENV) as urls, Load(urls, key) as load:
            load.wait_requests(400)
        outcomes = list(load.outcomes)
    assert set(outcomes) == {"ok"}, Counter(outcomes)
    settle_books(user, len(outcomes))
    shares = served_by(user)
    # Smooth weighted round robin is exact within each process over every 4 picks; across
    # two processes the shares can only differ by the picks of one unfinished window each.
    assert abs(shares[heavy] / len(outcomes) - 0.75) < 0.02, shares
    assert shares[light] + shares[heavy] == len(outcomes)


@pytest.fixture
def staff_overview(settings, client):
    """The staff overview as staff see it, reading the live state the gateway processes of
    this test publish (under a cache prefix of this test's own: other tests' gateways may
    publish to the same Redis meanwhile). Returns (server environment, state of endpoint)."""
    from accounts.services import account_create

    prefix = f"pool-{uuid.uuid4().hex[:12]}"
    default = {**settings.CACHES["default"], "KEY_PREFIX": prefix}
    settings.CACHES = {**settings.CACHES, "default": default}
    client.force_login(account_create(email="ops@example.com", is_staff=True))

    def state(endpoint_id: int) -> str:
        page = client.get("/staff/").content.decode()
        marker = f'data-endpoint="{endpoint_id}"'
        if marker not in page:
            return ""
        row = page[page.index(marker) : page.index("</tr>", page.index(marker))]
        if 'data-live="state"' not in row:
            return ""
        cell = row[row.index('data-live="state"') :]
        return cell[cell.index(">") + 1 : cell.index("</td>")]

    return {"CACHE_KEY_PREFIX": prefix}, state


def test_an_operator_stops_one_of_three_servers_under_load_and_clients_see_no_failure(
    live, staff_overview
):
    """The issue's scenario: three endpoints added from the shell, one stopped during a load
    run and started again; no client sees a failed request, the staff page shows the stopped
    one ejected and, once it is back, in service again, and it serves again."""
    user, key = live
    cache_env, staff_state = staff_overview
    with upstream_servers(3) as servers:
        ids = pool_from_the_shell(servers)
        with gateway_servers(2, **SERVER_ENV, **cache_env) as urls, Load(urls, key) as load:
            load.wait_requests(150)
            wait_for(lambda: "healthy" in staff_state(ids[1]), timeout=15)
            servers[1].stop(signal.SIGTERM)
            stopped_at = len(load.outcomes)
            load.wait_requests(stopped_at + 300)
            # The gateways publish their view every 5 s.
            wait_for(lambda: "ejected" in staff_state(ids[1]), timeout=15)
            # While it is down, the two others serve everything.
            before_restart = served_by(user)[ids[1]]
            servers[1].start()
            restarted_at = len(load.outcomes)
            wait_for(lambda: served_by(user)[ids[1]] > before_restart + 20, timeout=30)
            wait_for(lambda: "healthy" in staff_state(ids[1]), timeout=15)
            load.wait_requests(restarted_at + 100)
        outcomes = list(load.outcomes)
    assert set(outcomes) == {"ok"}, Counter(outcomes)
    settle_books(user, len(outcomes))
    shares = served_by(user)
    assert set(shares) == set(ids), shares
    assert sum(shares.values()) == len(outcomes)


def test_a_server_killed_under_load_fails_only_streams_it_had_started(live):
    """A crash (SIGKILL): a request the dead server had not begun to answer is served by
    another (no error); a stream it was sending ends with an error event, charged for what
    was delivered; the books stay exact."""
    user, key = live
    with upstream_servers(3) as servers:
        pool_from_the_shell(servers)
        with gateway_servers(2, **SERVER_ENV) as urls, Load(urls, key) as load:
            load.wait_requests(150)
            servers[0].stop(signal.SIGKILL)
            killed_at = len(load.outcomes)
            load.wait_requests(killed_at + 300)
        outcomes = list(load.outcomes)
    failures = Counter(outcome for outcome in outcomes if outcome != "ok")
    # Only streams can fail, and only those the dead server was in the middle of: never
    # more than one per client, and never a plain request.
    assert set(failures) <= {"stream error event"}, failures
    assert sum(failures.values()) <= 8, failures
    settle_books(user, len(outcomes))
    cut = UsageRecord.objects.filter(user=user).exclude(status_code=200)
    assert cut.count() == sum(failures.values())
    for record in cut:
        assert record.stream and record.input_tokens > 0, record
