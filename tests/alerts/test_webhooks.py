import hashlib
import hmac
import json
import ssl

import pytest

from alerts import webhooks
from alerts.webhooks import (
    WebhookFailed,
    WebhookRefused,
    address_allowed,
    webhook_post,
    webhook_signature,
)

from .webhook_server import receiver


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.5",
        "192.168.1.1",
        "169.254.169.254",  # cloud metadata
        "100.64.0.1",  # carrier-grade NAT
        "0.0.0.0",  # noqa: S104 - an address to refuse, not one to bind
        "224.0.0.1",
        "::1",
        "fe80::1",
        "fc00::1",
        "::ffff:127.0.0.1",
        "::ffff:10.0.0.1",
    ],
)
def test_it_refuses_non_global_addresses(address):
    assert not address_allowed(address)


@pytest.mark.parametrize("address", ["93.184.215.14", "2606:2800:21f:cb07:6820:80da:af6b:8b2c"])
def test_it_allows_global_addresses(address):
    assert address_allowed(address)


def test_it_refuses_a_host_name_that_resolves_to_loopback(resolve_to, settings):
    settings.ALERT_WEBHOOK_ALLOW_PRIVATE = False
    resolve_to["hooks.example.com"] = "127.0.0.1"
    with pytest.raises(WebhookRefused, match="non-public"):
        webhook_post(url="https://hooks.example.com/x", secret="s", payload={})


def test_it_refuses_localhost(settings):
    settings.ALERT_WEBHOOK_ALLOW_PRIVATE = False
    with pytest.raises(WebhookRefused):
        webhook_post(url="https://localhost:8443/x", secret="s", payload={})


@pytest.mark.parametrize(
    "url", ["http://hooks.example.com/x", "ftp://hooks.example.com/", "https://u:p@example.com/"]
)
def test_it_refuses_urls_that_are_not_plain_https(url):
    with pytest.raises(WebhookRefused):
        webhook_post(url=url, secret="s", payload={})


def test_it_signs_timestamp_and_body():
    body = b'{"a":1}'
    expected = hmac.new(b"secret", b"1700000000." + body, hashlib.sha256).hexdigest()
    assert webhook_signature(secret="secret", timestamp=1700000000, body=body) == (
        f"t=1700000000,v1={expected}"
    )


def _trusting(cafile):
    def context():
        return ssl.create_default_context(cafile=cafile)

    return context


def test_it_posts_signed_json_to_the_checked_address(tmp_path, resolve_to, settings, monkeypatch):
    settings.ALERT_WEBHOOK_ALLOW_PRIVATE = True  # the receiver runs on this machine
    resolve_to["hooks.test"] = "127.0.0.1"
    with receiver(tmp_path, "hooks.test", [204]) as (port, cafile, received):
        monkeypatch.setattr(webhooks, "ssl_context", _trusting(cafile))
        status = webhook_post(
            url=f"https://hooks.test:{port}/alerts?x=1", secret="whsec_abc", payload={"n": 1}
        )
    assert status == 204
    [(headers, body)] = received
    assert json.loads(body) == {"n": 1}
    assert headers["Content-Type"] == "application/json"
    timestamp = headers["X-Alert-Signature"].split(",")[0].removeprefix("t=")
    assert headers["X-Alert-Signature"] == webhook_signature(
        secret="whsec_abc", timestamp=int(timestamp), body=body
    )


def test_it_reports_a_non_2xx_answer_as_a_failure(tmp_path, resolve_to, settings, monkeypatch):
    settings.ALERT_WEBHOOK_ALLOW_PRIVATE = True
    resolve_to["hooks.test"] = "127.0.0.1"
    with receiver(tmp_path, "hooks.test", [500]) as (port, cafile, _received):
        monkeypatch.setattr(webhooks, "ssl_context", _trusting(cafile))
        with pytest.raises(WebhookFailed, match="500"):
            webhook_post(url=f"https://hooks.test:{port}/", secret="s", payload={})


def test_it_checks_the_certificate_against_the_url_host(
    tmp_path, resolve_to, settings, monkeypatch
):
    settings.ALERT_WEBHOOK_ALLOW_PRIVATE = True
    resolve_to["other.test"] = "127.0.0.1"
    with receiver(tmp_path, "hooks.test", [204]) as (port, cafile, received):
        monkeypatch.setattr(webhooks, "ssl_context", _trusting(cafile))
        with pytest.raises(WebhookFailed):
            webhook_post(url=f"https://other.test:{port}/", secret="s", payload={})
    assert received == []


def test_it_times_out_fast(settings, resolve_to):
    import socket

    settings.ALERT_WEBHOOK_ALLOW_PRIVATE = True
    settings.ALERT_WEBHOOK_TIMEOUT_SECONDS = 0.3
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)  # accepts the connection, never speaks TLS
    resolve_to["slow.test"] = "127.0.0.1"
    try:
        with pytest.raises(WebhookFailed, match=r"Timeout|timed out"):
            webhook_post(
                url=f"https://slow.test:{silent.getsockname()[1]}/", secret="s", payload={}
            )
    finally:
        silent.close()


