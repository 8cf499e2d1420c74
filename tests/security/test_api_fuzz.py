"""Schemathesis against the portal REST API's own OpenAPI schema, signed in as a test user:
no 500s and no answer that breaks the schema (status codes, content types, bodies).

In-process through Django's WSGI application, on the test database. The number of examples
per operation is bounded (``SCHEMATHESIS_MAX_EXAMPLES``, default 25) so that the whole run
takes a minute or two; raise it locally to dig deeper.
"""

from __future__ import annotations

import os

import pytest
import schemathesis
from django.core.signals import request_finished, request_started
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections
from django.middleware.csrf import _get_new_csrf_string
from django.test import Client
from hypothesis import HealthCheck, assume, settings
from schemathesis.specs.openapi.checks import (
    ignored_auth,
    negative_data_rejection,
    positive_data_acceptance,
)

pytestmark = pytest.mark.slow

MAX_EXAMPLES = int(os.environ.get("SCHEMATHESIS_MAX_EXAMPLES", "25"))
# Every check runs (server errors, status codes, content types, headers, response bodies
# against the schema) except three that judge something else:
# * ignored_auth strips the credentials it knows from the schema and expects a refusal; ours
#   are the browser session passed in from outside, which it cannot strip, so it would only
#   see them accepted. Anonymous refusal has its own tests (tests/keys, tests/usage).
# * positive_data_acceptance / negative_data_rejection test how strictly requests are
#   validated, not whether answers are right: business rules the schema cannot express (a
#   range of at most 400 days, a blank name sent as a multipart field reading as missing) make
#   a 400 correct for a "schema-valid" request, and lenient parsing of a repeated
#   ``page_size`` is not a violation of the answer's contract.
EXCLUDED_CHECKS = [ignored_auth, positive_data_acceptance, negative_data_rejection]


# Generating the schema needs no database; loading it at import lets schemathesis make one
# test per operation.
schema = schemathesis.openapi.from_wsgi("/api/schema/", get_wsgi_application())


@pytest.fixture(autouse=True)
def _keep_the_test_connection(db):
    # The WSGI handler closes the database connection after each request; inside a test that
    # connection holds the test's transaction (Django's own test client does the same).
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    try:
        yield
    finally:
        request_started.connect(close_old_connections)
        request_finished.connect(close_old_connections)


@pytest.fixture
def signed_in(alice, bob):
    """Headers of alice's browser session (with its CSRF token), and bob as someone to spy on."""
    from tests.usage.conftest import record_request

    record_request(alice, input_tokens=3)
    record_request(bob, input_tokens=4)
    client = Client()
    client.force_login(alice)
    session = client.cookies["sessionid"].value
    token = _get_new_csrf_string()
    return {
        "headers": {"X-CSRFToken": token},
        "cookies": {"sessionid": session, "csrftoken": token},
    }


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    # The session is made once per operation and shared by its examples on purpose.
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
        HealthCheck.function_scoped_fixture,
    ],
)
def test_the_rest_api_never_fails_and_keeps_to_its_schema(case, signed_in):
    # JSON bodies only: the portal's clients send JSON. DRF also parses form encodings by
    # default, and answers a torn multipart body with a 415 that no schema lists.
    assume(case.media_type in (None, "application/json"))
    case.call_and_validate(excluded_checks=EXCLUDED_CHECKS, **signed_in)


# --- what the fuzzer found, pinned -----------------------------------------------------------
def test_the_daily_answer_has_the_fields_its_schema_names(alice_client):
    answer = alice_client.get("/api/v1/usage/daily/").json()
    documented = alice_client.get("/api/schema/?format=json").json()["components"]["schemas"]
    assert (
        set(answer)
        == set(documented["Daily"]["properties"])
        == {
            "from",
            "to",
            "key",
            "model",
            "days",
        }
    )


def test_a_forged_cursor_starts_from_the_newest_page_instead_of_a_404(alice_client, alice):
    from tests.usage.conftest import record_request

    record_request(alice, input_tokens=3)
    response = alice_client.get("/api/v1/usage/requests/", {"cursor": "not-a-cursor"})
    assert response.status_code == 200
    assert len(response.json()["results"]) == 1


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("/api/v1/usage/requests/", {"key": "a\x00b"}),
        ("/api/v1/usage/requests/", {"model": "a\x00b"}),
        ("/usage/", {"key": "a\x00b", "model": "a\x00b"}),
        ("/usage/export/", {"kind": "requests", "key": "a\x00b", "model": "\x00"}),
        ("/usage/export/", {"kind": "daily", "key": "a\x00b", "model": "\x00"}),
    ],
)
def test_a_nul_character_in_a_filter_matches_nothing_instead_of_failing(
    alice_client, alice, path, params
):
    # PostgreSQL refuses text with NUL in a query: this was a 500 there (found by the fuzzer).
    from tests.usage.conftest import record_request
    from usage.quota import quota_day

    record_request(alice, input_tokens=3)
    today = quota_day().isoformat()
    response = alice_client.get(path, {**params, "start": today, "end": today})
    assert response.status_code == 200
    if path.startswith("/api/"):
        assert response.json()["results"] == []
