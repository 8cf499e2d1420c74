"""One settings module, driven by environment variables.

Every variable has a safe zero-set-up default for development (SQLite in ``var/``,
console email and SMS, in-process cache, secrets generated into ``var/``). With
``DEBUG=false`` the checks in ``portal.checks`` refuse to start on anything that is
only fit for development. Every variable is documented in ``.env.example``.
"""

import os
from pathlib import Path

import environ
from celery.schedules import crontab
from csp.constants import NONE, SELF
from django.utils.translation import gettext_lazy as _

from portal.dev_secrets import dev_secret

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.environ.get("VAR_DIR") or BASE_DIR / "var")
# pytest-xdist runs tests in several processes at once: unless a folder is named, each gets one
# of its own, so that file locks, the embedded broker and the SQLite test database are never
# shared between processes running different tests (servers a test starts inherit the worker's
# variable, and so find the same folder).
if not os.environ.get("VAR_DIR") and (_xdist_worker := os.environ.get("PYTEST_XDIST_WORKER")):
    VAR_DIR = VAR_DIR / f"test-{_xdist_worker}"
for _folder in ("static", "celery/queue", "celery/control", "celery/results"):
    (VAR_DIR / _folder).mkdir(parents=True, exist_ok=True)

env = environ.Env()
environ.Env.read_env(BASE_DIR / ".env", overwrite=False)

DEBUG = env.bool("DEBUG", default=True)
# PRODUCTION is fixed when the settings load; tests flip DEBUG freely, the checks read this.
PRODUCTION = not DEBUG

# Secrets: from the environment; in development generated once into var/ (never committed).
SECRET_KEY = env.str("SECRET_KEY", default="") or dev_secret(VAR_DIR, "SECRET_KEY")
KEY_ENCRYPTION_KEY = env.str("KEY_ENCRYPTION_KEY", default="") or dev_secret(
    VAR_DIR, "KEY_ENCRYPTION_KEY"
)
API_KEY_HMAC_SECRET = env.str("API_KEY_HMAC_SECRET", default="") or dev_secret(
    VAR_DIR, "API_KEY_HMAC_SECRET"
)
SECRETS_FROM_ENV = {
    name: bool(env.str(name, default=""))
    for name in ("SECRET_KEY", "KEY_ENCRYPTION_KEY", "API_KEY_HMAC_SECRET")
}

ALLOWED_HOSTS = env.list(
    "ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]"] if DEBUG else []
)
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])
# The public base URL shown in the docs and examples ("https://api.example.com").
# Empty means "derive it from the request".
PUBLIC_BASE_URL = env.str("PUBLIC_BASE_URL", default="").rstrip("/")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "allauth",
    "allauth.account",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_htmx",
    "portal",
    "audit",
    "accounts",
    "keys",
    "usage",
    "gateway",
    "docs",
    "playground",
    "staff",
    "alerts",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.locale.LocaleMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "observability.logging.request_user_middleware",
    "audit.middleware.security_context_middleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "csp.middleware.CSPMiddleware",
    "allauth.account.middleware.AccountMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
]

ROOT_URLCONF = "portal.urls"
ASGI_APPLICATION = "portal.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.template.context_processors.i18n",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "portal.context_processors.platform",
            ],
        },
    },
]

