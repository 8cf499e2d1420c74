import pytest
from django.test import Client

from keys import services
from keys.models import ApiKey


@pytest.fixture
def alice_key(alice) -> ApiKey:
    """Alice's automatic ``default`` key."""
    return ApiKey.objects.get(user=alice, name=services.DEFAULT_KEY_NAME)


@pytest.fixture
def charlie_client(charlie):
    client = Client()
    client.force_login(charlie)
    return client
