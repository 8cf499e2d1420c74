import json
import os
import subprocess
import sys

import pytest
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.test import override_settings

from portal.checks import production_settings_check

STRONG = "x" * 10 + "AbCdEfGhIjKlMnOpQrStUvWxYz0123456789-_aBcDeFgHiJ"
FERNET = "bWFrZS1hLWZlcm5ldC1rZXktb2YtMzItYnl0ZXMhIT0="

PRODUCTION_OK = {
    "PRODUCTION": True,
    "DEBUG": False,
    "SECRET_KEY": STRONG,
    "KEY_ENCRYPTION_KEY": FERNET,
    "API_KEY_HMAC_SECRET": "h" * 16 + "0123456789abcdef",
    "SECRETS_FROM_ENV": {
        "SECRET_KEY": True,
        "KEY_ENCRYPTION_KEY": True,
        "API_KEY_HMAC_SECRET": True,
    },
    "ALLOWED_HOSTS": ["api.example.com"],
}


def ids(messages):
    return {m.id for m in messages}


def test_it_accepts_a_correct_production_configuration():
    with override_settings(**PRODUCTION_OK):
        errors = [m for m in production_settings_check(None) if m.is_serious()]
    assert errors == []


def test_it_ignores_development_mode():
    with override_settings(PRODUCTION=False, ALLOWED_HOSTS=[]):
        assert production_settings_check(None) == []


@pytest.mark.parametrize(
    ("override", "error_id"),
    [
        (
            {"SECRETS_FROM_ENV": {**PRODUCTION_OK["SECRETS_FROM_ENV"], "SECRET_KEY": False}},
            "portal.E001",
        ),
        ({"SECRET_KEY": "short"}, "portal.E002"),
        ({"SECRET_KEY": "a" * 60}, "portal.E002"),
        ({"SECRET_KEY": "django-insecure-" + STRONG}, "portal.E002"),
        ({"ALLOWED_HOSTS": []}, "portal.E003"),
        ({"ALLOWED_HOSTS": ["*"]}, "portal.E004"),
        ({"KEY_ENCRYPTION_KEY": "not-a-fernet-key"}, "portal.E005"),
        ({"API_KEY_HMAC_SECRET": "short"}, "portal.E006"),
    ],
)
def test_it_refuses_insecure_production_settings(override, error_id):
    with override_settings(**{**PRODUCTION_OK, **override}):
        assert error_id in ids(production_settings_check(None))


def test_the_check_command_fails_on_insecure_production_settings():
    with (
        override_settings(**{**PRODUCTION_OK, "ALLOWED_HOSTS": []}),
        pytest.raises(SystemCheckError),
    ):
        call_command("check")


def _settings_in_subprocess(env_overrides, expression):
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env.update(env_overrides)
    code = (
        "import django, json; django.setup(); from django.conf import settings; "
        f"print(json.dumps({expression}, default=str))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_it_reads_database_url_and_redis_url(tmp_path):
    values = _settings_in_subprocess(
        {
            "DATABASE_URL": "postgres://portal:pw@db.internal:5433/portal",
            "REDIS_URL": "redis://cache.internal:6380/2",
            "VAR_DIR": str(tmp_path),
        },
        "[settings.DATABASES['default']['ENGINE'], settings.DATABASES['default']['HOST'],"
        " settings.DATABASES['default']['PORT'], settings.CACHES['default']['BACKEND'],"
        " settings.CACHES['default']['LOCATION'], settings.CELERY_BROKER_URL]",
    )
    assert values == [
        "django.db.backends.postgresql",
        "db.internal",
        5433,
        "accounts.cache.FailOpenRedisCache",
        "redis://cache.internal:6380/2",
        "redis://cache.internal:6380/2",
    ]


@pytest.mark.slow
def test_it_defaults_to_embedded_services_and_generates_dev_secrets(tmp_path):
    values = _settings_in_subprocess(
        {"VAR_DIR": str(tmp_path)},
        "[settings.DATABASES['default']['ENGINE'], settings.CACHES['default']['BACKEND'],"
        " settings.CELERY_BROKER_URL, settings.SECRET_KEY]",
    )
    assert values[:3] == [
        "django.db.backends.sqlite3",
        "django.core.cache.backends.locmem.LocMemCache",
        "portalfs://",
    ]
    stored = json.loads((tmp_path / "dev-secrets.json").read_text())
    assert stored["SECRET_KEY"] == values[3]
    assert oct((tmp_path / "dev-secrets.json").stat().st_mode & 0o777) == "0o600"
    # A second start reads the same secret instead of generating a new one.
    again = _settings_in_subprocess({"VAR_DIR": str(tmp_path)}, "settings.SECRET_KEY")
    assert again == values[3]


def test_it_warns_that_console_email_prints_codes_in_production():
    console = "django.core.mail.backends.console.EmailBackend"
    with override_settings(**PRODUCTION_OK, EMAIL_BACKEND=console):
        assert "portal.W004" in ids(production_settings_check(None))
    smtp = "django.core.mail.backends.smtp.EmailBackend"
    with override_settings(**PRODUCTION_OK, EMAIL_BACKEND=smtp):
        assert "portal.W004" not in ids(production_settings_check(None))
    with override_settings(PRODUCTION=False, EMAIL_BACKEND=console):
        assert production_settings_check(None) == []


def test_it_refuses_an_old_encryption_key_that_is_not_a_fernet_key():
    with override_settings(**PRODUCTION_OK, KEY_ENCRYPTION_OLD_KEYS=[FERNET, "not-a-key"]):
        messages = [m for m in production_settings_check(None) if m.id == "portal.E008"]
    assert [m.msg for m in messages] == ["KEY_ENCRYPTION_OLD_KEYS entry 2 is not a Fernet key."]
