"""Upstream and client faults against real servers: uvicorn serving ``portal.asgi`` in a
subprocess, in front of an upstream that fails on demand.

Every fault must give the client a clear error in its own dialect and leave exactly one usage
record, a counter that equals the records, and no reservation behind.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid

import pytest
import requests

from tests.acceptance.live import gateway_servers
from tests.gateway.harness import free_port
from tests.reliability.conftest import assert_books_balance, settled_records

pytestmark = pytest.mark.slow

MODEL = "LongCat-Flash-Chat"
READ_TIMEOUT_SECONDS = 1.0
OPENAI = "/openai/v1/chat/completions"
ANTHROPIC = "/anthropic/v1/messages"
RESPONSES = "/openai/v1/responses"
PATHS = {"openai": OPENAI, "anthropic": ANTHROPIC, "responses": RESPONSES}
DIALECTS = list(PATHS)


@pytest.fixture(scope="module")
def servers(fault_upstream, django_db_setup):
    """One gateway over the faulty upstream (1 s read timeout), one whose upstream refuses."""
    common = {"RATE_LIMIT_RPM": 100000, "UPSTREAM_READ_TIMEOUT_SECONDS": READ_TIMEOUT_SECONDS}
    dead = f"http://127.0.0.1:{free_port()}/v1"
    with (
        gateway_servers(1, DEMO_UPSTREAM_URL=fault_upstream.url, **common) as (main,),
        gateway_servers(1, DEMO_UPSTREAM_URL=dead, **common) as (refusing,),
    ):
        yield {"main": main, "refusing": refusing, "log": fault_upstream.log}


def _body(dialect: str, *, stream: bool, max_tokens: int = 20) -> dict:
    if dialect == "responses":
        return {
            "model": MODEL,
            "input": "Hello!",
            "max_output_tokens": max_tokens,
            "stream": stream,
        }
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Hello!"}],
        "max_tokens": max_tokens,
        "stream": stream,
    }
    return body


def _headers(key: str, dialect: str, extra=None) -> dict:
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    if dialect == "anthropic":
        headers["anthropic-version"] = "2023-06-01"
    headers.update(extra or {})
    return headers


def _sse_payloads(text: str) -> list:
    return [
        json.loads(line[6:])
        for line in text.splitlines()
        if line.startswith("data: ") and line[6:] != "[DONE]"
    ]


def _error_of(dialect: str, response: requests.Response, stream: bool) -> tuple[str, str]:
    """(what the client sees as the error kind, its message), in the dialect's own shape."""
    if stream and response.status_code == 200:
        last = _sse_payloads(response.text)[-1]
        if dialect == "responses":
            *_, error, failed = _sse_payloads(response.text)
            assert (error["type"], failed["type"]) == ("error", "response.failed")
            assert failed["response"]["status"] == "failed"
            return error["code"], error["message"]
        if dialect == "openai":
            assert "[DONE]" not in response.text
            return last["error"]["code"], last["error"]["message"]
        assert response.text.rstrip().splitlines()[-2] == "event: error"
        assert last["type"] == "error"
        return last["error"]["type"], last["error"]["message"]
    body = response.json()
    if dialect in ("openai", "responses"):
        assert set(body) == {"error"}
        return body["error"]["code"], body["error"]["message"]
    assert body["type"] == "error"
    return body["error"]["type"], body["error"]["message"]


