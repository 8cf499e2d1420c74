"""Which upstream endpoint serves a request, each endpoint's passive health and concurrency
cap, and the fair queue in front of capped endpoints, per process.

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
one whose cool-down ends first is tried anyway: a request has nothing better to do. The
optional active probe (``gateway.serving.monitor``) reports through ``probed``.

Caps: an endpoint with ``max_concurrency`` takes no more attempts at once (in this process).
A full endpoint is skipped like an ejected one, so a full best tier spills to the next tier
that has room; when no endpoint left has room, the request waits in the model's queue
(``GATEWAY_UPSTREAM_QUEUE_MAX`` places, ``GATEWAY_UPSTREAM_QUEUE_WAIT_SECONDS`` at most) and an
attempt that ends hands its slot straight to the next waiter, accounts taking turns
(``gateway.serving.fair_queue``). Past the wait, or with the queue full, 503
``upstream_overloaded`` (Anthropic: 529). An endpoint without a cap costs one attribute test.

Each process keeps its own state (nothing is shared): an endpoint that is down is found out
by every process within a few requests, and a cap is per process (the operator divides a
server's capacity by the number of gateway processes).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from django.conf import settings

from gateway.selectors import CatalogEndpoint, CatalogModel
from gateway.serving import errors
from gateway.serving.fair_queue import FairQueue, Waiter
from observability import metrics

log = logging.getLogger(__name__)

HEALTHY = "healthy"
EJECTED = "ejected"
TRIAL = "trial"
# The recent window of the error rate: this one and the one before, so it never starts empty.
WINDOW_SECONDS = 60.0
# Weight of the newest time to headers in the latency average.
LATENCY_EWMA_ALPHA = 0.2


class _Full:
    """``Router.choose``'s answer when endpoints are left but every one is at its cap."""

    def __repr__(self) -> str:
        return "FULL"


FULL = _Full()


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
    # Attempts ended and failed in the current window, and in the one before it.
    window_started: float = 0.0
    window_attempts: int = 0
    window_failures: int = 0
    previous_attempts: int = 0
    previous_failures: int = 0
    # Time to the response headers (seconds), exponentially weighted; None before any.
    latency: float | None = None

    def state(self, now: float) -> str:
        if self.ejections_in_a_row == 0:
            return HEALTHY
        return EJECTED if now < self.ejected_until or self.trial_running else TRIAL

    def count(self, now: float, *, failed: bool) -> None:
        """An ended attempt, in the recent window."""
        if now - self.window_started >= WINDOW_SECONDS:
            fresh = now - self.window_started >= 2 * WINDOW_SECONDS
            self.previous_attempts = 0 if fresh else self.window_attempts
            self.previous_failures = 0 if fresh else self.window_failures
            self.window_attempts = self.window_failures = 0
            self.window_started = now
        self.window_attempts += 1
        if failed:
            self.window_failures += 1

    def recent(self, now: float) -> tuple[int, int]:
        """(attempts, failures) over the last one to two windows."""
        if now - self.window_started >= 2 * WINDOW_SECONDS:
            return 0, 0
        if now - self.window_started >= WINDOW_SECONDS:
            return self.window_attempts, self.window_failures
        return (
            self.window_attempts + self.previous_attempts,
            self.window_failures + self.previous_failures,
        )


