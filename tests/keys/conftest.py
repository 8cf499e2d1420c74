import pytest
from django.test import Client

from keys import services
from keys.models import ApiKey


@pytest.fixture
def alice_key(alice) -> ApiKey:
    """Alice's automatic ``default`` key."""
    return ApiKey.objects.get(user=alice, name=services.DEFAULT_KEY_NAME)


@pytest.fixture
def alice_secret(alice_key) -> str:
    return services.api_key_reveal(api_key=alice_key)


@pytest.fixture
def charlie_client(charlie):
    client = Client()
    client.force_login(charlie)
    return client


@pytest.fixture
def alice_csrf_client(alice):
    """A client that, like a browser, must send the CSRF token with every POST."""
    client = Client(enforce_csrf_checks=True)
    client.force_login(alice)
    return client
