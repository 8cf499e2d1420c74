import datetime as dt
import uuid

import pytest
from django.core.exceptions import ValidationError
from django.http import Http404

from keys import crypto, selectors, services
from keys.models import ApiKey
from tests.keys.gateway_view import gateway_answer
from usage.ledger import KeyRow

pytestmark = pytest.mark.django_db


# --- create and names -------------------------------------------------------------------
def test_it_creates_the_default_key_with_every_account(alice):
    assert list(ApiKey.objects.filter(user=alice).values_list("name", flat=True)) == ["default"]


def test_it_stores_only_prefix_digest_and_encrypted_copy(alice):
    key, raw = services.api_key_create(user=alice, name="laptop")
    assert raw.startswith("sk-") and len(raw) >= 43
    stored = ApiKey.objects.get(pk=key.pk)
    assert stored.prefix == raw[: crypto.PREFIX_LENGTH]
    assert stored.digest == crypto.key_digest(raw)
    assert raw not in stored.encrypted and raw not in stored.digest
    assert crypto.decrypt_secret(stored.encrypted) == raw


def test_it_trims_the_name(alice):
    key, _raw = services.api_key_create(user=alice, name="  ci runner \t")
    assert key.name == "ci runner"


@pytest.mark.parametrize("name", ["", "   ", None])
def test_it_requires_a_name(alice, name):
    with pytest.raises(ValidationError) as excinfo:
        services.api_key_create(user=alice, name=name)
    assert "name" in excinfo.value.message_dict


def test_it_accepts_64_characters_and_refuses_65(alice):
    key, _raw = services.api_key_create(user=alice, name="x" * 64)
    assert key.name == "x" * 64
    with pytest.raises(ValidationError) as excinfo:
        services.api_key_create(user=alice, name="y" * 65)
    assert "at most 64" in excinfo.value.message_dict["name"][0]


def test_it_refuses_control_characters_in_names(alice):
    with pytest.raises(ValidationError):
        services.api_key_create(user=alice, name="two\nlines")


def test_it_refuses_a_duplicate_name_in_the_same_account_ignoring_case(alice):
    services.api_key_create(user=alice, name="laptop")
    for name in ("laptop", " laptop ", "LAPTOP", "Default"):
        with pytest.raises(ValidationError) as excinfo:
            services.api_key_create(user=alice, name=name)
        assert "already have a key" in excinfo.value.message_dict["name"][0]
    assert ApiKey.objects.filter(user=alice).count() == 2


def test_it_allows_the_same_name_in_another_account(alice, charlie):
    services.api_key_create(user=alice, name="laptop")
    key, _raw = services.api_key_create(user=charlie, name="laptop")
    assert key.user == charlie


def test_it_refuses_the_eleventh_key_with_a_clear_message(alice, settings):
    assert settings.MAX_KEYS_PER_ACCOUNT == 10
    for n in range(9):
        services.api_key_create(user=alice, name=f"key {n}")
    assert ApiKey.objects.filter(user=alice).count() == 10
    with pytest.raises(ValidationError) as excinfo:
        services.api_key_create(user=alice, name="one too many")
    assert "at most 10 keys" in excinfo.value.messages[0]
    assert ApiKey.objects.filter(user=alice).count() == 10


def test_deleting_a_key_makes_room_again(alice, alice_key, settings):
    settings.MAX_KEYS_PER_ACCOUNT = 1
    with pytest.raises(ValidationError):
        services.api_key_create(user=alice, name="second")
    services.api_key_delete(api_key=alice_key)
    key, _raw = services.api_key_create(user=alice, name="second")
    assert key.name == "second"


def test_it_retries_on_a_prefix_collision(alice, alice_key, monkeypatch):
    taken = services.api_key_reveal(api_key=alice_key)
    fresh = iter([taken, "sk-" + "A" * 43])
    monkeypatch.setattr(crypto, "generate_secret", lambda: next(fresh))
    key, raw = services.api_key_create(user=alice, name="second")
    assert raw == "sk-" + "A" * 43
    assert key.prefix == raw[: crypto.PREFIX_LENGTH]


# --- rename, enable/disable, regenerate, delete, reveal --------------------------------
def test_it_renames_a_key_with_the_same_rules(alice, alice_key):
    services.api_key_create(user=alice, name="laptop")
    services.api_key_rename(api_key=alice_key, name="  server  ")
    alice_key.refresh_from_db()
    assert alice_key.name == "server"
    with pytest.raises(ValidationError):
        services.api_key_rename(api_key=alice_key, name="Laptop")
    with pytest.raises(ValidationError):
        services.api_key_rename(api_key=alice_key, name="")
    alice_key.refresh_from_db()
    assert alice_key.name == "server"


def test_it_allows_renaming_to_a_different_case_of_the_own_name(alice_key):
    services.api_key_rename(api_key=alice_key, name="Default")
    alice_key.refresh_from_db()
    assert alice_key.name == "Default"


def test_regenerate_kills_the_old_secret_and_keeps_name_and_id(alice_key):
    old_secret = services.api_key_reveal(api_key=alice_key)
    old = ApiKey.objects.values("prefix", "digest", "encrypted").get(pk=alice_key.pk)
    assert gateway_answer(old_secret).key_id == alice_key.pk

    key, new_secret = services.api_key_regenerate(api_key=alice_key)

    assert new_secret != old_secret
    assert gateway_answer(old_secret) == "invalid_api_key"
    assert gateway_answer(new_secret).key_id == alice_key.pk
    fresh = ApiKey.objects.get(pk=alice_key.pk)
    assert (fresh.name, fresh.public_id) == ("default", key.public_id)
    assert fresh.prefix != old["prefix"]
    assert fresh.digest != old["digest"]
    assert fresh.encrypted != old["encrypted"]
    assert services.api_key_reveal(api_key=fresh) == new_secret


