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
    """A fresh account, the demo model in the catalog, and the account's key."""
    from accounts.services import account_create_with_key
    from gateway.services import catalog_bootstrap

    catalog_bootstrap()
    return account_create_with_key(email="sdk@example.com")


def wait_for(predicate, timeout=5.0):
    """Records are written in batches: poll briefly for them."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    return predicate()
