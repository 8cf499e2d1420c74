"""A key's own controls at the gateway (in-process, demo upstream): expiry, IP allow-list,
allowed models, the daily cap and controls changed while a process holds the key cached, in
both dialects and on every endpoint that takes a model."""

import datetime as dt

import pytest
import time_machine
from django.utils import timezone

from gateway.models import Model
from keys.models import ApiKey
from keys.services import api_key_set_controls
from usage.models import UsageRecord

ANTHROPIC = {"anthropic-version": "2023-06-01"}
HELLO = [{"role": "user", "content": "Hello!"}]
MODEL = "LongCat-Flash-Chat"
OTHER = "other-chat"
EMBED = "demo-embed"


@pytest.fixture
def models(demo_model):
    Model.objects.create(name=OTHER, upstream_kind=Model.UpstreamKind.DEMO)
    Model.objects.create(
        name=EMBED, upstream_kind=Model.UpstreamKind.DEMO, kind=Model.Kind.EMBEDDING
    )


def key_of(user) -> ApiKey:
    return ApiKey.objects.get(user=user)


def set_controls(user, **changes):
    api_key_set_controls(api_key=key_of(user), **changes)


def openai_chat(gw, key, model=MODEL, **kw):
    return gw.chat(key, {"model": model, "messages": HELLO, "max_tokens": 10}, **kw)


def anthropic_chat(gw, key, model=MODEL, **kw):
    payload = {"model": model, "messages": HELLO, "max_tokens": 10}
    return gw.chat(key, payload, path="/anthropic/v1/messages", headers=ANTHROPIC, **kw)


def openai_error(result):
    return result.json()["error"]


def anthropic_error(result):
    body = result.json()
    assert body["type"] == "error"
    return body["error"]


# --- expiry and IP allow-list --------------------------------------------------------------
def test_it_refuses_an_expired_key_with_401_key_expired_in_both_dialects(gw, alice_key):
    user, key = alice_key
    set_controls(user, expires_at=timezone.now() + dt.timedelta(hours=1))
    assert openai_chat(gw, key).status == 200
    with time_machine.travel(timezone.now() + dt.timedelta(hours=2)):
        result = openai_chat(gw, key)
        assert result.status == 401
        assert openai_error(result)["code"] == "key_expired"
        assert openai_error(result)["type"] == "authentication_error"
        assert "expired at" in openai_error(result)["message"]
        assert result.headers["x-should-retry"] == "false"
        result = anthropic_chat(gw, key)
        assert result.status == 401
        assert anthropic_error(result)["type"] == "authentication_error"
        assert "expired at" in anthropic_error(result)["message"]
        assert gw.request("GET", "/openai/v1/models", headers=_bearer(key)).status == 401


def test_an_expired_key_is_not_counted_as_a_guessing_attempt(gw, alice_key, settings):
    user, key = alice_key
    settings.GATEWAY_AUTH_FAILURES_PER_MINUTE = 2
    ApiKey.objects.filter(user=user).update(expires_at=timezone.now() - dt.timedelta(seconds=1))
    codes = {openai_error(openai_chat(gw, key))["code"] for _ in range(4)}
    assert codes == {"key_expired"}


def test_it_refuses_an_address_outside_the_allow_list_naming_it(gw, alice_key):
    user, key = alice_key
    set_controls(user, allowed_ips=["203.0.113.0/24"])
    result = openai_chat(gw, key)
    assert result.status == 403
    assert openai_error(result)["code"] == "ip_not_allowed"
    assert openai_error(result)["type"] == "permission_error"
    assert "127.0.0.1" in openai_error(result)["message"]
    result = anthropic_chat(gw, key)
    assert result.status == 403
    assert anthropic_error(result)["type"] == "permission_error"
    assert "127.0.0.1" in anthropic_error(result)["message"]


def test_it_judges_the_address_uvicorn_derived_never_a_forwarded_header(gw, alice_key):
    user, key = alice_key
    set_controls(user, allowed_ips=["203.0.113.0/24"])
    result = openai_chat(gw, key, headers={"x-forwarded-for": "203.0.113.5"})
    assert result.status == 403
    assert openai_error(result)["code"] == "ip_not_allowed"


def test_it_admits_an_address_inside_the_allow_list(gw, alice_key):
    user, key = alice_key
    set_controls(user, allowed_ips=["127.0.0.0/8"])
    assert openai_chat(gw, key).status == 200
    assert anthropic_chat(gw, key).status == 200


def test_a_loosened_control_applies_at_once_though_the_key_is_cached(gw, alice_key):
    user, key = alice_key
    set_controls(user, allowed_ips=["203.0.113.0/24"])
    assert openai_chat(gw, key).status == 403  # the refusing row is cached now
    set_controls(user, allowed_ips=["203.0.113.0/24", "127.0.0.1"])
    assert openai_chat(gw, key).status == 200