def test_disable_and_enable_change_what_the_gateway_answers(alice_key, alice_secret):
    assert gateway_answer(alice_secret).key_id == alice_key.pk
    services.api_key_set_active(api_key=alice_key, is_active=False)
    # 403, not 401: the key is known, and its owner is told that it is disabled.
    assert gateway_answer(alice_secret) == "api_key_disabled"
    services.api_key_set_active(api_key=alice_key, is_active=True)
    assert gateway_answer(alice_secret).key_id == alice_key.pk


def test_delete_makes_the_secret_unknown_at_once(alice_key, alice_secret):
    assert gateway_answer(alice_secret).key_id == alice_key.pk
    services.api_key_delete(api_key=alice_key)
    assert gateway_answer(alice_secret) == "invalid_api_key"
    assert not ApiKey.objects.filter(pk=alice_key.pk).exists()


def test_deactivating_an_account_disables_all_its_keys(alice, alice_key, alice_secret):
    other, other_secret = services.api_key_create(user=alice, name="other")
    assert gateway_answer(other_secret).key_id == other.pk
    assert services.api_keys_deactivate_for_user(user=alice) == 2
    assert gateway_answer(alice_secret) == "api_key_disabled"
    assert gateway_answer(other_secret) == "api_key_disabled"


def test_reveal_returns_the_real_secret(alice):
    key, raw = services.api_key_create(user=alice, name="laptop")
    assert services.api_key_reveal(api_key=key) == raw


def test_rate_limit_overrides_reach_the_gateway(alice_key, alice_secret):
    # None: the gateway applies the platform default (see gateway.serving.pipeline).
    before = gateway_answer(alice_secret)
    assert (before.rate_limit_rpm, before.rate_limit_tpm) == (None, None)
    services.api_key_set_rate_limits(api_key=alice_key, rate_limit_rpm=5, rate_limit_tpm=1000)
    result = gateway_answer(alice_secret)
    assert (result.rate_limit_rpm, result.rate_limit_tpm) == (5, 1000)


# --- selectors --------------------------------------------------------------------------
def test_it_lists_only_the_users_keys_oldest_first(alice, charlie):
    services.api_key_create(user=alice, name="second")
    assert [k.name for k in selectors.api_keys_for_user(alice)] == ["default", "second"]
    assert [k.name for k in selectors.api_keys_for_user(charlie)] == ["default"]


def test_a_strangers_key_is_not_found(alice_key, charlie):
    with pytest.raises(Http404):
        selectors.api_key_get_for_user(charlie, alice_key.public_id)
    with pytest.raises(Http404):
        selectors.api_key_get_for_user(charlie, uuid.uuid4())
    with pytest.raises(Http404):
        selectors.api_key_get_for_user(charlie, "not-a-uuid")
    assert selectors.api_key_get_for_user(alice_key.user, str(alice_key.public_id)) == alice_key


# --- what the gateway reads ---------------------------------------------------------------
def test_the_gateway_reads_the_key_and_its_owner(alice, alice_key, alice_secret):
    assert gateway_answer(alice_secret) == KeyRow(
        key_id=alice_key.pk,
        user_id=alice.pk,
        key_name="default",
        digest=crypto.key_digest(alice_secret),
        key_active=True,
        user_active=True,
        rate_limit_rpm=None,
        rate_limit_tpm=None,
    )


def test_the_gateway_refuses_a_wrong_secret_with_a_known_prefix(alice_key, alice_secret):
    forged = alice_secret[:-4] + ("AAAA" if not alice_secret.endswith("AAAA") else "BBBB")
    assert gateway_answer(forged) == "invalid_api_key"
    # ...while the right one, same prefix, is accepted.
    assert gateway_answer(alice_secret).key_id == alice_key.pk
    assert gateway_answer(forged) == "invalid_api_key"


@pytest.mark.parametrize(
    ("garbage", "code"),
    [
        ("", "missing_api_key"),
        (None, "missing_api_key"),
        ("Bearer", "invalid_api_key"),
        ("sk-", "invalid_api_key"),
        ("sk-short", "invalid_api_key"),
        ("pk-" + "a" * 43, "invalid_api_key"),
        ("x" * 5000, "invalid_api_key"),
        ("sk-" + "a" * 300, "invalid_api_key"),
    ],
)
def test_the_gateway_refuses_garbage_without_a_query(garbage, code, django_assert_num_queries):
    with django_assert_num_queries(0):
        assert gateway_answer(garbage) == code


def test_the_gateway_refuses_an_unknown_key(db):
    assert gateway_answer(crypto.generate_secret()) == "invalid_api_key"


def test_every_change_reaches_what_the_gateway_reads(alice_key, alice_secret):
    services.api_key_rename(api_key=alice_key, name="renamed")
    assert gateway_answer(alice_secret).key_name == "renamed"
    services.api_key_set_active(api_key=alice_key, is_active=False)
    assert gateway_answer(alice_secret) == "api_key_disabled"


def test_deleting_a_key_keeps_its_usage_history(alice, alice_key):
    from usage.models import UsageRecord

    now = dt.datetime(2026, 11, 23, 8, 0, tzinfo=dt.UTC)
    record = UsageRecord.objects.create(
        user=alice,
        api_key=alice_key,
        key_name=alice_key.name,
        model="demo",
        endpoint=UsageRecord.Endpoint.OPENAI_CHAT,
        input_tokens=10,
        output_tokens=5,
        status_code=200,
        day=now.date(),
        created_at=now,
    )
    services.api_key_delete(api_key=alice_key)
    record.refresh_from_db()
    assert (record.api_key_id, record.key_name, record.input_tokens) == (None, "default", 10)
