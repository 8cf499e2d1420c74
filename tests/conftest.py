import os
import time

import pytest


def pytest_addoption(parser):
    parser.addoption(
        "--reverse",
        action="store_true",
        help="run the tests in reverse order (CI's second pass: a test that passes only after "
        "another one has run fails in one of the two orders)",
    )


def pytest_collection_modifyitems(config, items):
    if config.getoption("--reverse"):
        items.reverse()
    # Browser tests need Debian's Chromium; skip them with a reason where it is absent
    # (CI installs it, so there they always run).
    if os.path.exists("/usr/bin/chromium"):
        return
    skip = pytest.mark.skip(reason="/usr/bin/chromium is not installed")
    for item in items:
        if "e2e" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _default_language_after_each_test():
    # A request through the test client leaves its language active in the thread: the next
    # test must not see Chinese messages because this one asked for them.
    yield
    from django.utils import translation

    translation.deactivate()


@pytest.fixture(autouse=True, scope="session")
def _celery_tasks_run_in_the_test():
    # Work a service hands to the worker (``.delay()``) runs at once, inside the test, so tests
    # see its effects; the tests in tests/usage/test_beat_and_worker.py run a real worker.
    from portal.celery import app

    app.conf.task_always_eager = True
    app.conf.task_eager_propagates = True
    yield
    app.conf.task_always_eager = False


@pytest.fixture(autouse=True, scope="session")
def _flush_retries_a_deadlock():
    # A transactional test's database is emptied with TRUNCATE after it; a live gateway process
    # still writing that test's last records can deadlock with it on PostgreSQL, which aborts
    # one of the two. The live-key fixture waits for those writes; this retries the flush if
    # another fixture's server was still busy, rather than failing a test that passed.
    from django.db import OperationalError
    from django.db.backends.base.operations import BaseDatabaseOperations

    original = BaseDatabaseOperations.execute_sql_flush

    def execute_sql_flush(self, sql_list):
        for attempt in range(3):
            try:
                return original(self, sql_list)
            except OperationalError as error:
                if "deadlock" not in str(error) or attempt == 2:
                    raise
                time.sleep(0.5)

    BaseDatabaseOperations.execute_sql_flush = execute_sql_flush
    yield
    BaseDatabaseOperations.execute_sql_flush = original


# --- personas: alice owns things, bob is another customer, charlie is a stranger, staff reviews
@pytest.fixture
def alice(db):
    from accounts.services import account_create

    return account_create(email="alice@example.com")


@pytest.fixture
def bob(db):
    from accounts.services import account_create

    return account_create(phone="+8613800138000", region="CN")


@pytest.fixture
def charlie(db):
    from accounts.services import account_create

    return account_create(email="charlie@example.com")


@pytest.fixture
def staff(db):
    from accounts.services import account_create

    return account_create(email="staff@example.com", password="a-staff-password", is_staff=True)


@pytest.fixture
def alice_client(client, alice):
    client.force_login(alice)
    return client


@pytest.fixture
def staff_client(client, staff):
    client.force_login(staff)
    return client


@pytest.fixture
def ledger(transactional_db):
    """The ledger for this database (PostgreSQL's or the ORM's), and a loop to drive it."""
    import asyncio

    from asgiref.sync import sync_to_async
    from django.db import connections

    from usage.ledger import ledger_for_database

    runner = asyncio.Runner()
    store = ledger_for_database()
    runner.run(store.open())
    store.run = runner.run
    try:
        yield store
    finally:
        runner.run(store.close())
        runner.run(sync_to_async(connections.close_all)())
        runner.close()
