import uuid

from django.conf import settings
from django.core.validators import MinValueValidator
from django.db import models
from django.db.models import Q
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
