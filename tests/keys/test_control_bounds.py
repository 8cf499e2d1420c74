"""Bounds on a key's controls: long lists stop at their limit, huge numbers are refused with
a message (not a database error), and the page's minute-precision expiry field leaves a
stored expiry with seconds as it is."""

import datetime as dt
from zoneinfo import ZoneInfo

import pytest
import time_machine
from django.core.exceptions import ValidationError

from keys import services
from keys.controls import (
    DAILY_TOKEN_CAP_MAX,
    MAX_ALLOWED_IPS,
    MAX_ALLOWED_MODELS,
    MAX_CONCURRENT_REQUESTS_MAX,
    allowed_ips_clean,
    allowed_models_clean,
)
from keys.forms import ApiKeyControlsForm
from keys.models import ApiKey, ApiKeyChange

pytestmark = pytest.mark.django_db

UTC = dt.UTC
BEIJING = ZoneInfo("Asia/Shanghai")


class _Counted:
    """An iterable that counts how many entries were taken from it."""

    def __init__(self, values):
        self.values = values
        self.taken = 0

    def __iter__(self):
        for value in self.values:
            self.taken += 1
            yield value


# --- long lists ---------------------------------------------------------------------------
def test_it_stops_reading_addresses_at_the_first_one_past_the_limit():
    entries = _Counted([f"10.{n // 256 % 256}.{n % 256}.1" for n in range(40_000)])
    with pytest.raises(ValidationError) as error:
        allowed_ips_clean(entries)
    assert "At most 50" in str(error.value.message_dict["allowed_ips"])
    assert entries.taken == MAX_ALLOWED_IPS + 1


def test_it_stops_reading_models_at_the_first_one_past_the_limit():
    entries = _Counted([f"model-{n}" for n in range(40_000)])
    with pytest.raises(ValidationError) as error:
        allowed_models_clean(entries)
    assert "At most 50" in str(error.value.message_dict["allowed_models"])
    assert entries.taken == MAX_ALLOWED_MODELS + 1


def test_repeated_entries_count_once_towards_the_limit():
    assert allowed_ips_clean(["203.0.113.7"] * 40_000) == ["203.0.113.7"]
    names = [f"m{n}" for n in range(MAX_ALLOWED_MODELS)]
    assert allowed_models_clean(names * 100) == names


@pytest.mark.parametrize("field", ["allowed_ips", "allowed_models"])
def test_the_form_refuses_a_huge_list_text(field):
    form = ApiKeyControlsForm({field: "203.0.113.7\n" * 40_000}, zone=BEIJING)
    assert not form.is_valid()
    assert "at most" in form.errors[field][0]


@pytest.mark.parametrize("field", ["allowed_ips", "allowed_models"])
def test_the_api_refuses_a_huge_list_before_reading_its_items(alice_client, alice_key, field):
    response = alice_client.patch(
        f"/api/v1/keys/{alice_key.public_id}/",
        {field: [{"not": "a string"}] * 40_000},
        content_type="application/json",
    )
    assert response.status_code == 400
    assert response.json() == {field: ["Ensure this field has no more than 50 elements."]}


# --- huge numbers -------------------------------------------------------------------------
HUGE = [
    ("daily_token_cap", 10**19),
    ("daily_token_cap", DAILY_TOKEN_CAP_MAX + 1),
    ("max_concurrent_requests", 10**10),
    ("max_concurrent_requests", MAX_CONCURRENT_REQUESTS_MAX + 1),
]


@pytest.mark.parametrize(("field", "value"), HUGE)
def test_the_service_refuses_a_huge_number_naming_the_field(alice_key, field, value):
    with pytest.raises(ValidationError) as error:
        services.api_key_set_controls(api_key=alice_key, **{field: value})
    assert "Enter a whole number from 1 to" in error.value.message_dict[field][0]
    assert getattr(ApiKey.objects.get(pk=alice_key.pk), field) is None


