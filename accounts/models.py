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
        """Accounts are made by ``accounts.services.account_create``: it adds the default key.

        The one import inside a function left in the project's apps, and within this app:
        ``accounts.services`` imports this module for ``User``, so this module cannot import it
        back at load time. Django calls this hook (``createsuperuser``, ``create_user``);
        everything else calls the service directly.
        """
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