@pytest.mark.parametrize(
    "address",
    [
        "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254 (cloud metadata)
        "64:ff9b::7f00:1",  # NAT64 of 127.0.0.1
        "64:ff9b::5db8:d70e",  # NAT64 of a public address: the range is refused outright
        "64:ff9b:1::a00:1",  # local-use NAT64
        "2002:a9fe:a9fe::1",  # 6to4 of 169.254.169.254
        "2002:5db8:d70e::1",  # 6to4 of a public address
        "2001:0:4136:e378:8000:63bf:3fff:fdd2",  # Teredo
        "::ffff:0:a9fe:a9fe",  # IPv4-translated 169.254.169.254
        "::a9fe:a9fe",  # IPv4-compatible 169.254.169.254
        "::5db8:d70e",  # IPv4-compatible public address
        "fec0::1",  # site-local
        "192.0.0.1",
        "192.0.0.9",  # "globally reachable" for Python, still a protocol assignment
        "192.0.0.170",
    ],
)
def test_it_refuses_ranges_that_embed_or_hide_ipv4(address):
    assert not address_allowed(address)


def test_it_refuses_a_host_that_resolves_to_nat64_metadata(resolve_to, settings):
    settings.ALERT_WEBHOOK_ALLOW_PRIVATE = False
    resolve_to["hooks.example.com"] = "64:ff9b::a9fe:a9fe"
    with pytest.raises(WebhookRefused, match="non-public"):
        webhook_post(url="https://hooks.example.com/x", secret="s", payload={})


@pytest.mark.parametrize(
    "url",
    [
        "https://hooks.example.com:65536/x",
        "https://hooks.example.com:99999/x",
        "https://hooks.example.com:0/x",
        "https://hooks.example.com:https/x",
    ],
)
def test_it_refuses_a_port_that_is_not_one(url, resolve_to):
    resolve_to["hooks.example.com"] = "93.184.215.14"
    with pytest.raises(WebhookRefused, match="port"):
        webhook_post(url=url, secret="s", payload={})


def test_the_connection_goes_to_the_checked_address_when_dns_changes(
    tmp_path, settings, monkeypatch
):
    """DNS rebinding: the first answer is checked, every later one points elsewhere. The
    post must land on the first (the receiver), not on a second look-up's address."""
    import socket

    settings.ALERT_WEBHOOK_ALLOW_PRIVATE = False
    # 127.0.0.1 stands in for a public receiver; 127.0.0.2 (where nothing listens) for the
    # internal service a rebinding answer would point at.
    monkeypatch.setattr(webhooks, "address_allowed", lambda address: address == "127.0.0.1")
    answers = iter(["127.0.0.1"])
    asked: list[str] = []
    real = socket.getaddrinfo

    def rebinding(host, port, *args, **kwargs):
        if host != "hooks.test":
            return real(host, port, *args, **kwargs)
        asked.append(host)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (next(answers, "127.0.0.2"), port))]

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    with receiver(tmp_path, "hooks.test", [204]) as (port, cafile, received):
        monkeypatch.setattr(webhooks, "ssl_context", _trusting(cafile))
        status = webhook_post(url=f"https://hooks.test:{port}/", secret="s", payload={"n": 1})
    assert status == 204
    assert len(received) == 1
    assert asked == ["hooks.test"]  # looked up once: the connection did not ask again


def test_a_receiver_that_drips_its_answer_is_cut_off_at_the_deadline(
    tmp_path, settings, resolve_to, monkeypatch
):
    """Each byte of the answer comes well within the per-operation timeout, so only a
    deadline on the whole exchange ends it: the receiver would take 10 seconds to answer,
    the post gives up after about 0.5."""
    import socket
    import threading
    import time

    from .webhook_server import self_signed

    settings.ALERT_WEBHOOK_ALLOW_PRIVATE = True
    settings.ALERT_WEBHOOK_TIMEOUT_SECONDS = 0.5
    cert, key = self_signed(tmp_path, "drip.test")
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)
    monkeypatch.setattr(webhooks, "ssl_context", _trusting(cert))
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    dripped = []

    def drip():
        raw, _ = listener.accept()
        try:
            with server_context.wrap_socket(raw, server_side=True) as conn:
                conn.recv(65536)  # the request
                conn.sendall(b"HTTP/1.1 200 O")
                for _ in range(100):  # a reason phrase of 100 bytes, one every 0.1 s
                    conn.sendall(b"K")
                    dripped.append(1)
                    time.sleep(0.1)
                conn.sendall(b"\r\nContent-Length: 0\r\n\r\n")
        except OSError:
            pass  # the client hung up

    server = threading.Thread(target=drip, daemon=True)
    server.start()
    resolve_to["drip.test"] = "127.0.0.1"
    try:
        with pytest.raises(WebhookFailed, match="timed out"):
            webhook_post(
                url=f"https://drip.test:{listener.getsockname()[1]}/", secret="s", payload={}
            )
        server.join(timeout=30)
    finally:
        listener.close()
    assert len(dripped) < 50  # cut off after about 5 bytes, not after all 100
