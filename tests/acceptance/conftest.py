import time

import pytest

from tests.acceptance.live import demo_upstream, gateway_servers


@pytest.fixture(scope="module")
def live_upstream(django_db_setup, django_db_blocker):
    with demo_upstream() as url:
        yield url


@pytest.fixture(scope="module")
def live_base_url(live_upstream, django_db_setup):
    """One uvicorn process serving portal.asgi over the demo upstream, on the test database."""
    with gateway_servers(1, DEMO_UPSTREAM_URL=live_upstream, RATE_LIMIT_RPM=100000) as urls:
        yield urls[0]


@pytest.fixture
def live_key(transactional_db):
    """A fresh account, the demo model in the catalog, and the account's key.

    At teardown it waits until the live gateway has written everything for the account: its
    records arrive in a batch up to 0.2 s after the answer, and the test database's flush
    deadlocks with a write still under way (seen in CI, from refused requests' records)."""
    from accounts.services import account_create_with_key
    from gateway.services import catalog_bootstrap

    catalog_bootstrap()
    user, key = account_create_with_key(email="sdk@example.com")
    yield user, key
    wait_until_written(user)


def wait_until_written(user, quiet=0.5, timeout=10.0):
    """Until the account holds no reservation and its record count has not moved for ``quiet``
    seconds (more than two of the recorder's flush periods)."""
    from usage.models import Reservation, UsageRecord

    def state():
        return (
            Reservation.objects.filter(user=user).exists(),
            UsageRecord.objects.filter(user=user).count(),
        )

    deadline = time.monotonic() + timeout
    last, since = state(), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.05)
        now = state()
        if now != last:
            last, since = now, time.monotonic()
        elif not now[0] and time.monotonic() - since >= quiet:
            return


def wait_for(predicate, timeout=5.0):
    """Records are written in batches: poll briefly for them."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    return predicate()