# --- Database ---------------------------------------------------------------------------
# Empty values (as in a copied .env.example) mean the defaults, for these URLs too.
DATABASES = {
    "default": env.db_url_config(
        env.str("DATABASE_URL", default="") or f"sqlite:///{VAR_DIR / 'db.sqlite3'}"
    ),
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    DATABASES["default"]["OPTIONS"] = {
        # WAL lets the web server, the worker and beat share the file without "database is locked".
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        "transaction_mode": "IMMEDIATE",
        "timeout": 20,
    }
    # A file, not memory: tests start real servers and workers that must see the same data.
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / "test-db.sqlite3")}
else:
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
    DATABASES["default"].setdefault("OPTIONS", {}).setdefault(
        "connect_timeout", env.int("DATABASE_CONNECT_TIMEOUT_SECONDS", default=5)
    )
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Server limits, database connections under ASGI, key rotation -------------------------
# One place for every limit of the web server: portal.serve passes them to uvicorn (every
# launcher goes through it) and portal.server enforces the two uvicorn lacks.
# Connections and requests in flight per worker process; past it, an immediate 503.
WEB_LIMIT_CONCURRENCY = env.int("WEB_LIMIT_CONCURRENCY", default=1000)
# Connections the kernel queues for a worker before accepting them.
WEB_BACKLOG = env.int("WEB_BACKLOG", default=2048)
# An idle keep-alive connection is closed after this long.
WEB_KEEP_ALIVE_SECONDS = env.int("WEB_KEEP_ALIVE_SECONDS", default=5)
# A request head (request line and headers) larger than this gets 431; one not complete this
# long after its first byte (slowloris) is closed.
WEB_MAX_HEADER_BYTES = env.int("WEB_MAX_HEADER_BYTES", default=64 * 1024)
WEB_HEADER_TIMEOUT_SECONDS = env.float("WEB_HEADER_TIMEOUT_SECONDS", default=10.0)
# Portal (non-gateway) request bodies: a declared larger one gets 413 before a byte of it is
# read (portal.asgi); Django keeps what it accepts in memory, never in a temporary file.
PORTAL_MAX_BODY_BYTES = env.int("PORTAL_MAX_BODY_BYTES", default=1024 * 1024)
DATA_UPLOAD_MAX_MEMORY_SIZE = PORTAL_MAX_BODY_BYTES
FILE_UPLOAD_MAX_MEMORY_SIZE = PORTAL_MAX_BODY_BYTES
# Django's PostgreSQL connections. Under ASGI each request runs in a thread of its own, so a
# persistent connection (CONN_MAX_AGE > 0) outlives its thread and stays open, unreachable:
# 30 /healthz requests left 29 connections. So: one connection per request, closed when it
# ends (CONN_MAX_AGE=0), and at most PORTAL_MAX_CONCURRENCY Django requests at once per worker
# process (portal.asgi; more wait up to PORTAL_QUEUE_TIMEOUT_SECONDS, then 503), which bounds
# Django's threads and connections together. A fresh connection per request also means none
# broken by an outage is ever reused, and each is bounded by the connect timeout.
PORTAL_MAX_CONCURRENCY = env.int("PORTAL_MAX_CONCURRENCY", default=16)
PORTAL_QUEUE_TIMEOUT_SECONDS = env.float("PORTAL_QUEUE_TIMEOUT_SECONDS", default=10.0)
# Optional instead: psycopg's pool through Django (connections reused; at most this many per
# process). Off by default: measured, it bounds connections as well but a pooled connection on
# a stalled network hangs a request past every timeout (the pool's check has none), and the
# pool reconnects with a growing back-off after an outage.
DATABASE_POOL_MAX_SIZE = env.int("DATABASE_POOL_MAX_SIZE", default=0)
# Empty (as in a copied .env.example) means the connect timeout.
DATABASE_POOL_TIMEOUT_SECONDS = float(
    env.str("DATABASE_POOL_TIMEOUT_SECONDS", default="")
    or env.int("DATABASE_CONNECT_TIMEOUT_SECONDS", default=5)
)
DATABASE_POOL_MAX_IDLE_SECONDS = env.float("DATABASE_POOL_MAX_IDLE_SECONDS", default=60.0)
if DATABASES["default"]["ENGINE"] != "django.db.backends.sqlite3":
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    if DATABASE_POOL_MAX_SIZE > 0:
        # With CONN_HEALTH_CHECKS (above) Django has the pool check each connection it hands
        # out, so one that broke while idle in the pool is replaced, not given to a request.
        DATABASES["default"]["OPTIONS"]["pool"] = {
            "min_size": 0,
            "max_size": DATABASE_POOL_MAX_SIZE,
            "timeout": DATABASE_POOL_TIMEOUT_SECONDS,
            "max_idle": DATABASE_POOL_MAX_IDLE_SECONDS,
        }
# Earlier KEY_ENCRYPTION_KEYs, comma-separated: secrets stored under them still decrypt
# after a rotation, until `manage.py reencrypt_keys` has moved them to the current key.
KEY_ENCRYPTION_OLD_KEYS = env.list("KEY_ENCRYPTION_OLD_KEYS", default=[])

# --- Cache (and, through it, allauth's rate limits) --------------------------------------
REDIS_URL = env.str("REDIS_URL", default="")
# Everything this deployment keeps in Redis is under this prefix (cache, rate-limit windows).
CACHE_KEY_PREFIX = env.str("CACHE_KEY_PREFIX", default="portal")
if REDIS_URL:
    CACHES = {
        "default": {
            # Django's RedisCache, failing open while Redis is down (sign-in must not 500).
            "BACKEND": "accounts.cache.FailOpenRedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": CACHE_KEY_PREFIX,
            "OPTIONS": {"socket_connect_timeout": 2, "socket_timeout": 2},
        }
    }
