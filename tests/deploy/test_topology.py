"""The production topology with real processes: ``scripts/run-prod.sh`` starts two uvicorn
servers (two workers each) on free ports and two Celery workers, on a fresh PostgreSQL database
and Redis; beside them run the demo upstream and one beat whose clock stands just before
midnight in Beijing. One API key is then driven through both servers at once.
"""

import json
import os
import re
import subprocess
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.deploy.topology import (
    BIN,
    PYTHON,
    ROOT,
    FreshDatabase,
    Processes,
    django,
    free_port,
    http,
    production_secrets,
    wait_healthy,
)

DATABASE_URL = os.environ.get("DATABASE_URL", "")
REDIS_URL = os.environ.get("REDIS_URL", "")

pytestmark = [
    pytest.mark.slow,
    # One topology for the module: under `pytest -n 2 --dist loadgroup` all of it on one worker.
    pytest.mark.xdist_group("deploy-topology"),
    pytest.mark.skipif(
        not DATABASE_URL.startswith(("postgres://", "postgresql://")),
        reason="the topology test needs DATABASE_URL to be PostgreSQL",
    ),
    pytest.mark.skipif(
        not REDIS_URL.startswith("redis://"), reason="the topology test needs REDIS_URL (Redis)"
    ),
]

MODEL = "LongCat-Flash-Chat"
QUOTA_TOKENS = 3000
MAX_TOKENS = 60
RATE_LIMIT_RPM = 12
METRICS_TOKEN = "topology-metrics-token"
UNREACHABLE_MODEL = "topology-unreachable"


@pytest.fixture(scope="module")
def topology(tmp_path_factory):
    """Everything started once for this module, and always stopped."""
    tmp = tmp_path_factory.mktemp("topology")
    database = FreshDatabase(DATABASE_URL).create()
    run_id = uuid.uuid4().hex[:10]
    ports = [free_port(), free_port()]
    upstream_port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "PROMETHEUS_"))}
    env.update(
        production_secrets(),
        DEBUG="false",
        ALLOWED_HOSTS="127.0.0.1,localhost",
        SECURE_SSL_REDIRECT="false",
        DATABASE_URL=database.url,
        REDIS_URL=REDIS_URL,
        CACHE_KEY_PREFIX=f"topo-{run_id}",
        CELERY_DEFAULT_QUEUE=f"topo-{run_id}",
        CELERY_BROKER_URL="",
        CELERY_RESULT_BACKEND="",
        VAR_DIR=str(tmp / "var"),
        STATIC_ROOT=str(tmp / "static"),
        DEMO_UPSTREAM_URL=f"http://127.0.0.1:{upstream_port}/v1",
        UPSTREAM_BASE_URL="",
        METRICS_ENABLED="true",
        METRICS_TOKEN=METRICS_TOKEN,
        LOG_FORMAT="json",
        PYTHONUNBUFFERED="1",
        DJANGO_SETTINGS_MODULE="portal.settings",
    )
    processes = Processes(tmp, env)
    try:
        processes.start(
            "upstream",
            [PYTHON, "manage.py", "demo_upstream", "--port", str(upstream_port)],
        )
        processes.start(
            "run-prod",
            ["bash", "scripts/run-prod.sh"],
            BIN=BIN,
            HOST="127.0.0.1",
            WEB_PORTS=" ".join(map(str, ports)),
            WEB_WORKERS="2",
            CELERY_WORKERS="2",
            CELERY_CONCURRENCY="1",
            RUN_BEAT="false",  # the one beat is started below, with its clock moved
        )
        for port in ports:
            wait_healthy(port, processes)
        processes.start(
            "beat",
            [PYTHON, "-m", "tests.deploy.beat_at", "5",
             "-A", "portal", "beat", "--loglevel", "INFO"],
        )  # fmt: skip
        yield {
            "env": env,
            "ports": ports,
            "processes": processes,
            "beat_started": time.monotonic(),
        }
    finally:
        killed = processes.stop_all()
        leftovers = processes.any_alive()
        try:
            database.drop()
        finally:
            _forget_redis_keys(run_id)
        assert not leftovers, f"still running after teardown: {leftovers}"
        assert "run-prod" not in killed, "run-prod.sh did not stop its processes on SIGTERM"


def _forget_redis_keys(run_id: str) -> None:
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    try:
        for pattern in (f"topo-{run_id}*", f"*topo-{run_id}*"):
            for key in client.scan_iter(match=pattern, count=500):
                client.delete(key)
    finally:
        client.close()


def _create_account(env, *, email, daily_quota=None, rpm=None):
    code = f"""
from accounts.services import account_create_with_key
from keys.models import ApiKey
user, key = account_create_with_key(email={email!r})
user.daily_quota = {daily_quota!r}
user.save(update_fields=["daily_quota"])
ApiKey.objects.filter(user=user).update(rate_limit_rpm={rpm!r})
result = {{"user_id": user.pk, "key": key}}
"""
    return django(env, code)


