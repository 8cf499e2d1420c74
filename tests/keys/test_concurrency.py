"""Concurrent writers: the key limit and name uniqueness hold across connections."""

import threading

import pytest
from django.core.exceptions import ValidationError
from django.db import connection

from keys import services
from keys.models import ApiKey

pytestmark = pytest.mark.django_db(transaction=True)

WORKERS = 14


def _race(names, user):
    """Run api_key_create for every name at once, each in its own thread and connection."""
    barrier = threading.Barrier(len(names))
    outcomes = []
    lock = threading.Lock()

    def worker(name):
        try:
            barrier.wait(timeout=10)
            services.api_key_create(user=user, name=name)
            outcome = "created"
        except ValidationError as error:
            outcome = "limit" if "at most" in error.messages[0] else "name"
        except Exception as error:  # reported by the assertions below
            outcome = f"error: {type(error).__name__}: {error}"
        finally:
            connection.close()
        with lock:
            outcomes.append(outcome)

    threads = [threading.Thread(target=worker, args=(name,)) for name in names]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return outcomes


def test_concurrent_creates_never_pass_the_key_limit(alice, settings):
    assert settings.MAX_KEYS_PER_ACCOUNT == 10
    outcomes = _race([f"key {n}" for n in range(WORKERS)], alice)
    assert sorted(outcomes) == sorted(["created"] * 9 + ["limit"] * (WORKERS - 9)), outcomes
    assert ApiKey.objects.filter(user=alice).count() == 10


def test_concurrent_creates_with_one_name_make_one_key(alice):
    outcomes = _race(["laptop"] * 6, alice)
    assert sorted(outcomes) == ["created"] + ["name"] * 5, outcomes
    assert ApiKey.objects.filter(user=alice, name="laptop").count() == 1
