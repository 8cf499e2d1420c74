"""Delivering an alert: email, SMS, webhook, each channel at most once.

Each channel is delivered in its own transaction holding the alert's row lock: a second
worker (a duplicate task, a retry, the sweeper) waits, then finds the channel marked and
sends nothing. The lock is held across the webhook's HTTP call on purpose (releasing it would
let a duplicate task post the same alert twice); ``webhook_post`` bounds the whole call by
``ALERT_WEBHOOK_TIMEOUT_SECONDS``, so a lock is never held longer than that.

Email and SMS failures are logged and marked failed (the banner on the Usage page still shows
the alert). A webhook failure is counted on the alert (``webhook_attempts``) and raised, so the
task retries it with backoff (``alerts.tasks``) while the channels already delivered stay
delivered; the attempt that reaches ``ALERT_WEBHOOK_MAX_ATTEMPTS`` marks it failed instead.
The count lives on the row, so it holds across task chains (a retry, the sweeper, a task
queued again) and a chain that starts after the last attempt sends nothing.
"""

from __future__ import annotations

import logging

from django.conf import settings
from django.core.mail import send_mail
from django.db import transaction
from django.utils import translation
from django.utils.translation import gettext as _

from accounts import sms
from accounts.identifiers import phone_mask
from alerts.models import Alert, AlertSettings
from alerts.webhooks import WebhookFailed, WebhookRefused, webhook_post
from keys.crypto import UndecryptableSecret, decrypt_secret

logger = logging.getLogger(__name__)

State = Alert.State
CHANNELS = ("email", "sms", "webhook")


def alert_text(alert: Alert) -> tuple[str, str]:
    """(subject, body) in the account's language."""
    values = {
        "platform": settings.PLATFORM_NAME,
        "percent": alert.threshold,
        "used": f"{alert.used_tokens:,}",
        "limit": f"{alert.limit_tokens:,}",
        "day": alert.day.isoformat(),
    }
    with translation.override(alert.user.language or settings.LANGUAGE_CODE):
        if alert.api_key_id:
            values["key"] = alert.api_key.name
            subject = (
                _("%(platform)s: key %(key)s has used %(percent)s%% of its daily cap") % values
            )
            body = (
                _(
                    "Your API key %(key)s has used %(used)s of its %(limit)s daily tokens on "
                    "%(day)s (quota day, Beijing time). Requests with it are refused once the cap "
                    "is reached, until midnight Beijing time."
                )
                % values
            )
        else:
            subject = _("%(platform)s: %(percent)s%% of your daily quota used") % values
            body = (
                _(
                    "Your account has used %(used)s of its %(limit)s daily tokens on %(day)s "
                    "(quota day, Beijing time). Requests are refused once the quota is reached; "
                    "it starts over at midnight Beijing time. You can change these alerts on the "
                    "Usage page, or apply for a larger quota there."
                )
                % values
            )
    return subject, body


def webhook_payload(alert: Alert) -> dict:
    return {
        "type": "quota.threshold_crossed",
        "id": str(alert.public_id),
        "scope": "key" if alert.api_key_id else "account",
        "key_name": alert.api_key.name if alert.api_key_id else None,
        "day": alert.day.isoformat(),
        "threshold_percent": alert.threshold,
        "limit_tokens": alert.limit_tokens,
        "used_tokens": alert.used_tokens,
        "created_at": alert.created_at.isoformat(),
    }


def _send_email(alert: Alert) -> str:
    if not alert.user.email:
        return State.SKIPPED
    subject, body = alert_text(alert)
    try:
        send_mail(subject, body, None, [alert.user.email])
    except Exception:
        logger.exception("could not email alert %s", alert.pk)
        return State.FAILED
    return State.SENT


def _send_sms(alert: Alert) -> str:
    if not alert.user.phone or alert.api_key_id:
        # Key caps alert by email and webhook only: an SMS per key would cost the operator
        # more than it tells the user.
        return State.SKIPPED
    if not sms.notices_enabled():
        return State.SKIPPED
    _subject, body = alert_text(alert)
    params = {"percent": str(alert.threshold), "limit": str(alert.limit_tokens)}
    try:
        sms.send_notice(phone=alert.user.phone, text=body, params=params)
    except sms.SmsDeliveryError as exc:
        logger.warning(
            "could not text alert %s to %s: %s", alert.pk, phone_mask(alert.user.phone), exc
        )
        return State.FAILED
    return State.SENT


def _send_webhook(alert: Alert) -> str:
    row = AlertSettings.objects.filter(user_id=alert.user_id).first()
    if row is None or not row.webhook_url or not row.webhook_secret_encrypted:
        return State.SKIPPED
    try:
        secret = decrypt_secret(row.webhook_secret_encrypted)
    except UndecryptableSecret:
        logger.error("alert %s: the webhook secret cannot be decrypted", alert.pk)
        return State.FAILED
    try:
        webhook_post(url=row.webhook_url, secret=secret, payload=webhook_payload(alert))
    except WebhookRefused as exc:
        logger.warning("alert %s: webhook refused: %s", alert.pk, exc)
        return State.FAILED
    return State.SENT


SENDERS = {"email": _send_email, "sms": _send_sms, "webhook": _send_webhook}


def _deliver_channel(alert_id: int, channel: str) -> None:
    field = f"{channel}_state"
    failure = None
    with transaction.atomic():
        alert = (
            Alert.objects.select_for_update(of=("self",))
            .select_related("user", "api_key")
            .filter(pk=alert_id)
            .first()
        )
        if alert is None or getattr(alert, field) != State.PENDING:
            return
        update = [field, "pending"]
        if channel == "webhook" and alert.webhook_attempts >= settings.ALERT_WEBHOOK_MAX_ATTEMPTS:
            # Attempts were used up by earlier chains (a task lost after its last attempt).
            result = State.FAILED
        else:
            try:
                result = SENDERS[channel](alert)
            except WebhookFailed as exc:
                result, failure = State.PENDING, exc
            if channel == "webhook" and result != State.SKIPPED:
                alert.webhook_attempts += 1
                update.append("webhook_attempts")
                if failure is not None and (
                    alert.webhook_attempts >= settings.ALERT_WEBHOOK_MAX_ATTEMPTS
                ):
                    logger.warning(
                        "alert %s: webhook failed %d times; giving up",
                        alert.pk,
                        alert.webhook_attempts,
                    )
                    result, failure = State.FAILED, None
        setattr(alert, field, result)
        alert.pending = any(getattr(alert, f"{c}_state") == State.PENDING for c in CHANNELS)
        alert.save(update_fields=update)
    if failure is not None:
        raise failure


def alert_deliver(*, alert_id: int) -> None:
    """Deliver every channel still pending; raises ``WebhookFailed`` for the task to retry
    (never once the webhook's attempts are used up: it is marked failed instead)."""
    for channel in CHANNELS:
        _deliver_channel(alert_id, channel)