else:
    # In-process only: fine for one process (make run), documented as such.
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

# --- Auth -------------------------------------------------------------------------------
AUTH_USER_MODEL = "accounts.User"
AUTHENTICATION_BACKENDS = [
    "django.contrib.auth.backends.ModelBackend",
    "allauth.account.auth_backends.AuthenticationBackend",
]
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "account_login"
LOGIN_REDIRECT_URL = "/keys/"
LOGOUT_REDIRECT_URL = "/"

# --- Accounts: django-allauth, sign-up and sign-in by a 6-digit code (phone or email) ----
# How it fits together: the sign-in form asks only for a phone number or an email address
# and sends a code (no password). Sign-up creates the account (accounts.services, with its
# `default` key) and then, because ACCOUNT_LOGIN_BY_CODE_REQUIRED is on, the first sign-in
# sends a code to the new address; entering it marks that phone or email verified.
# Why not ACCOUNT_EMAIL_VERIFICATION_BY_CODE_ENABLED: allauth ties it to "mandatory" email
# verification, which in turn demands an email on every sign-up, and a mainland account
# signs up with a phone only. The sign-in code does the same job for both kinds of address.
# Staff sign in like everyone else, by code: /admin/login/ sends them to the sign-in page
# (allauth's secure_admin_login, accounts.admin), so the admin has the same rate limits and
# no password to guess. Staff can add two-factor authentication (TOTP and recovery codes).
ACCOUNT_ADAPTER = "accounts.adapter.AccountAdapter"
ACCOUNT_FORMS = {
    "login": "accounts.forms.LoginForm",
    "signup": "accounts.forms.SignupForm",
    "confirm_login_code": "accounts.forms.ConfirmLoginCodeForm",
}
ACCOUNT_USER_MODEL_USERNAME_FIELD = None
ACCOUNT_LOGIN_METHODS = {"email", "phone"}
# Both optional here; accounts.forms.SignupForm requires exactly one. allauth warns
# (account.W001) because neither is marked required: that is the point, so it is silenced.
ACCOUNT_SIGNUP_FIELDS = ["phone", "email"]
SILENCED_SYSTEM_CHECKS = ["account.W001"]
ACCOUNT_UNIQUE_EMAIL = True
ACCOUNT_EMAIL_VERIFICATION = "none"
# allauth's separate phone-verification step stays off: a number is verified by the sign-in
# code sent to it, and an unverified number (say, one an operator typed in) must not stop
# its owner from signing in by email.
ACCOUNT_PHONE_VERIFICATION_ENABLED = False
ACCOUNT_LOGIN_BY_CODE_ENABLED = True
ACCOUNT_LOGIN_BY_CODE_REQUIRED = True
ACCOUNT_LOGIN_BY_CODE_TIMEOUT = env.int("LOGIN_CODE_TIMEOUT_SECONDS", default=300)
ACCOUNT_PHONE_VERIFICATION_TIMEOUT = ACCOUNT_LOGIN_BY_CODE_TIMEOUT
ACCOUNT_LOGIN_BY_CODE_MAX_ATTEMPTS = env.int("LOGIN_CODE_MAX_ATTEMPTS", default=5)
ACCOUNT_PHONE_VERIFICATION_MAX_ATTEMPTS = ACCOUNT_LOGIN_BY_CODE_MAX_ATTEMPTS
ACCOUNT_LOGIN_BY_CODE_SUPPORTS_RESEND = 3  # new codes per sign-in attempt
ALLAUTH_USER_CODE_FORMAT = {"numeric": True, "length": 6, "dashed": False}
# Unknown and known addresses get the same page and the same wording.
ACCOUNT_PREVENT_ENUMERATION = True
ACCOUNT_SESSION_REMEMBER = True
ACCOUNT_EMAIL_SUBJECT_PREFIX = ""
# On the shared cache (Redis when REDIS_URL is set), so every process counts together.
# "key" is the phone number or email address; "resend_login_code" and "add_identifier"
# are ours (accounts.views).
ACCOUNT_RATE_LIMITS = {
    "login": "30/m/ip",
    "signup": "20/m/ip",
    "request_login_code": "20/m/ip,5/15m/key",
    "resend_login_code": "1/60s/key,10/h/ip",
    "add_identifier": "1/60s/key,10/h/user",
    "verify_phone": "1/60s/key,3/m/ip",
    # Every path that sends a code (sign-in, sign-up, resend, adding a phone or email) also
    # takes one of these (accounts.codes.code_send_allowed), and one "send_sms_code" more
    # for a phone number: a text costs money, so SMS pumping meets the tightest limits.
    "send_code": env.str("CODE_SEND_RATE_LIMIT", default="10/h/ip,40/d/ip,5/h/key,10/d/key"),
    "send_sms_code": env.str("SMS_SEND_RATE_LIMIT", default="5/h/ip,20/d/ip,3/h/key,6/d/key"),
}
# Daily budgets for verification texts, counted in the database (accounts.codes): overall,
# per country ("CN=5000,US=200"; ISO 3166 codes) and for every country not listed. Once one
# is spent no more texts go there that day and staff (and ADMINS) get one email about it.
SMS_DAILY_BUDGET = env.int("SMS_DAILY_BUDGET", default=2000)
SMS_COUNTRY_DAILY_BUDGETS = {
    country.strip().upper(): int(budget)
    for country, budget in env.dict("SMS_COUNTRY_DAILY_BUDGETS", default={"CN": "2000"}).items()
}
SMS_OTHER_COUNTRY_DAILY_BUDGET = env.int("SMS_OTHER_COUNTRY_DAILY_BUDGET", default=100)
# Proof of work before any code is sent (accounts.challenge): the browser spends about
# 2**bits SHA-256 hashes (18 ≈ a second on a phone). 0 switches it off.
CODE_CHALLENGE_BITS = env.int("CODE_CHALLENGE_BITS", default=0)
CODE_CHALLENGE_MAX_AGE_SECONDS = env.int("CODE_CHALLENGE_MAX_AGE_SECONDS", default=600)

