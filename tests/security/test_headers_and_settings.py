"""Security headers and cookie flags as a production process sends them, and the deploy check
clean for a correct production environment. Production settings are fixed when the settings
module loads (DEBUG=false), so both run in a subprocess."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys

import pytest
from cryptography.fernet import Fernet

from tests.acceptance.live import BASE_DIR, database_url, server_env

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def production_env(**extra) -> dict:
    """What an operator sets, following .env.example: real-looking secrets, hosts, URLs."""
    env = server_env()
    env.update(
        {
            "DEBUG": "false",
            "SECRET_KEY": secrets.token_urlsafe(50),
            "KEY_ENCRYPTION_KEY": Fernet.generate_key().decode(),
            "API_KEY_HMAC_SECRET": secrets.token_urlsafe(32),
            "ALLOWED_HOSTS": "api.example.com",
            "CSRF_TRUSTED_ORIGINS": "https://api.example.com",
            "PUBLIC_BASE_URL": "https://api.example.com",
            "DATABASE_URL": database_url(),
            "SMS_BACKEND": "twilio",
            "SMS_TWILIO_ACCOUNT_SID": "AC" + "0" * 32,
            "SMS_TWILIO_AUTH_TOKEN": secrets.token_hex(16),
            "SMS_TWILIO_FROM": "+15005550006",
            "EMAIL_URL": "smtp+tls://mailer:secret@smtp.example.com:587",
            "DEFAULT_FROM_EMAIL": "no-reply@example.com",
        }
    )
    env.pop("LOG_FORMAT", None)
    env.update(extra)
    return env


def test_check_deploy_is_clean_for_a_correct_production_environment():
    # The check parses these URLs and connects to neither.
    env = production_env(
        DATABASE_URL="postgres://portal:a-db-password@db.internal:5432/portal",
        REDIS_URL="redis://redis.internal:6379/0",
    )
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy"],
        cwd=BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    found = {line.split(")")[0].split("(")[-1] for line in output.splitlines() if ": (" in line}
    # security.W021: HSTS preload is a one-way commitment to the browsers' preload list; an
    # operator opts in with SECURE_HSTS_PRELOAD=true, the project cannot decide it for them.
    assert found <= {"security.W021"}, output


_PROBE = """
import json, os, django
django.setup()
from django.conf import settings
# Hashed static names need collectstatic (tests/deploy covers it); they do not touch headers.
plain = "django.contrib.staticfiles.storage.StaticFilesStorage"
settings.STORAGES["staticfiles"]["BACKEND"] = plain
settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"  # no real SMTP here
from django.test import Client
from accounts.services import account_create
client = Client()
def cookie(name):
    morsel = client.cookies[name]
    return {"secure": bool(morsel["secure"]), "httponly": bool(morsel["httponly"]),
            "samesite": morsel["samesite"]}
http = client.get("/", HTTP_HOST="api.example.com")
page = client.get("/accounts/login/", secure=True, HTTP_HOST="api.example.com")
user = account_create(email="headers@example.com")
# Asking for a sign-in code starts a session: the response sets the session cookie.
client.post("/accounts/login/", {"region": "OTHER", "login": "headers@example.com"},
            secure=True, HTTP_HOST="api.example.com")
session = cookie("sessionid")
client.force_login(user)
keys = client.get("/keys/", secure=True, HTTP_HOST="api.example.com")
print(json.dumps({
    "http_status": http.status_code, "http_location": http.get("Location"),
    "headers": {k: v for k, v in page.headers.items()},
    "keys_headers": {k: v for k, v in keys.headers.items()},
    "session": session, "csrf": cookie("csrftoken"),
}))
"""


def test_a_production_process_sends_the_security_headers_and_secure_cookies():
    result = subprocess.run(
        [sys.executable, "-c", _PROBE],
        cwd=BASE_DIR,
        env=production_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    seen = json.loads(result.stdout.strip().splitlines()[-1])

    # Plain HTTP is sent to HTTPS.
    assert seen["http_status"] == 301
    assert seen["http_location"].startswith("https://api.example.com/")
    for headers in (seen["headers"], seen["keys_headers"]):
        hsts = headers["Strict-Transport-Security"]
        assert "max-age=31536000" in hsts and "includeSubDomains" in hsts
        csp = headers["Content-Security-Policy"]
        for directive in (
            "default-src 'self'",
            "script-src 'self'",
            "object-src 'none'",
            "frame-ancestors 'none'",
            "base-uri 'self'",
            "form-action 'self'",
        ):
            assert directive in csp
        assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
        assert headers["X-Frame-Options"] == "DENY"
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert headers["Referrer-Policy"] == "same-origin"
        assert headers["Cross-Origin-Opener-Policy"] == "same-origin"
    # The keys page shows secrets on request: never cached.
    assert "no-store" in seen["keys_headers"].get("Cache-Control", "") or "private" in (
        seen["keys_headers"].get("Cache-Control", "")
    )
    assert seen["session"] == {"secure": True, "httponly": True, "samesite": "Lax"}
    assert seen["csrf"]["secure"] is True
