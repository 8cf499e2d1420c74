import datetime as dt

from celery import shared_task
from django.utils import timezone

from alerts import delivery, digest
from alerts.selectors import alerts_pending
from alerts.webhooks import WebhookFailed

# The sweeper leaves younger alerts to their own task and its retries (about 8 minutes in all).
SWEEP_AFTER = dt.timedelta(minutes=20)
# Seconds before webhook attempt n+1 (then capped): 30 s, 1 min, 2 min, 4 min, 8 min.
WEBHOOK_BACKOFF_BASE_SECONDS = 30
WEBHOOK_BACKOFF_MAX_SECONDS = 1800


def webhook_backoff_seconds(attempt: int) -> int:
    return min(WEBHOOK_BACKOFF_BASE_SECONDS * 2**attempt, WEBHOOK_BACKOFF_MAX_SECONDS)


@shared_task(bind=True, max_retries=None)
def alert_deliver(self, alert_id: int) -> None:
    """Send one alert on every channel not yet delivered; retry a failing webhook with backoff.

    Safe to run twice, concurrently or after a crash: each channel is marked when delivered
    (``alerts.delivery``), and a retry sends only what is still pending. The number of
    webhook attempts is kept on the alert and capped there (``ALERT_WEBHOOK_MAX_ATTEMPTS``),
    whatever chain of tasks makes them: ``WebhookFailed`` reaching here means one is left.
    """
    try:
        delivery.alert_deliver(alert_id=alert_id)
    except WebhookFailed as exc:
        raise self.retry(exc=exc, countdown=webhook_backoff_seconds(self.request.retries)) from None


@shared_task
def alerts_deliver_pending() -> int:
    """Beat: queue alerts whose delivery task was lost (a broker restart); idempotent."""
    now = timezone.now()
    ids = alerts_pending(created_before=now - SWEEP_AFTER, since=now - dt.timedelta(days=2))
    for alert_id in ids:
        alert_deliver.delay(alert_id)
    return len(ids)


@shared_task
def quota_application_digest() -> int:
    """Beat, daily: tell staff about quota applications waiting too long."""
    return digest.quota_application_digest_send()