# Codes are sent on a thread pool of the web process, off the request path, and a request
# that sends one takes at least CODE_REQUEST_MIN_SECONDS: together they make a known address
# and an unknown one answer alike in time too (accounts.delivery). Both on in production.
# Empty (as in a copied .env.example) means the default.
CODE_DELIVERY_BACKGROUND = (
    env.bool("CODE_DELIVERY_BACKGROUND")
    if env.str("CODE_DELIVERY_BACKGROUND", default="")
    else PRODUCTION
)
CODE_REQUEST_MIN_SECONDS = float(
    env.str("CODE_REQUEST_MIN_SECONDS", default="") or (0.25 if PRODUCTION else 0.0)
)

# Two-factor authentication (allauth.mfa): an authenticator app (TOTP) plus recovery codes;
# offered to staff on the Account page. With STAFF_REQUIRE_MFA a staff member without it is
# sent to set it up before /admin/ or /review/ opens (accounts.mfa). The app and middleware
# are added here so that everything about sign-in stays in this block.
INSTALLED_APPS = [*INSTALLED_APPS, "allauth.mfa"]
MIDDLEWARE = [*MIDDLEWARE, "accounts.mfa.staff_mfa_middleware"]
MFA_ADAPTER = "accounts.mfa.MfaAdapter"
MFA_SUPPORTED_TYPES = ["totp", "recovery_codes"]
# Codes-only accounts verify their address by signing in; a phone-only staff member has no
# email to verify and must still be able to turn 2FA on.
MFA_ALLOW_UNVERIFIED_EMAIL = True
STAFF_REQUIRE_MFA = env.bool("STAFF_REQUIRE_MFA", default=False)

# --- i18n -------------------------------------------------------------------------------
LANGUAGE_CODE = "en"
LANGUAGES = [("en", _("English")), ("zh-hans", _("Simplified Chinese"))]
LOCALE_PATHS = [BASE_DIR / "locale"]
# Number grouping for zh-hans as Chinese consoles write it (131,072), like the Usage page.
FORMAT_MODULE_PATH = ["portal.formats"]
TIME_ZONE = env.str("TIME_ZONE", default="UTC")
USE_I18N = True
USE_TZ = True

# --- Static files -----------------------------------------------------------------------
STATIC_URL = "/static/"
# An empty value (as in a copied .env.example) means the default too.
STATIC_ROOT = Path(env.str("STATIC_ROOT", default="") or VAR_DIR / "static")
STATICFILES_DIRS = [BASE_DIR / "static"]
# Development serves straight from the source folders; production from collected, hashed files.
WHITENOISE_USE_FINDERS = DEBUG
WHITENOISE_AUTOREFRESH = DEBUG
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"
        if PRODUCTION
        else "django.contrib.staticfiles.storage.StaticFilesStorage"
    },
}