# (fault, server, headers, stream, HTTP status, OpenAI code / Anthropic type, record status, charge)
# charge: "none" (nothing was produced), "prompt" (the upstream answered: its prompt estimate),
# "delivered" (the prompt and what reached the client, estimated), "estimate" (a whole answer).
FAULTS = [
    ("refused", "refusing", {}, False, 502, ("upstream_error", "api_error"), 502, "none"),
    (
        "timeout before headers",
        "main",
        {"x-demo-fault": "hang"},
        False,
        504,
        ("upstream_timeout", "timeout_error"),
        504,
        "none",
    ),
    (
        "5xx",
        "main",
        {"x-demo-fault": "error500"},
        False,
        502,
        ("upstream_error", "api_error"),
        502,
        "none",
    ),
    (
        "garbage JSON",
        "main",
        {"x-demo-test-fault": "garbage"},
        False,
        502,
        ("upstream_error", "api_error"),
        502,
        "prompt",
    ),
    (
        "JSON of the wrong shape",
        "main",
        {"x-demo-test-fault": "wrong-shape"},
        False,
        502,
        ("upstream_error", "api_error"),
        502,
        "prompt",
    ),
    (
        "stream of the wrong shape",
        "main",
        {"x-demo-test-fault": "wrong-shape-stream"},
        True,
        200,
        ("upstream_error", "api_error"),
        502,
        "delivered",
    ),
    (
        "stream cut midway",
        "main",
        {"x-demo-fault": "cut"},
        True,
        200,
        ("upstream_error", "api_error"),
        502,
        "delivered",
    ),
    (
        "stream slower than the read timeout",
        "main",
        {"x-demo-delay-ms": str(int(READ_TIMEOUT_SECONDS * 1500))},
        True,
        200,
        ("upstream_timeout", "timeout_error"),
        504,
        "prompt",
    ),
    ("no usage reported", "main", {"x-demo-fault": "nousage"}, False, 200, None, 200, "estimate"),
    (
        "no usage reported, streamed",
        "main",
        {"x-demo-fault": "nousage"},
        True,
        200,
        None,
        200,
        "estimate",
    ),
]  # fmt: skip


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize(
    ("fault", "server", "headers", "stream", "status", "kinds", "recorded", "charge"),
    FAULTS,
    ids=[f[0] for f in FAULTS],
)
def test_an_upstream_fault_gives_a_clear_error_and_one_exact_record(
    servers, live_key, dialect, fault, server, headers, stream, status, kinds, recorded, charge
):
    user, key = live_key
    path = PATHS[dialect]
    if dialect == "openai" and fault == "stream of the wrong shape":
        # The OpenAI dialect relays upstream chunks byte for byte (it parses only the usage
        # chunk): the client gets what the upstream sent, and the books still balance.
        kinds, recorded = None, 200
    started = time.monotonic()
    response = requests.post(
        servers[server] + path,
        json=_body(dialect, stream=stream),
        headers=_headers(key, dialect, headers),
        timeout=30,
    )
    elapsed = time.monotonic() - started
    assert response.status_code == status, response.text
    # Nothing hangs: every fault is answered within the read timeout plus a margin.
    assert elapsed < READ_TIMEOUT_SECONDS + 5
    if kinds is not None:
        kind, message = _error_of(dialect, response, stream)
        assert kind == kinds[1 if dialect == "anthropic" else 0]
        assert message and "Traceback" not in message and key not in message

    (record,) = settled_records(user, 1)
    assert record.status_code == recorded
    assert record.stream is stream
    assert assert_books_balance(user) is not None or charge == "none"
    if charge == "none":
        assert (record.input_tokens, record.output_tokens) == (0, 0)
    elif charge == "prompt":
        assert record.input_tokens > 0
        assert record.output_tokens == 0
        assert record.estimated
    elif charge == "delivered":
        assert record.input_tokens > 0
        assert 0 < record.output_tokens <= 20  # never more than the budget the upstream had
        assert record.estimated
    else:
        assert record.input_tokens > 0 and record.output_tokens > 0
        assert record.estimated


def _raw_stream(base_url: str, path: str, key: str, dialect: str, headers: dict, body: dict):
    """A streaming request on a raw socket, so that the test decides when the client leaves."""
    host, port = base_url.rsplit("//", 1)[1].split(":")
    data = json.dumps(body).encode()
    lines = [
        f"POST {path} HTTP/1.1",
        f"Host: {host}:{port}",
        "Content-Type: application/json",
        f"Content-Length: {len(data)}",
        *(f"{k}: {v}" for k, v in _headers(key, dialect, headers).items() if k != "Content-Type"),
    ]
    sock = socket.create_connection((host, int(port)), timeout=10)
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + data)
    return sock


@pytest.mark.parametrize("dialect", DIALECTS)
def test_a_client_that_leaves_mid_stream_cancels_the_upstream_call_and_pays_what_it_got(
    servers, live_key, dialect
):
    user, key = live_key
    tag = uuid.uuid4().hex
    # 200 tokens at 100 ms each: the upstream alone would take 20 s.
    sock = _raw_stream(
        servers["main"],
        PATHS[dialect],
        key,
        dialect,
        {"x-demo-delay-ms": "100", "x-demo-tokens": "200", "x-demo-tag": tag},
        _body(dialect, stream=True, max_tokens=200),
    )
    received = b""
    while received.count(b"\n\n") < 6:
        received += sock.recv(65536)
    assert received.startswith(b"HTTP/1.1 200")
    sock.close()
    left_at = time.monotonic()

    log = servers["log"]
    assert wait_for_value(lambda: log.ended(tag), timeout=5) is not None
    assert log.ended(tag) - left_at < 1.0, "the upstream call outlived the client by over 1 s"

    (record,) = settled_records(user, 1)
    assert (record.status_code, record.error_code) == (499, "client_disconnected")
    assert 0 < record.output_tokens < 200
    assert_books_balance(user)


