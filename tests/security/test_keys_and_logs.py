"""API keys: compared in constant time, and never written to any log, on any path.

The log test runs a real server at DEBUG with its access log on and reads everything it
prints, while the test process itself logs at DEBUG (root and SQL) too, over a request cycle
that walks the error paths: bad model, bad body, wrong key, upstream 500, rate limit (429),
a client leaving mid-stream, and the portal's reveal.
"""

from __future__ import annotations

import ast
import hmac
import json
import logging
import socket
import subprocess
import sys
import time
import uuid
from unittest import mock

import pytest
import requests
from django.db import connection

from keys import crypto
from tests.acceptance.live import BASE_DIR, demo_upstream, free_port, server_env, wait_for_port
from tests.reliability.conftest import settled_records

CHAT = "/openai/v1/chat/completions"
MESSAGES = "/anthropic/v1/messages"
HELLO = {"model": "LongCat-Flash-Chat", "messages": [{"role": "user", "content": "Hi"}]}


# --- constant-time comparison -------------------------------------------------------------------
def test_the_gateway_checks_the_digest_with_compare_digest(gw, alice_key):
    _user, key = alice_key
    near_miss = key[:-1] + ("A" if key[-1] != "A" else "B")  # same prefix, same length
    calls = []
    real = hmac.compare_digest

    def spy(a, b):
        calls.append((a, b))
        return real(a, b)

    with mock.patch("gateway.serving.auth.hmac.compare_digest", side_effect=spy):
        assert gw.chat(near_miss, {**HELLO, "max_tokens": 5}).status == 401
        assert gw.chat(key, {**HELLO, "max_tokens": 5}).status == 200
    from keys.models import ApiKey

    stored = ApiKey.objects.get(prefix=crypto.key_prefix(key)).digest
    assert (crypto.key_digest(near_miss), stored) in calls
    assert (crypto.key_digest(key), stored) in calls


SECRET_WORDS = ("digest", "secret", "raw_key", "api_key")


def _secret_like(node) -> bool:
    name = ""
    if isinstance(node, ast.Name):
        name = node.id
    elif isinstance(node, ast.Attribute):
        name = node.attr
    elif isinstance(node, ast.Call):
        return _secret_like(node.func)
    return any(word in name.lower() for word in SECRET_WORDS)


def test_no_code_compares_a_key_or_digest_with_an_ordinary_comparison():
    """``==`` stops at the first differing character; only hmac.compare_digest may judge a
    secret. (SQL equality on the digest is fine: an attacker cannot choose an HMAC digest.)"""
    offenders = []
    for folder in ("gateway", "keys", "accounts", "usage", "portal"):
        for path in (BASE_DIR / folder).rglob("*.py"):
            if "migrations" in path.parts:
                continue
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Compare) and any(
                    isinstance(op, (ast.Eq, ast.NotEq)) for op in node.ops
                ):
                    sides = [node.left, *node.comparators]
                    if any(_secret_like(side) for side in sides) and not any(
                        isinstance(side, ast.Constant) for side in sides
                    ):
                        offenders.append(f"{path.relative_to(BASE_DIR)}:{node.lineno}")
    assert offenders == []


# --- never in a log -----------------------------------------------------------------------------
def _fragments(key: str) -> list[str]:
    # The prefix is public; the secret part must not appear, nor most of it (a near-miss key
    # sent by the test shares all but its last character).
    secret = key[crypto.PREFIX_LENGTH :]
    return [key, secret, secret[:-4], secret[4:]]


def _assert_absent(key: str, text: str, where: str) -> None:
    for fragment in _fragments(key):
        assert fragment not in text, f"part of an API key leaked into {where}"