# --- Security headers -------------------------------------------------------------------
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
SECURE_CROSS_ORIGIN_OPENER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
SESSION_COOKIE_HTTPONLY = True
CSRF_COOKIE_HTTPONLY = False  # htmx reads it from the cookie-less meta tag; see base.html
SESSION_COOKIE_SECURE = env.bool("SESSION_COOKIE_SECURE", default=PRODUCTION)
CSRF_COOKIE_SECURE = env.bool("CSRF_COOKIE_SECURE", default=PRODUCTION)
SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=PRODUCTION)
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=31536000 if PRODUCTION else 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", default=PRODUCTION)
SECURE_HSTS_PRELOAD = env.bool("SECURE_HSTS_PRELOAD", default=False)
if env.bool("BEHIND_TLS_PROXY", default=False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
# /healthz is probed over plain HTTP by load balancers and container health checks, and
# /metrics is scraped over the internal network.
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^metrics$"]

CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": [SELF],
        "script-src": [SELF],
        "style-src": [SELF],
        "img-src": [SELF, "data:"],
        "connect-src": [SELF],
        "font-src": [SELF],
        "object-src": [NONE],
        "base-uri": [SELF],
        "form-action": [SELF],
        "frame-ancestors": [NONE],
    }
}

# --- Email and SMS ----------------------------------------------------------------------
EMAIL_CONFIG = env.email_url_config(env.str("EMAIL_URL", default="") or "consolemail://")
vars().update(EMAIL_CONFIG)
DEFAULT_FROM_EMAIL = env.str("DEFAULT_FROM_EMAIL", default="no-reply@localhost")
SERVER_EMAIL = DEFAULT_FROM_EMAIL
SMS_BACKEND = env.str("SMS_BACKEND", default="console")
SMS_TIMEOUT_SECONDS = env.float("SMS_TIMEOUT_SECONDS", default=10.0)
SMS_ALIYUN_ACCESS_KEY_ID = env.str("SMS_ALIYUN_ACCESS_KEY_ID", default="")
SMS_ALIYUN_ACCESS_KEY_SECRET = env.str("SMS_ALIYUN_ACCESS_KEY_SECRET", default="")
SMS_ALIYUN_SIGN_NAME = env.str("SMS_ALIYUN_SIGN_NAME", default="")
SMS_ALIYUN_TEMPLATE_CODE = env.str("SMS_ALIYUN_TEMPLATE_CODE", default="")
SMS_ALIYUN_ENDPOINT = env.str("SMS_ALIYUN_ENDPOINT", default="dysmsapi.aliyuncs.com")
SMS_TENCENT_SECRET_ID = env.str("SMS_TENCENT_SECRET_ID", default="")
SMS_TENCENT_SECRET_KEY = env.str("SMS_TENCENT_SECRET_KEY", default="")
SMS_TENCENT_SDK_APP_ID = env.str("SMS_TENCENT_SDK_APP_ID", default="")
SMS_TENCENT_SIGN_NAME = env.str("SMS_TENCENT_SIGN_NAME", default="")
SMS_TENCENT_TEMPLATE_ID = env.str("SMS_TENCENT_TEMPLATE_ID", default="")
SMS_TENCENT_REGION = env.str("SMS_TENCENT_REGION", default="ap-guangzhou")
SMS_TENCENT_ENDPOINT = env.str("SMS_TENCENT_ENDPOINT", default="sms.tencentcloudapi.com")
SMS_TWILIO_ACCOUNT_SID = env.str("SMS_TWILIO_ACCOUNT_SID", default="")
SMS_TWILIO_AUTH_TOKEN = env.str("SMS_TWILIO_AUTH_TOKEN", default="")
SMS_TWILIO_FROM = env.str("SMS_TWILIO_FROM", default="")
SMS_TWILIO_API_BASE_URL = env.str("SMS_TWILIO_API_BASE_URL", default="")
# Quota alerts by SMS: Aliyun and Tencent send only approved templates, so each needs its own
# notice template (parameters: percent, limit); left empty, alerts go by email and webhook only.
SMS_ALIYUN_NOTICE_TEMPLATE_CODE = env.str("SMS_ALIYUN_NOTICE_TEMPLATE_CODE", default="")
SMS_TENCENT_NOTICE_TEMPLATE_ID = env.str("SMS_TENCENT_NOTICE_TEMPLATE_ID", default="")

# --- Product ----------------------------------------------------------------------------
PLATFORM_NAME = env.str("PLATFORM_NAME", default="Model API Platform")
SUPPORT_EMAIL = env.str("SUPPORT_EMAIL", default="support@example.com")
SUPPORT_PHONE = env.str("SUPPORT_PHONE", default="")