def wait_for_value(probe, timeout: float):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value is not None:
            return value
        time.sleep(0.02)
    return probe()


def test_a_slowly_sent_body_is_served_and_holds_nobody_else_up(servers, live_key):
    user, key = live_key
    data = json.dumps(_body("openai", stream=False)).encode()
    host, port = servers["main"].rsplit("//", 1)[1].split(":")
    sock = socket.create_connection((host, int(port)), timeout=20)
    head = (
        f"POST {OPENAI} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {key}\r\nContent-Length: {len(data)}\r\n\r\n"
    ).encode()
    sock.sendall(head)

    def trickle():
        for i in range(0, len(data), 8):
            sock.sendall(data[i : i + 8])
            time.sleep(2.0 / (len(data) / 8))

    sender = threading.Thread(target=trickle)
    sender.start()
    # Meanwhile another request is answered at once.
    quick_started = time.monotonic()
    other = requests.post(
        servers["main"] + OPENAI,
        json=_body("openai", stream=False),
        headers=_headers(key, "openai"),
        timeout=10,
    )
    assert other.status_code == 200
    assert time.monotonic() - quick_started < 1.5
    sender.join()
    answer = b""
    while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
        chunk = sock.recv(65536)
        if not chunk:
            break
        answer += chunk
    sock.close()
    assert answer.startswith(b"HTTP/1.1 200")
    settled_records(user, 2)
    assert_books_balance(user)


def test_a_client_that_leaves_while_sending_its_body_leaves_nothing_behind(servers, live_key):
    user, key = live_key
    host, port = servers["main"].rsplit("//", 1)[1].split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(
            (
                f"POST {OPENAI} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                f"Authorization: Bearer {key}\r\nContent-Length: 5000\r\n\r\n"
                '{"model": "'
            ).encode()
        )
        time.sleep(0.3)
    # The next request of the same key is served normally, and nothing was reserved or charged.
    assert (
        requests.post(
            servers["main"] + OPENAI,
            json=_body("openai", stream=False),
            headers=_headers(key, "openai"),
            timeout=10,
        ).status_code
        == 200
    )
    (record,) = settled_records(user, 1)
    assert record.status_code == 200
    assert_books_balance(user)


@pytest.mark.parametrize("dialect", DIALECTS)
def test_a_huge_declared_body_is_refused_with_413_before_it_is_read(servers, live_key, dialect):
    _user, key = live_key
    path = PATHS[dialect]
    host, port = servers["main"].rsplit("//", 1)[1].split(":")
    extra = "anthropic-version: 2023-06-01\r\n" if dialect == "anthropic" else ""
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        started = time.monotonic()
        sock.sendall(
            (
                f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                f"Authorization: Bearer {key}\r\n{extra}Content-Length: {50 * 1024**3}\r\n\r\n"
            ).encode()
            + b'{"model": "' + b"x" * 1024
        )  # fmt: skip
        answer = b""
        while b"\r\n\r\n" not in answer:
            answer += sock.recv(65536)
        elapsed = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert elapsed < 2.0
    body = answer.split(b"\r\n\r\n", 1)[1]
    if body:
        payload = json.loads(body[: body.rindex(b"}") + 1])
        kind = payload["error"]["type" if dialect == "anthropic" else "code"]
        # OpenAI's code and Anthropic's type happen to share the name.
        assert kind == "request_too_large"


def test_an_estimated_charge_never_spends_past_the_quota(servers, live_key):
    from accounts.models import User
    from usage.models import DailyUsage

    user, key = live_key
    # Room for the prompt (10 tokens by the gateway's estimate) and 20 output tokens: the
    # output budget granted is 20, and the stream is cut after 10 of them. The estimate of
    # what was delivered errs high; the charge must still stay within what was reserved.
    User.objects.filter(pk=user.pk).update(daily_quota=30)
    response = requests.post(
        servers["main"] + OPENAI,
        json=_body("openai", stream=True, max_tokens=200),
        headers=_headers(key, "openai", {"x-demo-fault": "cut"}),
        timeout=30,
    )
    assert response.status_code == 200
    (record,) = settled_records(user, 1)
    assert record.estimated
    counter = DailyUsage.objects.get(user=user)
    assert counter.input_tokens + counter.output_tokens <= 30
    assert_books_balance(user)
