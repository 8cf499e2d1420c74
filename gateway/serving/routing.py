"""Which upstream endpoint serves a request, and each endpoint's passive health, per process.

Choice: among a model's enabled endpoints, the best (lowest) priority tier that has an
available one; within it, smooth weighted round robin (nginx's): every pick adds each
candidate's weight to its running score, takes the highest and subtracts the tier's total
from it. It is deterministic and spreads a tier exactly by weight over every window of
``sum(weights)`` picks (random-by-weight only converges over many requests, and would make
tests of the shares statistical); it costs a few additions per request and no lock.

Health (passive): ``GATEWAY_UPSTREAM_EJECT_FAILURES`` consecutive failures (no connection,
no headers in time, 5xx, a stream cut) eject an endpoint for ``GATEWAY_UPSTREAM_EJECT_SECONDS``,
doubled at each ejection in a row up to ``GATEWAY_UPSTREAM_EJECT_MAX_SECONDS``. Once the
cool-down is over, one request at a time is let through as a trial: a success brings the
endpoint back (and resets the cool-down), a failure ejects it again for twice as long. An
ejection is logged once, when it happens. When every endpoint of a model is ejected, the
one whose cool-down ends first is tried anyway: a request has nothing better to do.

Each process keeps its own state (nothing is shared): an endpoint that is down is found out
by every process within a few requests.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from django.conf import settings

from gateway.selectors import CatalogEndpoint, CatalogModel
from observability import metrics

log = logging.getLogger(__name__)

HEALTHY = "healthy"
EJECTED = "ejected"
TRIAL = "trial"


@dataclass(slots=True)
class EndpointHealth:
    """One endpoint's state in this process."""

    label: str = ""
    model: str = ""
    consecutive_failures: int = 0
    ejections_in_a_row: int = 0
    ejected_until: float = 0.0
    trial_running: bool = False
    in_flight: int = 0
    requests: int = 0
    failures: int = 0
    score: int = 0  # smooth weighted round robin's running score

    def state(self, now: float) -> str:
        if self.ejections_in_a_row == 0:
            return HEALTHY
        return EJECTED if now < self.ejected_until or self.trial_running else TRIAL


class Router:
    def __init__(self, clock=time.monotonic):
        self._clock = clock
        self._health: dict[tuple[str, int | None], EndpointHealth] = {}

    def health(self, model: CatalogModel | str, endpoint: CatalogEndpoint) -> EndpointHealth:
        name = model if isinstance(model, str) else model.name
        key = (name, endpoint.id)
        state = self._health.get(key)
        if state is None:
            state = self._health[key] = EndpointHealth(label=endpoint.label, model=name)
        return state

    def states(self) -> list[EndpointHealth]:
        """Every endpoint this process has routed to (for /metrics and the staff page)."""
        return list(self._health.values())

    def choose(self, model: CatalogModel, tried: set) -> CatalogEndpoint | None:
        """The endpoint for the next attempt, excluding those ``tried`` (their ids), or None
        when none is left."""
        now = self._clock()
        left = [
            endpoint
            for endpoint in model.endpoints
            if endpoint.id not in tried and endpoint.upstream_key is not None
        ]
        if not left:
            return None
        tier: list[CatalogEndpoint] = []
        priority = None
        for endpoint in left:  # best priority first (the snapshot's order)
            if priority is not None and endpoint.priority != priority:
                break
            state = self.health(model, endpoint).state(now)
            if state == EJECTED:
                continue
            if state == TRIAL:
                # The cool-down is over: this request is its one trial.
                self.health(model, endpoint).trial_running = True
                return endpoint
            priority = endpoint.priority
            tier.append(endpoint)
        if not tier:
            # Everything is ejected: try the one that comes back first rather than nothing.
            return min(left, key=lambda endpoint: self.health(model, endpoint).ejected_until)
        if len(tier) == 1:
            return tier[0]
        total = 0
        best, best_state = None, None
        for endpoint in tier:
            state = self.health(model, endpoint)
            state.score += endpoint.weight
            total += endpoint.weight
            if best_state is None or state.score > best_state.score:
                best, best_state = endpoint, state
        best_state.score -= total
        return best

    def started(self, model: CatalogModel, endpoint: CatalogEndpoint) -> None:
        state = self.health(model, endpoint)
        state.in_flight += 1
        state.requests += 1
        metrics.record_upstream_attempt(
            model=state.model, endpoint=state.label, in_flight=state.in_flight
        )

    def finished(self, model: CatalogModel, endpoint: CatalogEndpoint, *, ok: bool) -> None:
        """The end of an attempt: ``ok`` when the endpoint answered (a 4xx of the client's
        making counts as an answer), else a failure towards ejection."""
        state = self.health(model, endpoint)
        state.in_flight = max(0, state.in_flight - 1)
        state.trial_running = False
        try:
            self._note(state, ok=ok)
        finally:
            metrics.record_upstream_outcome(
                model=state.model,
                endpoint=state.label,
                in_flight=state.in_flight,
                failed=not ok,
                ejected=state.ejections_in_a_row > 0,
            )

    def _note(self, state: EndpointHealth, *, ok: bool) -> None:
        if ok:
            if state.ejections_in_a_row:
                log.warning(
                    "upstream endpoint %s of %s is back in service", state.label, state.model
                )
            state.consecutive_failures = 0
            state.ejections_in_a_row = 0
            return
        state.failures += 1
        state.consecutive_failures += 1
        now = self._clock()
        trial_failed = state.ejections_in_a_row > 0 and now >= state.ejected_until
        if trial_failed or (
            state.ejections_in_a_row == 0
            and state.consecutive_failures >= settings.GATEWAY_UPSTREAM_EJECT_FAILURES
        ):
            cool_down = min(
                settings.GATEWAY_UPSTREAM_EJECT_SECONDS * 2**state.ejections_in_a_row,
                settings.GATEWAY_UPSTREAM_EJECT_MAX_SECONDS,
            )
            state.ejections_in_a_row += 1
            state.ejected_until = now + cool_down
            metrics.record_upstream_ejection(model=state.model, endpoint=state.label)
            log.warning(
                "upstream endpoint %s of %s ejected for %.0f s after %d failures in a row",
                state.label,
                state.model,
                cool_down,
                state.consecutive_failures,
            )
