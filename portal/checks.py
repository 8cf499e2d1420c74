"""System checks that refuse development-only configuration in production (``DEBUG=false``)."""

from django.conf import settings
from django.core.checks import Error, Tags, Warning, register

WEAK_SECRET_MIN_LENGTH = 50
WEAK_SECRET_MIN_UNIQUE_CHARS = 5


@register(Tags.security, deploy=False)
def production_settings_check(app_configs, **kwargs):
    if not settings.PRODUCTION:
        return []
    errors = []
    for name, from_env in settings.SECRETS_FROM_ENV.items():
        if not from_env:
            errors.append(
                Error(
                    f"{name} is not set in the environment.",
                    hint=f"Set {name}; generated development secrets are refused when DEBUG=false.",
                    id="portal.E001",
                )
            )
    key = settings.SECRET_KEY
    if settings.SECRETS_FROM_ENV.get("SECRET_KEY") and (
        len(key) < WEAK_SECRET_MIN_LENGTH
        or len(set(key)) < WEAK_SECRET_MIN_UNIQUE_CHARS
        or key.startswith("django-insecure-")
    ):
        errors.append(
            Error(
                "SECRET_KEY is weak.",
                hint=f"Use at least {WEAK_SECRET_MIN_LENGTH} random characters.",
                id="portal.E002",
            )
        )
    if not settings.ALLOWED_HOSTS:
        errors.append(Error("ALLOWED_HOSTS is empty.", hint="Set ALLOWED_HOSTS.", id="portal.E003"))
    if "*" in settings.ALLOWED_HOSTS:
        errors.append(
            Error(
                "ALLOWED_HOSTS allows any host.",
                hint="List the host names the portal is served under.",
                id="portal.E004",
            )
        )
    if not _valid_fernet_key(settings.KEY_ENCRYPTION_KEY):
        errors.append(
            Error(
                "KEY_ENCRYPTION_KEY is not a Fernet key.",
                hint="Generate one with: python -c 'from cryptography.fernet import Fernet; "
                "print(Fernet.generate_key().decode())'",
                id="portal.E005",
            )
        )
    if len(settings.API_KEY_HMAC_SECRET) < 32:
        errors.append(
            Error(
                "API_KEY_HMAC_SECRET is shorter than 32 characters.",
                hint="Use at least 32 random characters.",
                id="portal.E006",
            )
        )
    if settings.DATABASES["default"]["ENGINE"].endswith("sqlite3"):
        errors.append(
            Warning(
                "SQLite is the database.",
                hint="Set DATABASE_URL to PostgreSQL for more than one process.",
                id="portal.W001",
            )
        )
    if not settings.REDIS_URL:
        errors.append(
            Warning(
                "REDIS_URL is not set: cache and rate limits are per process.",
                hint="Set REDIS_URL when running more than one server process.",
                id="portal.W002",
            )
        )
    for position, old_key in enumerate(settings.KEY_ENCRYPTION_OLD_KEYS, start=1):
        if not _valid_fernet_key(old_key.strip()):
            errors.append(
                Error(
                    f"KEY_ENCRYPTION_OLD_KEYS entry {position} is not a Fernet key.",
                    hint="List the previous KEY_ENCRYPTION_KEY values, comma-separated.",
                    id="portal.E008",
                )
            )
    if settings.EMAIL_BACKEND in CONSOLE_EMAIL_BACKENDS:
        errors.append(
            Warning(
                "Email is printed to the server's output (EMAIL_URL is unset or console): "
                "sign-in codes sent by email end up in the logs, not in anyone's mailbox.",
                hint="Set EMAIL_URL to your mail server, e.g. "
                "smtp+tls://user:password@smtp.example.com:587.",
                id="portal.W004",
            )
        )
    errors += _metrics_checks()
    return errors


CONSOLE_EMAIL_BACKENDS = {
    "django.core.mail.backends.console.EmailBackend",
    "django.core.mail.backends.dummy.EmailBackend",
}


@register(Tags.database)
def stored_secrets_check(app_configs, databases=None, **kwargs):
    """Every stored secret decrypts with a configured key. Needs the database, so it runs
    with ``check --database default`` (run-prod.sh) and before ``migrate``, not on every
    command."""
    if not databases or "default" not in databases:
        return []
    from django.db import DatabaseError

    from gateway.models import Model, UpstreamEndpoint
    from keys import crypto
    from keys.models import ApiKey

    try:
        stored = [
            (label, token)
            for label, queryset, field in (
                ("API key", ApiKey.objects.all(), "encrypted"),
                ("model upstream key", Model.objects.all(), "upstream_key_encrypted"),
                ("endpoint upstream key", UpstreamEndpoint.objects.all(), "api_key_encrypted"),
            )
            for token in queryset.exclude(**{field: ""}).values_list(field, flat=True).iterator()
        ]
    except DatabaseError:
        return []  # not migrated yet: nothing stored to check
    undecryptable: dict[str, int] = {}
    for label, token in stored:
        try:
            crypto.decrypt_secret(token)
        except crypto.UndecryptableSecret:
            undecryptable[label] = undecryptable.get(label, 0) + 1
    if not undecryptable:
        return []
    counts = ", ".join(f"{count} {label}(s)" for label, count in undecryptable.items())
    return [
        Error(
            f"Stored secrets cannot be decrypted with KEY_ENCRYPTION_KEY or "
            f"KEY_ENCRYPTION_OLD_KEYS: {counts}.",
            hint="KEY_ENCRYPTION_KEY was changed: list the previous key in "
            "KEY_ENCRYPTION_OLD_KEYS, then run manage.py reencrypt_keys.",
            id="portal.E009",
        )
    ]


def _metrics_checks() -> list:
    if not settings.METRICS_ENABLED:
        return []
    import ipaddress

    errors = []
    for item in settings.METRICS_ALLOWED_IPS:
        try:
            ipaddress.ip_network(item.strip(), strict=False)
        except ValueError:
            errors.append(
                Error(
                    f"METRICS_ALLOWED_IPS has an entry that is not an address or network: {item!r}",
                    hint="Use addresses or CIDR networks, e.g. 10.0.0.0/8,127.0.0.1.",
                    id="portal.E007",
                )
            )
    if not settings.METRICS_TOKEN and not settings.METRICS_ALLOWED_IPS:
        errors.append(
            Warning(
                "/metrics is enabled and open to anyone who can reach the server.",
                hint="Set METRICS_TOKEN (scrapers send it as a bearer token) and/or "
                "METRICS_ALLOWED_IPS.",
                id="portal.W003",
            )
        )
    return errors


def _valid_fernet_key(value: str) -> bool:
    from cryptography.fernet import Fernet

    try:
        Fernet(value)
    except (ValueError, TypeError):
        return False
    return True
