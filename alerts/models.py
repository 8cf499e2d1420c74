"""Quota alerts: what each account wants to be told, and the alerts it has been sent.

``Alert`` has one row per (account, key or none, quota day, threshold). Its unique constraints
are what make "one message per threshold per quota day" hold: detection may fire twice (two
gateway processes settling at once, a batch written again), the second insert is ignored, and
delivery works from the row, marking each channel as it goes.
"""

import uuid

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils.translation import gettext_lazy as _

from alerts.detection import DEFAULT_THRESHOLDS


def default_thresholds() -> list[int]:
    return list(DEFAULT_THRESHOLDS)


class AlertSettings(models.Model):
    """One row per account that has changed anything; absent means the defaults."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="alert_settings"
    )
    # Whole percentages, ascending; [] switches the alerts off.
    thresholds = models.JSONField(_("thresholds of the daily quota"), default=default_thresholds)
    # Applied to every key of the account that has a daily cap.
    key_thresholds = models.JSONField(
        _("thresholds of a key's daily cap"), default=default_thresholds
    )
    webhook_url = models.URLField(_("webhook URL"), max_length=500, blank=True)
    # Fernet under KEY_ENCRYPTION_KEY (keys.crypto): the owner must be able to read it again.
    webhook_secret_encrypted = models.TextField(blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self):
        return f"alert settings of {self.user_id}"


class Alert(models.Model):
    class State(models.TextChoices):
        PENDING = "pending", _("Pending")
        SENT = "sent", _("Sent")
        SKIPPED = "skipped", _("Not needed")
        FAILED = "failed", _("Failed")

    public_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    # NULL: the account's daily quota; otherwise that key's daily cap.
    api_key = models.ForeignKey(
        "keys.ApiKey", on_delete=models.CASCADE, null=True, blank=True, related_name="+"
    )
    day = models.DateField(help_text="The quota day, in QUOTA_TIMEZONE.")
    threshold = models.PositiveSmallIntegerField()
    limit_tokens = models.BigIntegerField(help_text="The quota or cap when it was crossed.")
    used_tokens = models.BigIntegerField(help_text="The day's total right after the crossing.")
    created_at = models.DateTimeField(auto_now_add=True)
    email_state = models.CharField(max_length=8, choices=State.choices, default=State.PENDING)
    sms_state = models.CharField(max_length=8, choices=State.choices, default=State.PENDING)
    webhook_state = models.CharField(max_length=8, choices=State.choices, default=State.PENDING)
    webhook_attempts = models.PositiveSmallIntegerField(default=0)
    # True until every channel is done (sent, skipped or failed): the sweeper's work list.
    pending = models.BooleanField(default=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["user", "day", "threshold"],
                condition=Q(api_key__isnull=True),
                name="alerts_alert_once_per_account_day_threshold",
            ),
            models.UniqueConstraint(
                fields=["user", "api_key", "day", "threshold"],
                condition=Q(api_key__isnull=False),
                name="alerts_alert_once_per_key_day_threshold",
            ),
            models.CheckConstraint(
                condition=Q(threshold__gte=1) & Q(threshold__lte=100),
                name="alerts_alert_threshold_is_a_percentage",
            ),
        ]
        indexes = [
            models.Index(fields=["user", "day"], name="alerts_alert_user_day_idx"),
            models.Index(
                fields=["created_at"], condition=Q(pending=True), name="alerts_alert_pending_idx"
            ),
        ]

    def __str__(self):
        scope = f"key {self.api_key_id}" if self.api_key_id else "account"
        return f"{self.user_id} {scope} {self.day}: {self.threshold}%"