DAILY_FREE_QUOTA = env.int("DAILY_FREE_QUOTA", default=500_000)
INCREASED_DAILY_QUOTA = env.int("INCREASED_DAILY_QUOTA", default=5_000_000)
QUOTA_TIMEZONE = env.str("QUOTA_TIMEZONE", default="Asia/Shanghai")
USAGE_RETENTION_DAYS = env.int("USAGE_RETENTION_DAYS", default=90)
# How long the security log (sign-ins, key and quota changes) keeps an entry.
SECURITY_LOG_RETENTION_DAYS = env.int("SECURITY_LOG_RETENTION_DAYS", default=365)
# A reservation this old belongs to a request that died in flight; the sweeper releases it.
RESERVATION_STALE_SECONDS = env.int("RESERVATION_STALE_SECONDS", default=900)
# Quota alerts' webhooks (alerts.webhooks): how long one attempt may take, how many attempts
# before giving up (with backoff between them), and whether private, loopback and link-local
# addresses may be called (only for a receiver on the operator's own network).
ALERT_WEBHOOK_TIMEOUT_SECONDS = env.float("ALERT_WEBHOOK_TIMEOUT_SECONDS", default=5.0)
ALERT_WEBHOOK_MAX_ATTEMPTS = env.int("ALERT_WEBHOOK_MAX_ATTEMPTS", default=5)
ALERT_WEBHOOK_ALLOW_PRIVATE = env.bool("ALERT_WEBHOOK_ALLOW_PRIVATE", default=False)
# Staff get a daily digest of quota applications waiting longer than this.
QUOTA_APPLICATION_DIGEST_AFTER_HOURS = env.int("QUOTA_APPLICATION_DIGEST_AFTER_HOURS", default=24)
# What an input token the upstream read from its prompt cache counts against the quota, from
# 0 (free) to 1 (in full, as any input token). Checked by usage.checks.
CACHED_INPUT_TOKEN_WEIGHT = env.float("CACHED_INPUT_TOKEN_WEIGHT", default=1.0)
RATE_LIMIT_RPM = env.int("RATE_LIMIT_RPM", default=60)
RATE_LIMIT_TPM = env.int("RATE_LIMIT_TPM", default=1_000_000)
MAX_KEYS_PER_ACCOUNT = env.int("MAX_KEYS_PER_ACCOUNT", default=10)

