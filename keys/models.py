import uuid

from django.conf import settings
from django.core.validators import MinValueValidator
from django.db import models
from django.db.models import Q
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from keys.limits import effective_rate_limits


class ApiKey(models.Model):
    """An API key. The secret itself is never stored in the clear.

    ``prefix`` (the first characters of the key) finds the row, ``digest`` (HMAC-SHA256 under
    ``API_KEY_HMAC_SECRET``) authenticates it, and ``encrypted`` (Fernet under
    ``KEY_ENCRYPTION_KEY``) lets the owner reveal it again on the API Keys page.
    """

    public_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_keys"
    )
    name = models.CharField(_("name"), max_length=64)
    prefix = models.CharField(max_length=16, unique=True, editable=False)
    digest = models.CharField(max_length=64, editable=False)
    encrypted = models.TextField(editable=False)
    is_active = models.BooleanField(_("enabled"), default=True)
    # NULL (blank) means the platform default; 0 is refused (keys.limits).
    rate_limit_rpm = models.PositiveIntegerField(
        _("requests per minute"),
        null=True,
        blank=True,
        validators=[MinValueValidator(1)],
    )
    rate_limit_tpm = models.PositiveBigIntegerField(
        _("tokens per minute"),
        null=True,
        blank=True,
        validators=[MinValueValidator(1)],
    )
    # The key's own controls (keys.controls), all optional: blank/empty means no limit.
    daily_token_cap = models.PositiveBigIntegerField(
        _("daily token cap"),
        null=True,
        blank=True,
        validators=[MinValueValidator(1)],
        help_text=_("At most this many tokens per quota day, inside the account's quota."),
    )
    allowed_models = models.JSONField(
        _("allowed models"),
        default=list,
        blank=True,
        help_text=_("Public model names this key may use; empty means every model."),
    )
    expires_at = models.DateTimeField(_("expires at"), null=True, blank=True)
    allowed_ips = models.JSONField(
        _("allowed IP addresses"),
        default=list,
        blank=True,
        help_text=_("Addresses and CIDR ranges (IPv4 or IPv6); empty means any address."),
    )
    max_concurrent_requests = models.PositiveIntegerField(
        _("concurrent requests"),
        null=True,
        blank=True,
        validators=[MinValueValidator(1)],
    )
    # Bumped by every change of the controls above: the reservation statement returns it, so
    # a gateway process can tell that its cached copy is stale (usage.ledger).
    controls_version = models.PositiveIntegerField(default=0, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    last_used_at = models.DateTimeField(_("last used"), null=True, blank=True)

    class Meta:
        verbose_name = _("API key")
        verbose_name_plural = _("API keys")
        ordering = ["created_at", "id"]
        constraints = [
            models.UniqueConstraint(
                fields=["user", "name"], name="keys_apikey_unique_name_per_user"
            ),
            models.CheckConstraint(
                condition=(Q(rate_limit_rpm__isnull=True) | Q(rate_limit_rpm__gte=1))
                & (Q(rate_limit_tpm__isnull=True) | Q(rate_limit_tpm__gte=1)),
                name="keys_apikey_rate_limits_positive",
            ),
            models.CheckConstraint(
                condition=(Q(daily_token_cap__isnull=True) | Q(daily_token_cap__gte=1))
                & (Q(max_concurrent_requests__isnull=True) | Q(max_concurrent_requests__gte=1)),
                name="keys_apikey_controls_positive",
            ),
        ]

    def __str__(self):
        return f"{self.name} ({self.masked})"

    @property
    def masked(self) -> str:
        return f"{self.prefix}{'•' * 8}"

    @property
    def effective_rate_limit_rpm(self) -> int:
        return effective_rate_limits(self.rate_limit_rpm, self.rate_limit_tpm)[0]

    @property
    def effective_rate_limit_tpm(self) -> int:
        return effective_rate_limits(self.rate_limit_rpm, self.rate_limit_tpm)[1]

    def expires_in(self, now=None):
        """Time left before expiry (negative once expired), or None for a key that never expires."""
        if self.expires_at is None:
            return None
        return self.expires_at - (now or timezone.now())

    @property
    def is_expired(self) -> bool:
        left = self.expires_in()
        return left is not None and left.total_seconds() <= 0

    @property
    def has_controls(self) -> bool:
        return bool(
            self.daily_token_cap
            or self.allowed_models
            or self.expires_at
            or self.allowed_ips
            or self.max_concurrent_requests
        )


class ApiKeyChange(models.Model):
    """Audit record of every change to a key's controls: who, when, before and after.

    Written only by ``keys.services.api_key_set_controls``, in the transaction that changes
    the key. Kept after the key is deleted (``key_name`` says which it was)."""

    api_key = models.ForeignKey(
        ApiKey, on_delete=models.SET_NULL, null=True, blank=True, related_name="changes"
    )
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    key_name = models.CharField(max_length=64)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    before = models.JSONField(default=dict)
    after = models.JSONField(default=dict)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        verbose_name = _("API key change")
        verbose_name_plural = _("API key changes")
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["api_key", "-created_at"], name="keys_change_key_time_idx"),
        ]

    def __str__(self):
        return f"{self.key_name} {self.created_at:%Y-%m-%d %H:%M}"