# --- allowed models --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("path", "payload", "headers"),
    [
        ("/openai/v1/chat/completions", {"messages": HELLO, "max_tokens": 5}, {}),
        ("/openai/v1/responses", {"input": "Hello!", "max_output_tokens": 5}, {}),
        ("/anthropic/v1/messages", {"messages": HELLO, "max_tokens": 5}, ANTHROPIC),
        ("/anthropic/v1/messages/count_tokens", {"messages": HELLO}, ANTHROPIC),
    ],
    ids=["chat", "responses", "messages", "count_tokens"],
)
def test_it_refuses_a_model_outside_the_keys_allowed_models(
    gw, alice_key, models, path, payload, headers
):
    user, key = alice_key
    set_controls(user, allowed_models=[OTHER])
    result = gw.chat(key, {"model": MODEL, **payload}, path=path, headers=headers)
    assert result.status == 403, result.body
    error = result.json()["error"]
    assert MODEL in error["message"]
    if path.startswith("/anthropic"):
        assert error["type"] == "permission_error"
    else:
        assert (error["code"], error["type"]) == ("model_not_allowed", "permission_error")
    # An unknown model is still a 404, whatever the key may use.
    result = gw.chat(key, {"model": "no-such-model", **payload}, path=path, headers=headers)
    assert result.status == 404
    assert gw.chat(key, {"model": OTHER, **payload}, path=path, headers=headers).status == 200


def test_it_refuses_an_embedding_model_outside_the_allowed_models(gw, alice_key, models):
    user, key = alice_key
    set_controls(user, allowed_models=[MODEL])
    result = gw.chat(key, {"model": EMBED, "input": "hi"}, path="/openai/v1/embeddings")
    assert result.status == 403
    assert openai_error(result)["code"] == "model_not_allowed"


def _bearer(key):
    return {"authorization": f"Bearer {key}", "anthropic-version": "2023-06-01"}


@pytest.mark.parametrize("prefix", ["/openai", "/anthropic"])
def test_the_model_list_shows_only_the_keys_allowed_models(gw, alice_key, models, prefix):
    user, key = alice_key
    everything = gw.request("GET", f"{prefix}/v1/models", headers=_bearer(key)).json()["data"]
    assert {m["id"] for m in everything} == {MODEL, OTHER, EMBED}
    set_controls(user, allowed_models=[OTHER])
    listed = gw.request("GET", f"{prefix}/v1/models", headers=_bearer(key)).json()["data"]
    assert [m["id"] for m in listed] == [OTHER]
    assert gw.request("GET", f"{prefix}/v1/models/{OTHER}", headers=_bearer(key)).status == 200
    assert gw.request("GET", f"{prefix}/v1/models/{MODEL}", headers=_bearer(key)).status == 404


def test_a_loosened_model_list_applies_at_once_though_the_key_is_cached(gw, alice_key, models):
    user, key = alice_key
    set_controls(user, allowed_models=[OTHER])
    assert openai_chat(gw, key).status == 403  # the refusing row is cached now
    set_controls(user, allowed_models=[OTHER, MODEL])
    assert openai_chat(gw, key).status == 200


# --- controls changed while cached, and the daily cap -----------------------------------------
def test_a_tightened_control_applies_on_the_next_request_though_the_key_is_cached(
    gw, alice_key, models
):
    user, key = alice_key
    assert openai_chat(gw, key).status == 200  # cached: every model allowed
    set_controls(user, allowed_models=[OTHER])
    result = openai_chat(gw, key)
    assert result.status == 403
    assert openai_error(result)["code"] == "model_not_allowed"
    assert openai_chat(gw, key, model=OTHER).status == 200
    gw.flush()
    assert list(UsageRecord.objects.order_by("created_at").values_list("status_code", flat=True))[
        1:
    ] == [403, 200]


def test_a_cap_set_while_the_key_is_cached_applies_on_the_next_request(gw, alice_key):
    user, key = alice_key
    assert openai_chat(gw, key).status == 200
    set_controls(user, daily_token_cap=5)
    result = openai_chat(gw, key)
    assert result.status == 429
    assert openai_error(result)["code"] == "key_daily_limit_exceeded"


def test_it_answers_429_key_daily_limit_exceeded_with_the_time_to_reset(gw, alice_key):
    user, key = alice_key
    set_controls(user, daily_token_cap=5)
    with time_machine.travel(dt.datetime(2026, 3, 1, 14, 0, 0, tzinfo=dt.UTC), tick=False):
        result = openai_chat(gw, key)
        assert result.status == 429
        error = openai_error(result)
        assert (error["code"], error["type"]) == ("key_daily_limit_exceeded", "insufficient_quota")
        assert error["retry_after"] == 2 * 3600  # 22:00 in Beijing: two hours to midnight
        assert "5 tokens" in error["message"] and "2 h 0 min" in error["message"]
        assert result.headers["retry-after"] == str(2 * 3600)
        assert result.headers["x-should-retry"] == "false"
        result = anthropic_chat(gw, key)
        assert result.status == 429
        assert anthropic_error(result)["type"] == "rate_limit_error"
        assert result.headers["retry-after"] == str(2 * 3600)
        assert result.headers["x-should-retry"] == "false"


def test_the_accounts_quota_speaks_first_when_both_are_spent(gw, alice_key):
    from django.contrib.auth import get_user_model

    user, key = alice_key
    set_controls(user, daily_token_cap=5)
    get_user_model().objects.filter(pk=user.pk).update(daily_quota=5)
    assert openai_error(openai_chat(gw, key))["code"] == "insufficient_quota"
