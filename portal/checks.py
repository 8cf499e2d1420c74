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
    errors += _metrics_checks()
    return errors


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