def _chat(port, key, *, stream=False, delay_ms=0):
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Say something about quotas."}],
        "max_tokens": MAX_TOKENS,
        "stream": stream,
    }
    if stream:
        body["stream_options"] = {"include_usage": True}
    headers = {"Authorization": f"Bearer {key}"}
    if delay_ms:
        headers["x-demo-delay-ms"] = str(delay_ms)
    status, response_headers, raw = http(
        "POST",
        f"http://127.0.0.1:{port}/openai/v1/chat/completions",
        headers=headers,
        body=body,
    )
    return status, response_headers, raw


def _usage_state(env, user_id):
    code = f"""
from django.db.models import Sum
from usage.models import DailyUsage, Reservation, UsageRecord
rows = DailyUsage.objects.filter(user_id={user_id})
records = UsageRecord.objects.filter(user_id={user_id})
sums = records.aggregate(i=Sum("input_tokens"), o=Sum("output_tokens"))
result = {{
    "counter_used": sum(r.input_tokens + r.output_tokens for r in rows),
    "counter_reserved": sum(r.reserved_tokens for r in rows),
    "records": records.count(),
    "records_ok": records.filter(status_code=200).count(),
    "records_tokens": (sums["i"] or 0) + (sums["o"] or 0),
    "reservations": Reservation.objects.filter(user_id={user_id}).count(),
}}
"""
    return django(env, code)


