"""The gateway processes' live view of their upstream endpoints, shared through the Django
cache (Redis in production; in-process for the single embedded process, which also serves the
staff pages) for the staff overview.

Each gateway process keeps its own routing state (``gateway.serving.routing``) and publishes
it every ``PUBLISH_SECONDS`` (``gateway.serving.monitor``) under a slot of its own among
``SLOTS`` keys, claimed with ``cache.add`` (atomic in Redis, so two processes never share
one), with a TTL of three intervals: a process that stopped drops out by itself, and its slot
is free again. The reader fetches every slot in one round trip (``get_many``) and merges the
reports by model and endpoint.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import time
from dataclasses import dataclass, field

from django.core.cache import cache

log = logging.getLogger(__name__)

SLOTS = 256
PUBLISH_SECONDS = 5.0
TTL_SECONDS = 3 * PUBLISH_SECONDS


def _key(slot: int) -> str:
    return f"gw:upstreams:{slot}"


class Publisher:
    """One gateway process's reports (sync: the monitor runs it in a worker thread)."""

    def __init__(self, process: str | None = None):
        self.process = process or f"{socket.gethostname()}:{os.getpid()}"
        self.slot: int | None = None
        self._warned = False

    def publish(self, report: dict) -> None:
        payload = {**report, "process": self.process, "reported_at": time.time()}
        if self.slot is not None:
            current = cache.get(_key(self.slot))
            if current is None or current.get("process") == self.process:
                cache.set(_key(self.slot), payload, TTL_SECONDS)
                return
            # This process stalled past the TTL and another one took the slot.
            self.slot = None
        for slot in range(SLOTS):
            if cache.add(_key(slot), payload, TTL_SECONDS):
                self.slot = slot
                return
        if not self._warned:
            self._warned = True
            log.warning(
                "more than %d gateway processes report upstream state: %s unseen",
                SLOTS,
                self.process,
            )

    def withdraw(self) -> None:
        """At shutdown: the overview stops counting this process at once."""
        if self.slot is not None:
            cache.delete(_key(self.slot))
            self.slot = None


@dataclass
class LiveEndpoint:
    """One endpoint as every reporting process sees it, merged."""

    processes: int = 0
    # Processes per state (healthy, ejected, trial).
    states: dict = field(default_factory=dict)
    ejected_until: float | None = None  # the latest, wall-clock seconds
    in_flight: int = 0
    attempts: int = 0
    failures: int = 0
    latency_ms: float | None = None  # mean of the processes', weighted by their attempts
    reported_at: float = 0.0  # the newest report

    @property
    def ejected_until_at(self) -> dt.datetime | None:
        if self.ejected_until is None:
            return None
        return dt.datetime.fromtimestamp(self.ejected_until, tz=dt.UTC)

    @property
    def reported_seconds_ago(self) -> int:
        return max(0, int(time.time() - self.reported_at))

    @property
    def state(self) -> str:
        """The worst state any process has it in."""
        for state in ("ejected", "trial"):
            if state in self.states:
                return state
        return "healthy"

    @property
    def processes_not_healthy(self) -> int:
        return self.processes - self.states.get("healthy", 0)

    @property
    def error_rate(self) -> float | None:
        """Failed attempts over the last one to two minutes, in percent (None: no attempts)."""
        return round(100 * self.failures / self.attempts, 1) if self.attempts else None


@dataclass
class LiveState:
    endpoints: dict  # (model name, endpoint id or None) -> LiveEndpoint
    queued: dict  # model name -> requests waiting, all processes
    processes: int
    reported_at: float | None  # the newest report, wall-clock seconds

    @property
    def reported_seconds_ago(self) -> int | None:
        if self.reported_at is None:
            return None
        return max(0, int(time.time() - self.reported_at))


def live_state_read() -> LiveState:
    """Every live gateway process's last report, merged (one cache round trip)."""
    reports = [
        report
        for report in cache.get_many([_key(slot) for slot in range(SLOTS)]).values()
        if isinstance(report, dict)
    ]
    endpoints: dict = {}
    weighted: dict = {}
    queued: dict = {}
    for report in reports:
        at = report.get("reported_at", 0.0)
        for row in report.get("endpoints", ()):
            key = (row["model"], row["endpoint"])
            live = endpoints.setdefault(key, LiveEndpoint())
            live.processes += 1
            live.states[row["state"]] = live.states.get(row["state"], 0) + 1
            if row["ejected_until"] is not None:
                live.ejected_until = max(live.ejected_until or 0.0, row["ejected_until"])
            live.in_flight += row["in_flight"]
            live.attempts += row["attempts"]
            live.failures += row["failures"]
            live.reported_at = max(live.reported_at, at)
            if row["latency_ms"] is not None:
                total, weight = weighted.get(key, (0.0, 0))
                share = max(row["attempts"], 1)
                weighted[key] = (total + row["latency_ms"] * share, weight + share)
        for model, waiting in report.get("queued", {}).items():
            queued[model] = queued.get(model, 0) + waiting
    for key, (total, weight) in weighted.items():
        endpoints[key].latency_ms = total / weight
    return LiveState(
        endpoints=endpoints,
        queued=queued,
        processes=len(reports),
        reported_at=max((r.get("reported_at", 0.0) for r in reports), default=None),
    )