@pytest.mark.slow
def test_a_full_request_cycle_never_logs_a_key(live_key, bob_key, caplog, tmp_path):
    from keys.models import ApiKey
    from keys.services import api_key_reveal

    user, key = live_key
    _bob, limited = bob_key
    ApiKey.objects.filter(user=_bob).update(rate_limit_rpm=2)
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="django.db.backends")
    forced, connection.force_debug_cursor = connection.force_debug_cursor, True
    out, err = tmp_path / "server.out", tmp_path / "server.err"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    try:
        with demo_upstream() as upstream, out.open("w") as stdout, err.open("w") as stderr:
            server = subprocess.Popen(
                [
                    sys.executable,
                    *("-m", "uvicorn", "portal.asgi:application"),
                    *("--host", "127.0.0.1", "--port", str(port), "--log-level", "debug"),
                ],
                cwd=BASE_DIR,
                env=server_env(
                    DEMO_UPSTREAM_URL=upstream,
                    LOG_LEVEL="DEBUG",
                    ACCESS_LOG="true",
                    RATE_LIMIT_RPM=100000,
                    # Key ids repeat across test databases (xdist workers, CI runs).
                    CACHE_KEY_PREFIX=f"test-{uuid.uuid4().hex}",
                ),
                stdout=stdout,
                stderr=stderr,
            )
            try:
                wait_for_port(port, server)
                count = _walk_the_error_paths(base, key, limited)
                settled_records(user, count, timeout=15)
            finally:
                server.terminate()
                server.wait(15)
        portal_reveal = api_key_reveal(api_key=ApiKey.objects.get(user=user))
        assert portal_reveal == key
    finally:
        connection.force_debug_cursor = forced

    server_output = out.read_text() + err.read_text()
    assert "client_disconnected" in server_output or "chat/completions" in server_output
    _assert_absent(key, server_output, "the server's output")
    _assert_absent(limited, server_output, "the server's output")
    logged = caplog.text + "\n".join(
        f"{r.getMessage()} {r.args!r} {vars(r)!r}" for r in caplog.records
    )
    _assert_absent(key, logged, "the test process's logs")


def _walk_the_error_paths(base: str, key: str, limited: str) -> int:
    """Requests of ``key``'s account that leave a usage record; returns how many."""
    auth = {"Authorization": f"Bearer {key}"}
    anthropic = {"x-api-key": f"Authorization: Bearer {key}", "anthropic-version": "2023-06-01"}
    calls = [
        (CHAT, auth, {**HELLO, "max_tokens": 5}, 200),
        (CHAT, auth, {**HELLO, "max_tokens": 5, "stream": True}, 200),
        (MESSAGES, anthropic, {**HELLO, "max_tokens": 5}, 200),
        (CHAT, auth, {**HELLO, "model": "no-such-model"}, 404),
        (CHAT, auth, {"model": "LongCat-Flash-Chat", "messages": "not a list"}, 400),
        (CHAT, {**auth, "x-demo-fault": "error500"}, {**HELLO, "max_tokens": 5}, 502),
        (MESSAGES, {**anthropic, "x-demo-fault": "error500"}, {**HELLO, "max_tokens": 5}, 502),
    ]
    for path, headers, body, status in calls:
        response = requests.post(base + path, json=body, headers=headers, timeout=30)
        assert response.status_code == status, response.text
        assert key not in response.text
    near_miss = key[:-1] + ("A" if key[-1] != "A" else "B")
    for headers in ({"Authorization": f"Bearer {near_miss}"}, {"x-api-key": near_miss}):
        assert requests.post(base + CHAT, json=HELLO, headers=headers, timeout=30).status_code == (
            401
        )
    # 429 on another account's key with a limit of 2 per minute.
    statuses = [
        requests.post(
            base + CHAT,
            json={**HELLO, "max_tokens": 5},
            headers={"Authorization": f"Bearer {limited}"},
            timeout=30,
        ).status_code
        for _ in range(3)
    ]
    assert statuses[-1] == 429
    # A client that leaves mid-stream.
    host, port = base.rsplit("//", 1)[1].split(":")
    data = json.dumps({**HELLO, "max_tokens": 50, "stream": True}).encode()
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(
            (
                f"POST {CHAT} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                f"Authorization: Bearer {key}\r\nx-demo-delay-ms: 50\r\n"
                f"Content-Length: {len(data)}\r\n\r\n"
            ).encode()
            + data
        )
        sock.recv(4096)
    time.sleep(0.5)
    return len(calls) + 1


def test_the_in_process_gateway_logs_no_key_at_debug_on_its_error_paths(gw, alice_key, caplog):
    _user, key = alice_key
    caplog.set_level(logging.DEBUG)
    forced, connection.force_debug_cursor = connection.force_debug_cursor, True
    try:
        gw.chat(key, {**HELLO, "max_tokens": 5})
        gw.chat(key, {**HELLO, "model": "nope"})
        gw.chat(key, b"{")
        gw.chat(key, {**HELLO, "max_tokens": 5}, headers={"x-demo-fault": "error500"})
        gw.chat(key, {**HELLO, "max_tokens": 5, "stream": True}, headers={"x-demo-fault": "cut"})
        gw.chat(key[:-1] + "x")
        gw.chat(None, headers={"x-api-key": f"Bearer Authorization: Bearer {key}x"})
        gw.flush()
    finally:
        connection.force_debug_cursor = forced
    logged = caplog.text + "\n".join(
        f"{r.getMessage()} {r.args!r} {vars(r)!r}" for r in caplog.records
    )
    assert "upstream" in logged  # the error paths did log
    _assert_absent(key, logged, "the logs")
