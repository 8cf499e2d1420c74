"""Signed webhook posts, and the guard that keeps them off the operator's own network.

The URL's host is resolved once, every address it resolves to must be global (not private,
loopback, link-local, shared, reserved or multicast) unless ``ALERT_WEBHOOK_ALLOW_PRIVATE``
is on, and the connection goes to the address that was checked, so a DNS answer that changes
between the check and the connect (rebinding) cannot reach an internal service. TLS still
verifies the certificate against the URL's host name.

Signature: ``X-Alert-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>``.
A receiver recomputes it over the raw body and refuses old timestamps (replays).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import http.client
import ipaddress
import json
import socket
import ssl
import threading
import time
from urllib.parse import urlsplit

from django.conf import settings

SIGNATURE_HEADER = "X-Alert-Signature"
USER_AGENT = "quota-alerts/1"


class WebhookRefused(Exception):
    """The URL may not be called (scheme, host, address). Permanent: no retry."""


class WebhookFailed(Exception):
    """The receiver could not be reached or did not answer 2xx. Worth a retry."""


def webhook_signature(*, secret: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


# Refused whatever ``is_global`` says of them. The IPv6 forms that carry an IPv4 address
# (NAT64, 6to4, Teredo, IPv4-translated and IPv4-compatible) reach that address through a
# translator or tunnel the operator's network may run, private or not (64:ff9b::a9fe:a9fe is
# the cloud metadata service behind NAT64): refusing the ranges outright is simpler and safer
# than judging the embedded address. Site-local IPv6 is deprecated but still routed inside
# some networks; 192.0.0.0/24 holds IETF protocol assignments, not receivers.
REFUSED_NETWORKS = tuple(
    ipaddress.ip_network(network)
    for network in (
        "64:ff9b::/96",  # NAT64, well-known prefix
        "64:ff9b:1::/48",  # NAT64, local use
        "2002::/16",  # 6to4
        "2001::/32",  # Teredo
        "::ffff:0:0:0/96",  # IPv4-translated (SIIT)
        "::/96",  # IPv4-compatible (deprecated)
        "fec0::/10",  # site-local (deprecated)
        "192.0.0.0/24",  # IETF protocol assignments
    )
)


def address_allowed(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # ::ffff:127.0.0.1 is loopback, whatever is_global says of it
    if any(ip in network for network in REFUSED_NETWORKS):
        return False
    return ip.is_global and not ip.is_multicast


def webhook_port(url: str) -> int | None:
    """The port ``url`` names (443 when none), or None when it is not a port (above 65535,
    0, not a number): ``urlsplit`` parses such a URL and raises only when asked its port."""
    try:
        port = urlsplit(url).port
    except ValueError:
        return None
    if port is None:
        return 443
    return port if 1 <= port <= 65535 else None


def webhook_url_problem(url: str) -> str | None:
    """Why ``url`` cannot be a webhook, before any DNS look-up (for the settings form)."""
    parts = urlsplit(url)
    if parts.scheme != "https":
        return "the webhook URL must start with https://"
    if not parts.hostname:
        return "the webhook URL has no host"
    if parts.username or parts.password:
        return "the webhook URL must not contain a user name or password"
    if webhook_port(url) is None:
        return "the webhook URL's port is not a number from 1 to 65535"
    return None


def resolve_checked(host: str, port: int) -> str:
    """The address to connect to: the first one ``host`` resolves to, after checking them all."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise WebhookFailed(f"cannot resolve the webhook host: {type(exc).__name__}") from None
    addresses = [info[4][0] for info in infos]
    if not addresses:
        raise WebhookFailed("the webhook host has no address")
    if not settings.ALERT_WEBHOOK_ALLOW_PRIVATE:
        for address in addresses:
            if not address_allowed(address):
                raise WebhookRefused(
                    f"the webhook host resolves to a non-public address ({address})"
                )
    return addresses[0]


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """HTTPS to a given address, with SNI and certificate checks for the URL's host name.

    ``timeout`` bounds each socket operation; ``deadline`` (a ``time.monotonic()`` value)
    bounds the whole exchange: a receiver that drips a byte at a time never lets one
    operation time out, so at the deadline a timer shuts the socket down, which ends any
    read or write in progress."""

    def __init__(self, host: str, port: int, *, address: str, timeout: float, deadline, context):
        super().__init__(host, port, timeout=timeout, context=context)
        self._address = address
        self._deadline = deadline
        self._watchdog: threading.Timer | None = None
        self._guard: socket.socket | None = None
        self.timed_out = False

    def connect(self):
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("the webhook deadline passed")
        sock = socket.create_connection((self._address, self.port), min(self.timeout, remaining))
        # A duplicate descriptor of the same socket: wrapping for TLS detaches ``sock``, and
        # shutdown(2) through any descriptor ends the connection for all of them.
        self._guard = sock.dup()
        self._watchdog = threading.Timer(remaining, self._cut_off)
        self._watchdog.daemon = True
        self._watchdog.start()
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)

    def close(self):
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._guard.close()
            self._watchdog = None
        super().close()

    def _cut_off(self):
        # A blocked read or write returns at once (a read as the end of the stream, which
        # may look like a whole answer: ``timed_out`` says it is not one).
        self.timed_out = True
        with contextlib.suppress(OSError):  # already closed
            self._guard.shutdown(socket.SHUT_RDWR)


def ssl_context() -> ssl.SSLContext:
    return ssl.create_default_context()


def webhook_post(*, url: str, secret: str, payload: dict) -> int:
    """POST ``payload`` as JSON, signed; the receiver's status code. Raises ``WebhookRefused``
    (do not retry) or ``WebhookFailed`` (retry later). Connecting, TLS, sending and reading
    the answer end within ``ALERT_WEBHOOK_TIMEOUT_SECONDS`` of the call, all together (the
    DNS look-up before them is bounded by the system resolver's own timeout)."""
    started = time.monotonic()
    problem = webhook_url_problem(url)
    if problem:
        raise WebhookRefused(problem)
    parts = urlsplit(url)
    port = webhook_port(url)
    address = resolve_checked(parts.hostname, port)
    body = json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()
    path = parts.path or "/"
    if parts.query:
        path = f"{path}?{parts.query}"
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        SIGNATURE_HEADER: webhook_signature(secret=secret, timestamp=int(time.time()), body=body),
    }
    timeout = settings.ALERT_WEBHOOK_TIMEOUT_SECONDS
    conn = _PinnedHTTPSConnection(
        parts.hostname,
        port,
        address=address,
        timeout=timeout,
        deadline=started + timeout,
        context=ssl_context(),
    )
    try:
        conn.request("POST", path, body=body, headers=headers)
        status = conn.getresponse().status
    except (OSError, http.client.HTTPException) as exc:
        if conn.timed_out or isinstance(exc, TimeoutError):
            raise WebhookFailed(f"webhook request timed out after {timeout:g} s") from None
        raise WebhookFailed(f"webhook request failed: {type(exc).__name__}") from None
    finally:
        conn.close()
    if conn.timed_out:
        raise WebhookFailed(f"webhook request timed out after {timeout:g} s")
    if not 200 <= status < 300:
        raise WebhookFailed(f"webhook answered {status}")
    return status
