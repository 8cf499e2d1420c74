"""The router's choice and passive health, on a clock the test moves."""

import logging

import pytest

from gateway.selectors import CatalogEndpoint, CatalogModel
from gateway.serving.routing import EJECTED, HEALTHY, TRIAL, Router


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
