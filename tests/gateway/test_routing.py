"""The router's choice and passive health, on a clock the test moves."""

import asyncio
import logging

import pytest

from gateway.selectors import CatalogEndpoint, CatalogModel
from gateway.serving.routing import EJECTED, FULL, HEALTHY, TRIAL, Router


class Clock:
    now = 1000.0

    def __call__(self):
        return self.now


def _model(*endpoints):
    return CatalogModel("m", "", False, 1000, 100, 0, "platform", endpoints=endpoints)


def _endpoint(pk, priority=0, weight=1, key=""):
    return CatalogEndpoint(pk, "openai_compatible", f"http://h{pk}/v1", "m", key, priority, weight)


@pytest.fixture
def eject(settings):
    settings.GATEWAY_UPSTREAM_EJECT_FAILURES = 2
    settings.GATEWAY_UPSTREAM_EJECT_SECONDS = 10
    settings.GATEWAY_UPSTREAM_EJECT_MAX_SECONDS = 35
    return settings


def _fail(router, model, endpoint, times=1):
    for _ in range(times):
        router.started(model, endpoint)
        router.finished(model, endpoint, ok=False)


def test_the_cool_down_doubles_while_it_keeps_failing_up_to_the_cap(eject, caplog):
    clock = Clock()
    router = Router(clock=clock)
    a, b = _endpoint(1), _endpoint(2)
    model = _model(a, b)
    caplog.set_level(logging.WARNING, logger="gateway")
    _fail(router, model, a, 2)
    state = router.health(model, a)
    assert state.state(clock.now) == EJECTED and state.ejected_until == clock.now + 10
    _fail(router, model, a, 5)  # failures while ejected (requests already under way) add nothing
    assert state.ejected_until == clock.now + 10
    assert {router.choose(model, set()).id for _ in range(4)} == {2}
    for cool_down in (20, 35, 35):  # doubled, then capped at the maximum
        clock.now = state.ejected_until
        assert state.state(clock.now) == TRIAL
        assert router.choose(model, set()) is a  # the one trial
        assert router.choose(model, set()) is b  # nobody else while it runs
        router.finished(model, a, ok=False)
        assert state.ejected_until == clock.now + cool_down
    assert len([r for r in caplog.records if "ejected" in r.getMessage()]) == 4
    clock.now = state.ejected_until
    assert router.choose(model, set()) is a
    router.finished(model, a, ok=True)
    assert state.state(clock.now) == HEALTHY
    _fail(router, model, a, 2)  # a fresh ejection starts from the base cool-down again
    assert state.ejected_until == clock.now + 10


def test_the_best_tier_with_a_healthy_endpoint_serves_and_all_ejected_still_tries(eject):
    clock = Clock()
    router = Router(clock=clock)
    a, b, c = _endpoint(1, 0), _endpoint(2, 1), _endpoint(3, 1, key=None)
    model = _model(a, b, c)
    assert router.choose(model, set()) is a
    assert router.choose(model, {1}) is b  # failover skips the tried one
    assert router.choose(model, {1, 2}) is None  # c's key is unusable
    _fail(router, model, a, 2)
    assert router.choose(model, set()) is b
    _fail(router, model, b, 2)
    clock.now += 1
    # Everything ejected: the one back first is tried rather than nothing.
    assert router.choose(model, set()) is a


# --- caps and the fair queue -------------------------------------------------------------------


def _capped(pk, cap, priority=0, weight=1):
    return CatalogEndpoint(
        pk, "openai_compatible", f"http://h{pk}/v1", "m", "", priority, weight, cap
    )


@pytest.fixture
def queue(settings):
    settings.GATEWAY_UPSTREAM_QUEUE_MAX = 1000
    settings.GATEWAY_UPSTREAM_QUEUE_WAIT_SECONDS = 5
    return settings