@pytest.mark.parametrize(("field", "value"), HUGE)
def test_the_page_refuses_a_huge_number(alice_client, alice_key, field, value):
    response = alice_client.post(f"/keys/{alice_key.public_id}/", {field: str(value)})
    assert response.status_code == 400
    assert "less than or equal to" in response.content.decode()
    response = alice_client.post("/keys/", {"name": "ci", field: str(value)})
    assert response.status_code == 400
    assert not ApiKey.objects.filter(name="ci").exists()


@pytest.mark.parametrize(("field", "value"), HUGE)
def test_the_api_refuses_a_huge_number(alice_client, alice_key, field, value):
    response = alice_client.patch(
        f"/api/v1/keys/{alice_key.public_id}/", {field: value}, content_type="application/json"
    )
    assert response.status_code == 400
    assert "less than or equal to" in response.json()[field][0]
    response = alice_client.post(
        "/api/v1/keys/", {"name": "ci", field: value}, content_type="application/json"
    )
    assert response.status_code == 400
    assert not ApiKey.objects.filter(name="ci").exists()


def test_the_largest_values_are_stored(alice_key):
    """On PostgreSQL too: the bounds fit the columns (bigint, integer)."""
    services.api_key_set_controls(
        api_key=alice_key,
        daily_token_cap=DAILY_TOKEN_CAP_MAX,
        max_concurrent_requests=MAX_CONCURRENT_REQUESTS_MAX,
    )
    stored = ApiKey.objects.get(pk=alice_key.pk)
    assert (stored.daily_token_cap, stored.max_concurrent_requests) == (
        DAILY_TOKEN_CAP_MAX,
        MAX_CONCURRENT_REQUESTS_MAX,
    )


# --- the expiry field's minutes ---------------------------------------------------------------
SET_AT = dt.datetime(2026, 3, 1, 4, 0, tzinfo=UTC)
EXPIRES = dt.datetime(2026, 3, 2, 4, 30, 45, tzinfo=UTC)  # seconds, as the REST API may set


def _resave_unchanged(client, key):
    """Post the key's limits form back exactly as the page shows it."""
    form = ApiKeyControlsForm.for_key(key, zone=BEIJING)
    data = {
        name: field.widget.format_value(form[name].value()) for name, field in form.fields.items()
    }
    return client.post(f"/keys/{key.public_id}/", {k: v or "" for k, v in data.items()})


def test_resaving_an_unchanged_form_keeps_an_expiry_in_the_past(alice_client, alice_key):
    with time_machine.travel(SET_AT, tick=False):
        services.api_key_set_controls(api_key=alice_key, expires_at=EXPIRES)
    with time_machine.travel(EXPIRES + dt.timedelta(seconds=5), tick=False):
        response = _resave_unchanged(alice_client, ApiKey.objects.get(pk=alice_key.pk))
    assert response.status_code == 302
    assert ApiKey.objects.get(pk=alice_key.pk).expires_at == EXPIRES
    assert ApiKeyChange.objects.count() == 1


def test_resaving_an_unchanged_form_records_no_change_of_a_future_expiry(alice_client, alice_key):
    with time_machine.travel(SET_AT, tick=False):
        services.api_key_set_controls(api_key=alice_key, expires_at=EXPIRES)
        response = _resave_unchanged(alice_client, ApiKey.objects.get(pk=alice_key.pk))
    assert response.status_code == 302
    assert ApiKey.objects.get(pk=alice_key.pk).expires_at == EXPIRES
    assert ApiKeyChange.objects.count() == 1


def test_a_changed_minute_is_a_new_expiry(alice_client, alice_key):
    with time_machine.travel(SET_AT, tick=False):
        services.api_key_set_controls(api_key=alice_key, expires_at=EXPIRES)
        response = alice_client.post(
            f"/keys/{alice_key.public_id}/", {"expires_at": "2026-03-02T12:31"}
        )
    assert response.status_code == 302
    assert ApiKey.objects.get(pk=alice_key.pk).expires_at == dt.datetime(
        2026, 3, 2, 4, 31, tzinfo=UTC
    )
    assert ApiKeyChange.objects.count() == 2