def test_the_servers_answer_health_checks_and_the_container_probe(topology):
    env = topology["env"]
    for port in topology["ports"]:
        health = wait_healthy(port, topology["processes"])
        assert health["checks"]["broker"]["ok"] and health["checks"]["database"]["ok"]
        probe = subprocess.run(
            [PYTHON, str(ROOT / "scripts" / "healthcheck.py")],
            env={**env, "PORT": str(port)}, capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert probe.returncode == 0, probe.stderr


def test_quota_holds_across_both_servers_under_concurrent_load(topology):
    env, ports = topology["env"], topology["ports"]
    account = _create_account(env, email="quota@example.com", daily_quota=QUOTA_TOKENS, rpm=100_000)
    key = account["key"]
    jobs = [(ports[n % 2], n % 3 == 0) for n in range(72)]  # both servers, a third streamed
    with ThreadPoolExecutor(max_workers=16) as pool:
        results = list(
            pool.map(lambda job: (job[0], *_chat(job[0], key, stream=job[1], delay_ms=40)), jobs)
        )
    statuses = [status for _port, status, _h, _b in results]
    assert set(statuses) <= {200, 429}, statuses
    ok_by_port = {p: sum(1 for q, s, _h, _b in results if q == p and s == 200) for p in ports}
    assert all(ok_by_port.values()), ok_by_port  # both servers served the key
    refused = [json.loads(body) for _p, status, _h, body in results if status == 429]
    assert refused, "the quota was never reached"
    assert {body["error"]["code"] for body in refused} == {"insufficient_quota"}

    # Then one at a time until refused: with nothing in flight, what is left is less than one
    # request's reservation, so the quota was usable to the end.
    sent = len(jobs)
    for n in range(40):
        port = ports[n % 2]
        status, _h, _b = _chat(port, key)
        sent += 1
        if status == 429:
            break
        ok_by_port[port] += 1
    assert status == 429

    # Usage records are written in batches: wait until every request has one.
    deadline = time.monotonic() + 60
    while True:
        state = _usage_state(env, account["user_id"])
        if state["records"] >= sent or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert state["records"] == sent
    assert state["counter_used"] <= QUOTA_TOKENS  # never overspent
    assert state["counter_used"] > QUOTA_TOKENS - (MAX_TOKENS + 30)  # ... and used up
    assert state["records_tokens"] == state["counter_used"]  # ledger == counter
    assert state["records_ok"] == sum(ok_by_port.values())
    assert state["counter_reserved"] == 0
    assert state["reservations"] == 0

    # Each server's /metrics adds up its own two workers: its 200s for this route.
    for port in ports:
        status, _h, body = http(
            "GET",
            f"http://127.0.0.1:{port}/metrics",
            headers={"Authorization": f"Bearer {METRICS_TOKEN}"},
        )
        assert status == 200
        assert _chat_200s(body.decode()) == ok_by_port[port]
    status, _h, _b = http("GET", f"http://127.0.0.1:{ports[0]}/metrics")
    assert status == 401


def _chat_200s(exposition: str) -> float:
    pattern = re.compile(
        r'^portal_http_requests_total\{(?=[^}]*method="POST")(?=[^}]*route="/openai/v1/chat/'
        r'completions")(?=[^}]*status="200")[^}]*\} ([0-9.e+]+)$',
        re.M,
    )
    return sum(float(value) for value in pattern.findall(exposition))


def test_the_per_key_rate_limit_is_shared_by_both_servers(topology):
    env, ports = topology["env"], topology["ports"]
    account = _create_account(env, email="rate@example.com", rpm=RATE_LIMIT_RPM)
    key = account["key"]
    # The limit counts fixed one-minute windows: start well inside one.
    if 60 - time.time() % 60 < 20:
        time.sleep(60 - time.time() % 60 + 0.5)
    jobs = [ports[n % 2] for n in range(RATE_LIMIT_RPM + 6)]
    barrier = threading.Barrier(len(jobs))

    def call(port):
        barrier.wait()
        return _chat(port, key)

    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        results = list(pool.map(call, jobs))
    statuses = sorted(status for status, _h, _b in results)
    assert statuses.count(200) == RATE_LIMIT_RPM, statuses
    assert statuses.count(429) == len(jobs) - RATE_LIMIT_RPM, statuses
    refused = next((h, b) for s, h, b in results if s == 429)
    headers = {name.lower(): value for name, value in refused[0].items()}
    body = json.loads(refused[1])
    assert set(body) == {"error"}
    assert body["error"]["code"] == "rate_limit_exceeded"
    assert body["error"]["type"] == "rate_limit_error"
    assert isinstance(body["error"]["retry_after"], int) and body["error"]["retry_after"] >= 1
    assert body["error"]["message"]
    assert int(headers["retry-after"]) == body["error"]["retry_after"]
    assert int(headers["retry-after-ms"]) >= 1


def test_beat_runs_the_midnight_reset_exactly_once_with_two_workers(topology):
    env = topology["env"]
    code = """
from portal.celery import app
replies = app.control.ping(timeout=3)
names = sorted(name for reply in replies for name in reply)
from usage.models import QuotaReset
result = {"workers": names, "resets": QuotaReset.objects.count()}
"""
    state = django(env, code)
    ours = [name for name in state["workers"] if re.match(r"worker[12]@", name)]
    assert len(ours) >= 2, state["workers"]  # both workers are up and listening
    # Beat's clock reaches midnight in Beijing ~5 s after its scheduler started.
    deadline = topology["beat_started"] + 180
    while time.monotonic() < deadline:
        resets = django(
            env, "from usage.models import QuotaReset\nresult = QuotaReset.objects.count()"
        )
        if resets >= 1:
            break
        time.sleep(2)
    time.sleep(8)  # a second delivery or a second run would show up by now
    final = django(env, "from usage.models import QuotaReset\nresult = QuotaReset.objects.count()")
    assert final == 1, topology["processes"].logs()[-5000:]
    logs = topology["processes"].log("run-prod")
    assert len(re.findall(r"usage\.tasks\.daily_reset\[[^\]]+\] succeeded", logs)) == 1
    assert "Sending due task usage-daily-reset" in topology["processes"].log("beat")


def test_logs_are_json_lines_with_request_context_and_never_a_key(topology):
    env = topology["env"]
    account = _create_account(env, email="logs@example.com", rpm=100_000)
    key = account["key"]
    port = topology["ports"][0]
    status, headers, _b = _chat(port, key)
    assert status == 200
    request_id = {k.lower(): v for k, v in headers.items()}["x-request-id"]
    time.sleep(1)
    logs = topology["processes"].logs()
    assert key not in logs
    assert key[12:] not in logs
    lines = []
    for raw in logs.splitlines():
        if raw.startswith("{"):
            lines.append(json.loads(raw))
    (access,) = [line for line in lines if line.get("request_id") == request_id]
    assert access["logger"] == "portal.access"
    assert access["account_id"] == account["user_id"]
    assert access["key_prefix"] == key[:12]
    assert access["status"] == 200
    # uvicorn's own lines are JSON too (its start-up), so are the workers'.
    assert any(line["logger"].startswith("uvicorn") for line in lines)
    assert any(line["logger"].startswith("celery") for line in lines)


def test_upstream_failures_are_counted_by_the_server_that_saw_them(topology):
    env, port = topology["env"], topology["ports"][1]
    account = _create_account(env, email="faults@example.com", rpm=100_000)

    def upstream_errors():
        _s, _h, body = http(
            "GET",
            f"http://127.0.0.1:{port}/metrics",
            headers={"Authorization": f"Bearer {METRICS_TOKEN}"},
        )
        pattern = re.compile(
            r'^portal_gateway_upstream_errors_total\{[^}]*model="'
            + UNREACHABLE_MODEL
            + r'"[^}]*\} (\S+)$',
            re.M,
        )
        return sum(float(v) for v in pattern.findall(body.decode()))

    # Production processes never pass x-demo-* fault headers on: a model whose server refuses
    # connections stands in for a failing upstream.
    django(
        env,
        f"""
from gateway.models import Model
Model.objects.update_or_create(
    name={UNREACHABLE_MODEL!r},
    defaults={{"upstream_base_url": "http://127.0.0.1:{free_port()}/v1", "upstream_model": "x"}},
)
""",
    )

    def ask():
        return http(
            "POST",
            f"http://127.0.0.1:{port}/openai/v1/chat/completions",
            headers={"Authorization": f"Bearer {account['key']}"},
            body={"model": UNREACHABLE_MODEL, "messages": [{"role": "user", "content": "Hi"}]},
        )

    before = upstream_errors()
    deadline = time.monotonic() + 15  # the catalog snapshot picks the new model up
    status, _h, body = ask()
    while status == 404 and time.monotonic() < deadline:
        time.sleep(0.5)
        status, _h, body = ask()
    assert status == 502, body
    assert json.loads(body)["error"]["code"].startswith("upstream")
    assert upstream_errors() == before + 1