def test_a_full_endpoint_is_skipped_and_a_full_tier_spills_to_the_next(queue):
    router = Router(clock=Clock())
    a, b, c = _capped(1, 1), _capped(2, 2), _capped(3, None, priority=1)
    model = _model(a, b, c)
    taken = []
    for _ in range(3):
        taken.append(router.choose(model, set()))
        router.started(model, taken[-1])
    # a holds one (its cap), b two: the best tier is full, the next one takes the rest.
    assert sorted(e.id for e in taken) == [1, 2, 2]
    assert router.choose(model, set()) is c
    router.finished(model, a, ok=True)
    assert router.choose(model, set()) is a


def test_a_capped_model_with_no_room_left_says_full_not_none(queue):
    router = Router(clock=Clock())
    a = _capped(1, 1)
    model = _model(a)
    router.started(model, router.choose(model, set()))
    assert router.choose(model, set()) is FULL
    assert router.choose(model, {1}) is None  # tried already: nothing is left, not full


def test_with_everything_ejected_one_with_room_is_tried_else_the_request_waits(eject, queue):
    clock = Clock()
    router = Router(clock=clock)
    a, b = _capped(1, 1), _capped(2, 1)
    model = _model(a, b)
    router.started(model, a)  # a request still under way on a when it is ejected
    _fail(router, model, a, 2)
    _fail(router, model, b, 2)
    assert router.choose(model, set()) is b  # ejected, but it has room
    router.started(model, b)
    assert router.choose(model, set()) is FULL  # none has room: wait rather than fail


def test_one_account_s_backlog_does_not_starve_another_account_s_single_request(queue):
    """200 requests of one account queued first, then one of another: it is served within
    the first two slots that free up, not after the backlog."""
    router = Router(clock=Clock())
    a = _capped(1, 2)
    model = _model(a)
    order = []

    async def request(account, n):
        endpoint = await router.acquire(model, set(), account)
        order.append((account, n))
        await asyncio.sleep(0)
        router.finished(model, endpoint, ok=True)

    async def go():
        holders = [await router.acquire(model, set(), "holder") for _ in range(2)]
        tasks = [asyncio.create_task(request("busy", n)) for n in range(200)]
        await asyncio.sleep(0)
        tasks.append(asyncio.create_task(request("quiet", 0)))
        await asyncio.sleep(0)
        assert router.queued() == {"m": 201}
        for endpoint in holders:
            router.finished(model, endpoint, ok=True)
        await asyncio.gather(*tasks)

    asyncio.run(go())
    assert order.index(("quiet", 0)) < 2
    # Within an account, first come first served.
    busy = [n for account, n in order if account == "busy"]
    assert busy == sorted(busy) and len(busy) == 200
    assert router.queued() == {} and router.health(model, a).in_flight == 0


def test_accounts_take_turns(queue):
    router = Router(clock=Clock())
    a = _capped(1, 1)
    model = _model(a)
    order = []

    async def request(account):
        endpoint = await router.acquire(model, set(), account)
        order.append(account)
        await asyncio.sleep(0)
        router.finished(model, endpoint, ok=True)

    async def go():
        holder = await router.acquire(model, set(), "x")
        tasks = [asyncio.create_task(request(account)) for account in "aaaabbc"]
        await asyncio.sleep(0)
        router.finished(model, holder, ok=True)
        await asyncio.gather(*tasks)

    asyncio.run(go())
    assert "".join(order) == "abcabaa"


def test_a_full_queue_and_a_wait_that_runs_out_are_refused_with_503(queue):
    from gateway.serving.errors import GatewayError

    queue.GATEWAY_UPSTREAM_QUEUE_MAX = 1
    queue.GATEWAY_UPSTREAM_QUEUE_WAIT_SECONDS = 0.05
    router = Router(clock=Clock())
    a = _capped(1, 1)
    model = _model(a)

    async def go():
        await router.acquire(model, set(), "x")
        waiting = asyncio.create_task(router.acquire(model, set(), "y"))
        await asyncio.sleep(0)
        with pytest.raises(GatewayError) as full:
            await router.acquire(model, set(), "z")
        with pytest.raises(GatewayError) as waited:
            await waiting
        return full.value, waited.value

    full, waited = asyncio.run(go())
    for error in (full, waited):
        assert (error.status, error.code, error.retry_after) == (503, "upstream_overloaded", 2)
    assert "queue of waiting requests is full" in full.message
    assert "within 0.05 s" in waited.message
    assert router.queued() == {} and router.health(model, a).in_flight == 1


