import uuid

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser, BaseUserManager, PermissionsMixin
from django.db import models
from django.db.models import Q
from django.utils import timezone
from django.utils.translation import gettext_lazy as _


class Region(models.TextChoices):
    MAINLAND_CHINA = "CN", _("Mainland China")
    OTHER = "OTHER", _("Outside mainland China")


class UserManager(BaseUserManager):
    use_in_migrations = True

    def create_user(self, email=None, password=None, **extra_fields):
        """Accounts are made by ``accounts.services.account_create``: it adds the default key."""
        from accounts.services import account_create

        return account_create(email=email, password=password, **extra_fields)

    def create_superuser(self, email=None, password=None, **extra_fields):
        extra_fields.setdefault("is_staff", True)
        extra_fields.setdefault("is_superuser", True)
        return self.create_user(email=email, password=password, **extra_fields)


class User(AbstractBaseUser, PermissionsMixin):
    """An account. Identified by an email address, a phone number (E.164), or both."""

    public_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    # Stored lower-cased (see accounts.services.normalize_email); NULL when absent so that
    # the unique index allows many accounts without one.
    email = models.EmailField(_("email address"), unique=True, null=True, blank=True)
    phone = models.CharField(_("phone number"), max_length=20, unique=True, null=True, blank=True)
    # True once the owner has entered a code sent to ``phone``. (Email verification lives in
    # allauth's EmailAddress table.)
    phone_verified = models.BooleanField(_("phone number verified"), default=False)
    region = models.CharField(
        _("region"), max_length=8, choices=Region.choices, default=Region.OTHER
    )
    language = models.CharField(
        _("language"), max_length=10, choices=settings.LANGUAGES, blank=True, default=""
    )
    # NULL means the platform default (settings.DAILY_FREE_QUOTA).
    daily_quota = models.BigIntegerField(_("daily token quota"), null=True, blank=True)
    is_active = models.BooleanField(_("active"), default=True)
    is_staff = models.BooleanField(_("staff"), default=False)
    date_joined = models.DateTimeField(_("date joined"), default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    objects = UserManager()

    USERNAME_FIELD = "email"
    EMAIL_FIELD = "email"
    REQUIRED_FIELDS: list[str] = []

    class Meta:
        verbose_name = _("account")
        verbose_name_plural = _("accounts")
        # New accounts today (the staff overview) and the admin's newest-first list.
        indexes = [models.Index(fields=["date_joined"], name="accounts_user_joined_idx")]
        constraints = [
            models.CheckConstraint(
                condition=Q(email__isnull=False) | Q(phone__isnull=False),
                name="accounts_user_has_email_or_phone",
            ),
        ]

    def __str__(self):
        return self.email or self.phone or str(self.public_id)

    @property
    def identifier(self) -> str:
        return self.email or self.phone or ""


class UseCounter(models.Model):
    """How many times a one-time thing (a sign-in code, a challenge) has been used.

    Counted in the database with a conditional UPDATE, not in the session or the cache: the
    session is read once per request, so parallel requests each saw a fresh count, and the
    cache may be down. A database row is counted atomically by every process, and sign-in
    already needs the database, so the limit can neither be raced nor fail open.
    """

    key = models.CharField(max_length=64, primary_key=True)
    uses = models.PositiveIntegerField(default=0)
    expires_at = models.DateTimeField(db_index=True)

    class Meta:
        verbose_name = _("use counter")
        verbose_name_plural = _("use counters")

    def __str__(self):
        return f"{self.key[:12]}…: {self.uses}"


class SmsBudgetDay(models.Model):
    """Text messages sent on one day, overall (``scope="ALL"``) or to one country ("CN").

    A conditional UPDATE keeps every process under the budget; ``alerted`` makes sure staff
    hear about a spent budget once a day, not once per refused message.
    """

    day = models.DateField()
    scope = models.CharField(max_length=8)
    sent = models.PositiveIntegerField(default=0)
    alerted = models.BooleanField(default=False)

    class Meta:
        verbose_name = _("SMS budget day")
        verbose_name_plural = _("SMS budget days")
        constraints = [
            models.UniqueConstraint(fields=["day", "scope"], name="accounts_smsbudget_day_scope")
        ]

    def __str__(self):
        return f"{self.day} {self.scope}: {self.sent}"


class SecurityEvent(models.Model):
    """One security-relevant action on an account: who did it, when, and from where.

    Written only by ``accounts.services.security_event_record``, which the service performing
    the action calls in its own transaction, so each action is recorded exactly once. ``detail``
    holds names and numbers that explain the event (a key's name and prefix, old and new quota),
    never a secret.
    """

    class Action(models.TextChoices):
        SIGN_UP = "sign_up", _("Account created")
        SIGN_IN = "sign_in", _("Signed in")
        SIGN_IN_FAILED = "sign_in_failed", _("Wrong sign-in code entered")
        CODE_ATTEMPTS_EXHAUSTED = (
            "code_attempts_exhausted",
            _("Sign-in code blocked after too many tries"),
        )
        STAFF_SIGN_IN = "staff_sign_in", _("Signed in to the admin")
        MFA_ENABLED = "mfa_enabled", _("Two-factor authentication turned on")
        MFA_DISABLED = "mfa_disabled", _("Two-factor authentication turned off")
        IDENTIFIER_ADDED = "identifier_added", _("Email address or phone number added")
        ACCOUNT_CLOSED = "account_closed", _("Account closed")
        KEY_CREATED = "key_created", _("API key created")
        KEY_REVEALED = "key_revealed", _("API key revealed")
        KEY_REGENERATED = "key_regenerated", _("API key regenerated")
        KEY_RENAMED = "key_renamed", _("API key renamed")
        KEY_ENABLED = "key_enabled", _("API key enabled")
        KEY_DISABLED = "key_disabled", _("API key disabled")
        KEY_DELETED = "key_deleted", _("API key deleted")
        KEY_LIMITS_CHANGED = "key_limits_changed", _("API key limits changed")
        QUOTA_CHANGED = "quota_changed", _("Daily quota changed")
        APPLICATION_APPROVED = "application_approved", _("Quota application approved")
        APPLICATION_REJECTED = "application_rejected", _("Quota application rejected")
        SMS_BUDGET_REACHED = "sms_budget_reached", _("SMS budget reached")
        ACCOUNT_SUSPENDED = "account_suspended", _("Account suspended by staff")
        ACCOUNT_REACTIVATED = "account_reactivated", _("Account reactivated by staff")
        KEYS_REVOKED = "keys_revoked", _("All API keys revoked by staff")

    # The account the event concerns; NULL for platform-wide events (an SMS budget reached).
    user = models.ForeignKey(
        User,
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        related_name="security_events",
        verbose_name=_("account"),
    )
    # Who did it: the account itself, a staff member, or NULL for the platform (a task).
    actor = models.ForeignKey(
        User,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        verbose_name=_("done by"),
    )
    action = models.CharField(_("action"), max_length=40, choices=Action.choices)
    ip_address = models.GenericIPAddressField(_("IP address"), null=True, blank=True)
    user_agent = models.CharField(_("browser"), max_length=300, blank=True, default="")
    detail = models.JSONField(_("detail"), default=dict, blank=True)
    created_at = models.DateTimeField(_("time"), default=timezone.now)

    class Meta:
        verbose_name = _("security event")
        verbose_name_plural = _("security log")
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["user", "-created_at"], name="accounts_secevent_user_time"),
            models.Index(fields=["created_at"], name="accounts_secevent_time"),
            models.Index(fields=["action", "-created_at"], name="accounts_secevent_action_time"),
        ]

    def __str__(self):
        return f"{self.get_action_display()} ({self.created_at:%Y-%m-%d %H:%M})"
