from django.conf import settings
from django.db import models
from django.utils import timezone
from django.utils.translation import gettext_lazy as _


class SecurityEvent(models.Model):
    """One security-relevant action on an account: who did it, when, and from where.

    Written only by ``audit.services.security_event_record``, which the service performing
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
        settings.AUTH_USER_MODEL,
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        related_name="security_events",
        verbose_name=_("account"),
    )
    # Who did it: the account itself, a staff member, or NULL for the platform (a task).
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL,
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
            models.Index(fields=["user", "-created_at"], name="audit_secevent_user_time"),
            models.Index(fields=["created_at"], name="audit_secevent_time"),
            models.Index(fields=["action", "-created_at"], name="audit_secevent_action_time"),
        ]

    def __str__(self):
        return f"{self.get_action_display()} ({self.created_at:%Y-%m-%d %H:%M})"