UPSTREAM_BASE_URL = env.str("UPSTREAM_BASE_URL", default="")
UPSTREAM_API_KEY = env.str("UPSTREAM_API_KEY", default="")
UPSTREAM_MODEL = env.str("UPSTREAM_MODEL", default="")
UPSTREAM_CONNECT_TIMEOUT_SECONDS = env.float("UPSTREAM_CONNECT_TIMEOUT_SECONDS", default=10.0)
UPSTREAM_READ_TIMEOUT_SECONDS = env.float("UPSTREAM_READ_TIMEOUT_SECONDS", default=300.0)
DEMO_UPSTREAM_URL = env.str("DEMO_UPSTREAM_URL", default="http://127.0.0.1:8100/v1")
# Upstream pools (gateway/serving/routing.py): endpoints tried per request when one fails before
# the client received a byte, and no new attempt after this many seconds from the first.
GATEWAY_UPSTREAM_ATTEMPTS = env.int("GATEWAY_UPSTREAM_ATTEMPTS", default=3)
GATEWAY_UPSTREAM_FAILOVER_SECONDS = env.float("GATEWAY_UPSTREAM_FAILOVER_SECONDS", default=30.0)
# Passive health, per process: this many failures in a row eject an endpoint for
# GATEWAY_UPSTREAM_EJECT_SECONDS, doubled at each ejection in a row up to the maximum.
GATEWAY_UPSTREAM_EJECT_FAILURES = env.int("GATEWAY_UPSTREAM_EJECT_FAILURES", default=3)
GATEWAY_UPSTREAM_EJECT_SECONDS = env.float("GATEWAY_UPSTREAM_EJECT_SECONDS", default=10.0)
GATEWAY_UPSTREAM_EJECT_MAX_SECONDS = env.float("GATEWAY_UPSTREAM_EJECT_MAX_SECONDS", default=300.0)
# A model whose token counter is its server's /tokenize (gateway/serving/counting.py): each call
# is bounded by this, and a server that failed is not asked again for the retry interval.
GATEWAY_TOKENIZE_TIMEOUT_SECONDS = env.float("GATEWAY_TOKENIZE_TIMEOUT_SECONDS", default=1.0)
GATEWAY_TOKENIZE_RETRY_SECONDS = env.int("GATEWAY_TOKENIZE_RETRY_SECONDS", default=60)
# An endpoint's max_concurrency is per process. A request that finds every endpoint of its model
# at its cap waits in the model's queue (this many places per process; 0: refused at once) for
# at most this long, accounts taking turns, then gets 503 (Anthropic: 529).
GATEWAY_UPSTREAM_QUEUE_MAX = env.int("GATEWAY_UPSTREAM_QUEUE_MAX", default=100)
GATEWAY_UPSTREAM_QUEUE_WAIT_SECONDS = env.float("GATEWAY_UPSTREAM_QUEUE_WAIT_SECONDS", default=20.0)
# Active health: every this many seconds each gateway process asks each endpoint of its catalog
# for its model list (GET {base_url}/models); 0 turns it off.
GATEWAY_UPSTREAM_PROBE_SECONDS = env.float("GATEWAY_UPSTREAM_PROBE_SECONDS", default=0.0)
GATEWAY_MAX_BODY_BYTES = env.int("GATEWAY_MAX_BODY_BYTES", default=10 * 1024 * 1024)
# A gateway step that needs the database (key lookup, catalog, quota reservation) gives up after
# this long and answers 503, so a stalled database cannot hang every client.
GATEWAY_DATABASE_TIMEOUT_SECONDS = env.float("GATEWAY_DATABASE_TIMEOUT_SECONDS", default=5.0)
# Anthropic streams send a `ping` event after this long without an upstream chunk.
GATEWAY_STREAM_PING_SECONDS = env.float("GATEWAY_STREAM_PING_SECONDS", default=10.0)
# PostgreSQL connections per gateway worker process. The gateway borrows one per statement (not
# per request), so a handful serves many in-flight calls; mind max_connections x workers.
GATEWAY_DB_POOL_SIZE = env.int("GATEWAY_DB_POOL_SIZE", default=10)
# Long requests and abuse (gateway/checks.py checks how they fit together). A request's upstream
# call (a stream, or a non-streamed answer) ends after GATEWAY_STREAM_MAX_SECONDS with an error
# in the client's dialect and is charged what was delivered; with GATEWAY_SETTLE_RETRY_SECONDS
# (how long a settlement is retried while the database is away) it must fit well inside
# RESERVATION_STALE_SECONDS, so that the sweeper never releases a request still alive.
GATEWAY_STREAM_MAX_SECONDS = env.float("GATEWAY_STREAM_MAX_SECONDS", default=600.0)
GATEWAY_SETTLE_RETRY_SECONDS = env.float("GATEWAY_SETTLE_RETRY_SECONDS", default=120.0)
# Each process renews the leases of its live reservations this often (one statement for all).
GATEWAY_RESERVATION_LEASE_SECONDS = env.float("GATEWAY_RESERVATION_LEASE_SECONDS", default=120.0)
# A key's concurrent-request slot (Redis) is renewed by its process while the request runs; a
# process that dies without giving its slots back frees them after this long.
GATEWAY_CONCURRENCY_LEASE_SECONDS = env.float("GATEWAY_CONCURRENCY_LEASE_SECONDS", default=30.0)
# Bytes of request bodies one process reads and parses at once; beyond it 503 + Retry-After.
GATEWAY_BODY_BUDGET_BYTES = env.int("GATEWAY_BODY_BUDGET_BYTES", default=32 * 1024 * 1024)
# Failed API key checks (401) per client address per minute, across processes (Redis).
GATEWAY_AUTH_FAILURES_PER_MINUTE = env.int("GATEWAY_AUTH_FAILURES_PER_MINUTE", default=30)

METRICS_ENABLED = env.bool("METRICS_ENABLED", default=False)
# Protect /metrics: a bearer token the scraper sends, and/or the client addresses allowed.
METRICS_TOKEN = env.str("METRICS_TOKEN", default="")
METRICS_ALLOWED_IPS = env.list("METRICS_ALLOWED_IPS", default=[])
# Error reporting to Sentry (or any Sentry-protocol server); off when unset.
SENTRY_DSN = env.str("SENTRY_DSN", default="")
SENTRY_ENVIRONMENT = env.str("SENTRY_ENVIRONMENT", default="production" if PRODUCTION else "dev")
SENTRY_TRACES_SAMPLE_RATE = env.float("SENTRY_TRACES_SAMPLE_RATE", default=0.0)

