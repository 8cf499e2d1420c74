"""KEY_ENCRYPTION_KEY rotation: old keys keep decrypting, `reencrypt_keys` moves every stored
secret to the new key, and secrets no configured key decrypts are reported clearly (a system
check error, one log line and a 503 from the gateway) instead of breaking every call."""

import pytest
from cryptography.fernet import Fernet
from django.core.management import call_command
from django.core.management.base import CommandError

from gateway.models import Model
from gateway.services import model_set_upstream_key
from keys import crypto
from keys.models import ApiKey
from portal.checks import stored_secrets_check

OLD = Fernet.generate_key().decode()
NEW = Fernet.generate_key().decode()
LOST = Fernet.generate_key().decode()


def test_it_decrypts_a_secret_stored_under_an_old_key(settings):
    settings.KEY_ENCRYPTION_KEY = OLD
    token = crypto.encrypt_secret("sk-upstream")
    settings.KEY_ENCRYPTION_KEY = NEW
    with pytest.raises(crypto.UndecryptableSecret):
        crypto.decrypt_secret(token)
    settings.KEY_ENCRYPTION_OLD_KEYS = [OLD]
    assert crypto.decrypt_secret(token) == "sk-upstream"
    assert not crypto.under_current_key(token)
    assert crypto.under_current_key(crypto.encrypt_secret("x"))


@pytest.fixture
def stored_under_old(db, settings):
    """alice's key and an upstream key, both stored under OLD; then OLD is rotated to NEW."""
    from accounts.services import account_create_with_key

    settings.KEY_ENCRYPTION_KEY = OLD
    settings.KEY_ENCRYPTION_OLD_KEYS = []
    _user, raw = account_create_with_key(email="rotation@example.com")
    model = Model.objects.create(name="rotated-model", upstream_base_url="http://up.invalid/v1")
    model.endpoints.create(base_url="http://up.invalid/v1")
    # On the model's own (pre-pool) field and on its endpoint: two stored upstream keys.
    model_set_upstream_key(model=model, raw_key="sk-upstream-secret")
    settings.KEY_ENCRYPTION_KEY = NEW
    return raw, model


def test_reencrypt_keys_moves_every_stored_secret_to_the_current_key_once(
    stored_under_old, settings, capsys
):
    raw, model = stored_under_old
    settings.KEY_ENCRYPTION_OLD_KEYS = [OLD]
    call_command("reencrypt_keys", "--dry-run")
    assert "would move 1" in capsys.readouterr().out
    assert not crypto.under_current_key(ApiKey.objects.get(prefix=raw[:12]).encrypted)

    call_command("reencrypt_keys")
    out = capsys.readouterr().out
    assert "API keys: moved 1" in out and "model upstream keys: moved 2" in out
    settings.KEY_ENCRYPTION_OLD_KEYS = []  # the old key can go now
    assert crypto.decrypt_secret(ApiKey.objects.get(prefix=raw[:12]).encrypted) == raw
    model.refresh_from_db()
    assert crypto.decrypt_secret(model.upstream_key_encrypted) == "sk-upstream-secret"
    endpoint = model.endpoints.get()
    assert crypto.decrypt_secret(endpoint.api_key_encrypted) == "sk-upstream-secret"

    stored = list(ApiKey.objects.values_list("encrypted", flat=True))
    call_command("reencrypt_keys")  # a second run changes nothing
    assert "moved 0" in capsys.readouterr().out
    assert list(ApiKey.objects.values_list("encrypted", flat=True)) == stored


def test_reencrypt_keys_fails_clearly_and_changes_nothing_it_cannot_decrypt(
    stored_under_old, settings
):
    settings.KEY_ENCRYPTION_OLD_KEYS = [LOST]
    before = list(ApiKey.objects.values_list("encrypted", flat=True))
    with pytest.raises(CommandError, match="KEY_ENCRYPTION_OLD_KEYS"):
        call_command("reencrypt_keys")
    assert list(ApiKey.objects.values_list("encrypted", flat=True)) == before


def test_the_system_check_names_secrets_no_configured_key_decrypts(stored_under_old, settings):
    [error] = stored_secrets_check(None, databases=["default"])
    assert error.id == "portal.E009"
    assert "1 API key(s)" in error.msg and "1 model upstream key(s)" in error.msg
    assert "reencrypt_keys" in error.hint
    settings.KEY_ENCRYPTION_OLD_KEYS = [OLD]
    assert stored_secrets_check(None, databases=["default"]) == []
    # Without --database the check stays off (it reads every stored secret).
    settings.KEY_ENCRYPTION_OLD_KEYS = []
    assert stored_secrets_check(None) == []


def test_the_owner_is_told_clearly_when_a_key_cannot_be_revealed(stored_under_old, client):
    raw, _model = stored_under_old
    key = ApiKey.objects.get(prefix=raw[:12])
    client.force_login(key.user)
    url = f"/keys/{key.public_id}/reveal/"

    page = client.post(url)
    assert page.status_code == 503
    assert "It still works for API calls" in page.content.decode()
    assert raw not in page.content.decode()

    answer = client.post(url, headers={"accept": "application/json"})
    assert answer.status_code == 503
    assert set(answer.json()) == {"error"} and "regenerate it" in answer.json()["error"]