def test_a_cancelled_waiter_gives_up_its_place_and_a_slot_handed_to_it_goes_on(queue):
    router = Router(clock=Clock())
    a = _capped(1, 1)
    model = _model(a)

    async def go():
        holder = await router.acquire(model, set(), "x")
        gone = asyncio.create_task(router.acquire(model, set(), "y"))
        late = asyncio.create_task(router.acquire(model, set(), "z"))
        await asyncio.sleep(0)
        gone.cancel()
        await asyncio.sleep(0)
        assert router.queued() == {"m": 1}
        # The slot is handed to the next waiter, which is cancelled before it runs: the slot
        # goes back, not lost.
        router.finished(model, holder, ok=True)
        late.cancel()
        with pytest.raises(asyncio.CancelledError):
            await late
        assert router.health(model, a).in_flight == 0
        assert router.queued() == {}
        assert await router.acquire(model, set(), "w") is a

    asyncio.run(go())


def test_a_failover_waiter_that_cannot_use_the_free_slot_keeps_its_turn(queue):
    router = Router(clock=Clock())
    a, b = _capped(1, 1), _capped(2, 1)
    model = _model(a, b)
    served = []

    async def request(account, tried):
        endpoint = await router.acquire(model, tried, account)
        served.append((account, endpoint.id))

    async def go():
        held = [await router.acquire(model, set(), "x") for _ in range(2)]
        assert {e.id for e in held} == {1, 2}
        failover = asyncio.create_task(request("y", {1}))  # tried a, may only take b
        fresh = asyncio.create_task(request("z", set()))
        await asyncio.sleep(0)
        router.finished(model, a, ok=True)  # a's slot: only z can take it
        await asyncio.sleep(0)
        assert served == [("z", 1)]
        router.finished(model, b, ok=True)
        await asyncio.gather(failover, fresh)

    asyncio.run(go())
    assert served == [("z", 1), ("y", 2)]


def test_the_probe_brings_an_ejected_endpoint_back_and_its_failure_counts(eject):
    clock = Clock()
    router = Router(clock=clock)
    a, b = _endpoint(1), _endpoint(2)
    model = _model(a, b)
    router.probed("m", a, ok=False)
    router.probed("m", a, ok=False)
    assert router.health(model, a).state(clock.now) == EJECTED
    router.probed("m", a, ok=True)  # before the cool-down is over
    assert router.health(model, a).state(clock.now) == HEALTHY
    _fail(router, model, a, 1)
    router.probed("m", a, ok=True)  # a healthy endpoint's own failures are not wiped out
    assert router.health(model, a).consecutive_failures == 1


def test_the_snapshot_has_each_endpoint_s_recent_error_rate_and_latency(eject):
    clock = Clock()
    router = Router(clock=clock)
    a = _endpoint(1)
    model = _model(a)
    for ok, seconds in ((True, 0.1), (False, 0.3), (True, 0.2)):
        router.started(model, a)
        router.answered(model, a, seconds)
        router.finished(model, a, ok=ok)
    (row,) = router.snapshot()["endpoints"]
    assert (row["state"], row["attempts"], row["failures"], row["in_flight"]) == (
        HEALTHY,
        3,
        1,
        0,
    )
    assert 100 < row["latency_ms"] < 300
    clock.now += 90  # a window later: still counted (the previous window)
    assert router.snapshot()["endpoints"][0]["attempts"] == 3
    clock.now += 90  # two windows later: gone
    assert router.snapshot()["endpoints"][0]["attempts"] == 0