# --- REST API ---------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["rest_framework.authentication.SessionAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.PageNumberPagination",
    "PAGE_SIZE": 50,
}
SPECTACULAR_SETTINGS = {
    "TITLE": f"{PLATFORM_NAME} portal API",
    "DESCRIPTION": "Manage API keys and read usage. Browser session authentication.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
}

# --- Celery -----------------------------------------------------------------------------
CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default="") or REDIS_URL or "portalfs://"
CELERY_BROKER_TRANSPORT_OPTIONS = (
    {
        "data_folder_in": str(VAR_DIR / "celery" / "queue"),
        "data_folder_out": str(VAR_DIR / "celery" / "queue"),
        "control_folder": str(VAR_DIR / "celery" / "control"),
    }
    if CELERY_BROKER_URL.startswith("portalfs")
    else {}
)
CELERY_RESULT_BACKEND = env.str("CELERY_RESULT_BACKEND", default="") or (
    REDIS_URL or f"file://{VAR_DIR / 'celery' / 'results'}"
)
CELERY_TASK_IGNORE_RESULT = True
CELERY_RESULT_EXPIRES = 3600
CELERY_TIMEZONE = "Asia/Shanghai"
CELERY_ENABLE_UTC = True
CELERY_TASK_ACKS_LATE = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# Several deployments (or test runs) may share one broker: each names its own queue.
CELERY_TASK_DEFAULT_QUEUE = env.str("CELERY_DEFAULT_QUEUE", default="celery")
# Static on purpose: the reset time is policy, not data (see DESIGN.md).
CELERY_BEAT_SCHEDULE: dict = {
    # Closes the quota day that just ended; enforcement does not depend on it running on time.
    "usage-daily-reset": {"task": "usage.tasks.daily_reset", "schedule": crontab(hour=0, minute=0)},
    # Daily partitions of the usage records, kept a week ahead (the reset does it too).
    "usage-partitions-maintain": {
        "task": "usage.tasks.partitions_maintain",
        "schedule": crontab(minute=17),
    },
    "usage-reservations-sweep": {
        "task": "usage.tasks.reservations_sweep",
        "schedule": crontab(minute="*/5"),
    },
    "audit-security-log-prune": {
        "task": "audit.tasks.security_log_prune",
        "schedule": crontab(hour=0, minute=30),
    },
    # Alerts are queued as they are detected; this catches any whose task was lost.
    "alerts-deliver-pending": {
        "task": "alerts.tasks.alerts_deliver_pending",
        "schedule": crontab(minute="*/10"),
    },
    "alerts-quota-application-digest": {
        "task": "alerts.tasks.quota_application_digest",
        "schedule": crontab(hour=9, minute=0),
    },
}
CELERY_BEAT_SCHEDULE_FILENAME = str(VAR_DIR / "celery" / "beat-schedule")

# --- Logging ----------------------------------------------------------------------------
LOG_LEVEL = env.str("LOG_LEVEL", default="INFO")
# json: one JSON object per line (production default); plain: readable lines (development).
# Both mask anything shaped like an API key (observability.logging).
LOG_FORMAT = env.str("LOG_FORMAT", default="") or ("json" if PRODUCTION else "plain")
# One line per HTTP request from observability.logging.RequestContextMiddleware (uvicorn's own
# access log is switched off in production: ours carries the request id, account and key prefix).
ACCESS_LOG = env.bool("ACCESS_LOG", default=True)
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"()": "observability.logging.PlainFormatter"},
        "json": {"()": "observability.logging.JsonFormatter"},
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": "json" if LOG_FORMAT == "json" else "plain",
        }
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        # Replaces Django's default handlers (a raw console printer with DEBUG, admin e-mails):
        # everything goes through ours, which mask keys.
        "django": {"handlers": [], "level": LOG_LEVEL, "propagate": True},
        "django.db.backends": {"level": "INFO"},
        # uvicorn set up its own handlers before Django loaded; route them through ours.
        "uvicorn": {"handlers": ["console"], "level": LOG_LEVEL, "propagate": False},
        "uvicorn.access": {"handlers": [], "level": "WARNING", "propagate": False},
    },
}
if LOG_FORMAT == "json":
    # Keep Celery from replacing the root handler with its own plain format.
    CELERY_WORKER_HIJACK_ROOT_LOGGER = False

if SENTRY_DSN:
    # Imported only when configured, so that nothing depends on sentry-sdk being installed.
    from portal.sentry import sentry_init

    sentry_init(
        dsn=SENTRY_DSN,
        environment=SENTRY_ENVIRONMENT,
        traces_sample_rate=SENTRY_TRACES_SAMPLE_RATE,
    )