class Router:
    def __init__(self, clock=time.monotonic):
        self._clock = clock
        self._health: dict[tuple[str, int | None], EndpointHealth] = {}
        # Waiting requests by model name; empty (and skipped at no cost) without capped traffic.
        self._queues: dict[str, FairQueue] = {}

    def health(self, model: CatalogModel | str, endpoint: CatalogEndpoint) -> EndpointHealth:
        name = model if isinstance(model, str) else model.name
        key = (name, endpoint.id)
        state = self._health.get(key)
        if state is None:
            state = self._health[key] = EndpointHealth(label=endpoint.label, model=name)
        return state

    def states(self) -> list[EndpointHealth]:
        """Every endpoint this process has routed to or probed."""
        return list(self._health.values())

    def queued(self) -> dict[str, int]:
        """Requests waiting for a slot, by model name."""
        return {name: queue.size for name, queue in self._queues.items()}

    def snapshot(self) -> dict:
        """This process's view, for the staff overview (``gateway.live_state``): each
        endpoint's state, slots in use, recent attempts and failures and latency, and the
        requests waiting by model. Times are wall-clock seconds."""
        now, wall = self._clock(), time.time()
        endpoints = []
        for (model, endpoint_id), state in self._health.items():
            attempts, failures = state.recent(now)
            endpoints.append(
                {
                    "model": model,
                    "endpoint": endpoint_id,
                    "label": state.label,
                    "state": state.state(now),
                    "ejected_until": (
                        wall + state.ejected_until - now if state.ejections_in_a_row else None
                    ),
                    "in_flight": state.in_flight,
                    "attempts": attempts,
                    "failures": failures,
                    "latency_ms": None if state.latency is None else state.latency * 1000,
                }
            )
        return {"endpoints": endpoints, "queued": self.queued()}

    def choose(self, model: CatalogModel, tried: set) -> CatalogEndpoint | _Full | None:
        """The endpoint for the next attempt, excluding those ``tried`` (their ids); ``FULL``
        when every endpoint left is at its cap; None when none is left."""
        now = self._clock()
        tier: list[CatalogEndpoint] = []
        priority = None
        full = ejected_full = False
        back_first: CatalogEndpoint | None = None
        back_at = 0.0
        for endpoint in model.endpoints:  # best priority first (the snapshot's order)
            if endpoint.id in tried or endpoint.upstream_key is None:
                continue
            if priority is not None and endpoint.priority != priority:
                break
            state = self.health(model, endpoint)
            status = state.state(now)
            cap = endpoint.max_concurrency
            if cap is not None and state.in_flight >= cap:
                if status == EJECTED:
                    ejected_full = True
                else:
                    full = True
                continue
            if status == EJECTED:
                if back_first is None or state.ejected_until < back_at:
                    back_first, back_at = endpoint, state.ejected_until
                continue
            if status == TRIAL:
                # The cool-down is over: this request is its one trial.
                state.trial_running = True
                return endpoint
            priority = endpoint.priority
            tier.append(endpoint)
        if not tier:
            # A full endpoint frees up soon; with none, everything left is ejected: try the
            # one that comes back first rather than nothing (or wait for one to have room).
            if full or (back_first is None and ejected_full):
                return FULL
            return back_first
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

    async def acquire(self, model: CatalogModel, tried: set, account) -> CatalogEndpoint | None:
        """``choose``, then ``started`` on the endpoint; when every endpoint left is at its
        cap, first a place in the model's queue, served in turn with ``account``'s other
        requests behind those of other accounts. None when no endpoint is left. Raises 503
        ``upstream_overloaded`` past the wait or when the queue is full."""
        endpoint = self.choose(model, tried)
        if endpoint is FULL:
            return await self._wait(model, tried, account)
        if endpoint is not None:
            self.started(model, endpoint)
        return endpoint

    async def _wait(self, model: CatalogModel, tried: set, account) -> CatalogEndpoint | None:
        queue = self._queues.get(model.name)
        if (queue.size if queue is not None else 0) >= settings.GATEWAY_UPSTREAM_QUEUE_MAX:
            metrics.record_upstream_queue_refusal(model=model.name, reason="full")
            raise errors.upstream_queue_refused(waited=None)
        if queue is None:
            queue = self._queues[model.name] = FairQueue()
        waiter = Waiter(model, tried, account, asyncio.get_running_loop().create_future())
        queue.push(waiter)
        metrics.record_upstream_queue(model=model.name, depth=queue.size)
        seconds = settings.GATEWAY_UPSTREAM_QUEUE_WAIT_SECONDS
        try:
            async with asyncio.timeout(seconds):
                try:
                    return await waiter.future
                except BaseException:
                    # Cancelled (the client left, or the wait is over): give up the place, or
                    # the slot when it was handed over at that very moment.
                    self._abandon(waiter)
                    raise
        except TimeoutError:
            metrics.record_upstream_queue_refusal(model=model.name, reason="timeout")
            raise errors.upstream_queue_refused(waited=seconds) from None

    def _abandon(self, waiter: Waiter) -> None:
        future = waiter.future
        if future.done() and not future.cancelled():
            endpoint = future.result()
            if endpoint is not None:
                self._release(self.health(waiter.model, endpoint))
            return
        name = waiter.model.name
        queue = self._queues.get(name)
        if queue is not None:
            queue.remove(waiter)
            self._queue_changed(name, queue)

    def _queue_changed(self, name: str, queue: FairQueue) -> None:
        if not queue.size:
            del self._queues[name]
        metrics.record_upstream_queue(model=name, depth=queue.size)

    def _serve(self, name: str) -> None:
        """Hand free slots of model ``name`` to its waiters, in their turn."""
        queue = self._queues.get(name)
        if queue is None:
            return

        def pick(waiter: Waiter):
            endpoint = self.choose(waiter.model, waiter.tried)
            if endpoint is not None and endpoint is not FULL:
                self.started(waiter.model, endpoint)
            return endpoint

        while queue.serve(pick, full=FULL):
            pass
        self._queue_changed(name, queue)

    def started(self, model: CatalogModel, endpoint: CatalogEndpoint) -> None:
        state = self.health(model, endpoint)
        state.in_flight += 1
        state.requests += 1
        metrics.record_upstream_attempt(
            model=state.model, endpoint=state.label, in_flight=state.in_flight
        )

    def answered(self, model: CatalogModel, endpoint: CatalogEndpoint, seconds: float) -> None:
        """The attempt's response headers came in after ``seconds``."""
        state = self.health(model, endpoint)
        latency = state.latency
        state.latency = (
            seconds if latency is None else latency + LATENCY_EWMA_ALPHA * (seconds - latency)
        )
        metrics.record_upstream_latency(model=state.model, endpoint=state.label, seconds=seconds)

    def finished(self, model: CatalogModel, endpoint: CatalogEndpoint, *, ok: bool) -> None:
        """The end of an attempt: ``ok`` when the endpoint answered (a 4xx of the client's
        making counts as an answer), else a failure towards ejection."""
        state = self.health(model, endpoint)
        state.count(self._clock(), failed=not ok)
        try:
            self._note(state, ok=ok)
        finally:
            self._release(state, failed=not ok)

    def _release(self, state: EndpointHealth, *, failed: bool = False) -> None:
        state.in_flight = max(0, state.in_flight - 1)
        state.trial_running = False
        metrics.record_upstream_outcome(
            model=state.model,
            endpoint=state.label,
            in_flight=state.in_flight,
            failed=failed,
            ejected=state.ejections_in_a_row > 0,
            error_ratio=self._error_ratio(state),
        )
        if self._queues:
            self._serve(state.model)

    def _error_ratio(self, state: EndpointHealth) -> float:
        attempts, failures = state.recent(self._clock())
        return failures / attempts if attempts else 0.0

    def probed(self, model: str, endpoint: CatalogEndpoint, *, ok: bool) -> None:
        """The active probe's verdict (``gateway.serving.monitor``): a failure counts towards
        ejection as a failed request would; a success brings an ejected endpoint back at once,
        without waiting for a client's trial request. A healthy endpoint's own requests judge
        it: a probe's success does not wipe out their failures."""
        state = self.health(model, endpoint)
        if ok and not state.ejections_in_a_row:
            return
        self._note(state, ok=ok)
        metrics.record_upstream_outcome(
            model=state.model,
            endpoint=state.label,
            in_flight=state.in_flight,
            failed=False,
            ejected=state.ejections_in_a_row > 0,
            error_ratio=self._error_ratio(state),
        )
        if ok and self._queues:
            self._serve(model)

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
