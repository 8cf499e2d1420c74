import datetime as dt

from celery import shared_task
from django.conf import settings
from django.utils import timezone

from audit import services


@shared_task
def security_log_prune() -> int:
    """Beat runs this daily: security-log entries live ``SECURITY_LOG_RETENTION_DAYS``."""
    before = timezone.now() - dt.timedelta(days=settings.SECURITY_LOG_RETENTION_DAYS)
    return services.security_events_prune(before=before)
