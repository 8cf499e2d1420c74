"""System checks for the gateway's settings that only make sense together."""

from __future__ import annotations

from django.conf import settings
from django.core import checks


@checks.register(checks.Tags.compatibility)
def request_lifetime_check(app_configs, **kwargs) -> list:
    """A request must be over (stream ended, settlement retried) before its reservation counts
    as stale; otherwise the sweeper hands its tokens out again while it still spends them."""
    stale = settings.RESERVATION_STALE_SECONDS
    stream = settings.GATEWAY_STREAM_MAX_SECONDS
    retry = settings.GATEWAY_SETTLE_RETRY_SECONDS
    found = []
    if stream <= 0:
        found.append(
            checks.Error("GATEWAY_STREAM_MAX_SECONDS must be positive.", id="gateway.E001")
        )
    if settings.GATEWAY_CONCURRENCY_LEASE_SECONDS < 1:
        found.append(
            checks.Error(
                "GATEWAY_CONCURRENCY_LEASE_SECONDS must be at least 1: its process renews a "
                "slot every third of it, and a shorter lease would free slots still in use.",
                id="gateway.E003",
            )
        )
    if settings.GATEWAY_UPSTREAM_ATTEMPTS < 1 or settings.GATEWAY_UPSTREAM_EJECT_FAILURES < 1:
        found.append(
            checks.Error(
                "GATEWAY_UPSTREAM_ATTEMPTS and GATEWAY_UPSTREAM_EJECT_FAILURES must be at least "
                "1: with none, no request would reach a model server (or every failure would "
                "eject its endpoint at once).",
                id="gateway.E004",
            )
        )
    eject, eject_max = (
        settings.GATEWAY_UPSTREAM_EJECT_SECONDS,
        settings.GATEWAY_UPSTREAM_EJECT_MAX_SECONDS,
    )
    if settings.GATEWAY_UPSTREAM_FAILOVER_SECONDS <= 0 or eject <= 0 or eject_max < eject:
        found.append(
            checks.Error(
                "GATEWAY_UPSTREAM_FAILOVER_SECONDS and GATEWAY_UPSTREAM_EJECT_SECONDS must be "
                "positive, and GATEWAY_UPSTREAM_EJECT_MAX_SECONDS at least "
                "GATEWAY_UPSTREAM_EJECT_SECONDS.",
                id="gateway.E005",
            )
        )
    queue_wait = settings.GATEWAY_UPSTREAM_QUEUE_WAIT_SECONDS
    if settings.GATEWAY_UPSTREAM_QUEUE_MAX < 0 or not 0 < queue_wait < stream:
        found.append(
            checks.Error(
                "GATEWAY_UPSTREAM_QUEUE_MAX must not be negative, and "
                f"GATEWAY_UPSTREAM_QUEUE_WAIT_SECONDS ({queue_wait:g}) must be positive and "
                f"below GATEWAY_STREAM_MAX_SECONDS ({stream:g}): the wait is part of the "
                "request's time.",
                id="gateway.E006",
            )
        )
    if settings.GATEWAY_UPSTREAM_PROBE_SECONDS < 0:
        found.append(
            checks.Error(
                "GATEWAY_UPSTREAM_PROBE_SECONDS must not be negative (0 turns the probe off).",
                id="gateway.E007",
            )
        )
    if stream + retry >= stale:
        found.append(
            checks.Error(
                f"GATEWAY_STREAM_MAX_SECONDS ({stream:g}) + GATEWAY_SETTLE_RETRY_SECONDS "
                f"({retry:g}) must be below RESERVATION_STALE_SECONDS ({stale}).",
                hint="Lower the stream limit or raise RESERVATION_STALE_SECONDS.",
                id="gateway.E002",
            )
        )
    return found
