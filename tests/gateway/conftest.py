import time

import pytest

from tests.gateway.harness import DemoUpstreamThread, GatewayClient


@pytest.fixture(scope="session")
def demo_upstream():
    server = DemoUpstreamThread().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def gateway_settings(settings, demo_upstream):
    settings.DEMO_UPSTREAM_URL = demo_upstream.url
    settings.RATE_LIMIT_RPM = 1000
    settings.RATE_LIMIT_TPM = 10_000_000
    settings.DAILY_FREE_QUOTA = 500_000
    settings.UPSTREAM_BASE_URL = ""
    return settings


@pytest.fixture
def demo_model(transactional_db, gateway_settings):
    """The catalog's default model (a transactional test flushes the migration's row)."""
    from gateway.services import catalog_bootstrap

    return catalog_bootstrap()[0]


@pytest.fixture
def gw(transactional_db, gateway_settings, demo_model):
    """The gateway, in-process, over the demo upstream, on this test's database."""
    client = GatewayClient()
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def alice_key(transactional_db):
    """alice and the secret of her default key."""
    from accounts.services import account_create_with_key

    return account_create_with_key(email="alice@example.com")


@pytest.fixture
def bob_key(transactional_db):
    from accounts.services import account_create_with_key

    return account_create_with_key(phone="+8613800138000", region="CN")


@pytest.fixture
def one_rate_window():
    """Start the test well inside one minute: the rate limiter's windows are whole minutes of
    the real clock (shared with Redis), and a test counting to a limit across a minute's end
    would see the count start over."""
    into_minute = time.time() % 60
    if into_minute > 45:
        time.sleep(60.5 - into_minute)
