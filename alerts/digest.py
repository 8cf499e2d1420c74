"""The staff's daily digest of quota applications that have waited too long."""

from __future__ import annotations

import datetime as dt
import logging

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.mail import send_mail
from django.urls import reverse
from django.utils import timezone

from usage.selectors import quota_applications_pending

logger = logging.getLogger(__name__)


def quota_application_digest_send(*, now: dt.datetime | None = None) -> int:
    """Email every active staff member with an address the list of pending applications older
    than ``QUOTA_APPLICATION_DIGEST_AFTER_HOURS``. Returns how many were listed (0: no mail)."""
    now = now or timezone.now()
    cutoff = now - dt.timedelta(hours=settings.QUOTA_APPLICATION_DIGEST_AFTER_HOURS)
    waiting = list(quota_applications_pending().filter(created_at__lte=cutoff))
    if not waiting:
        return 0
    recipients = list(
        get_user_model()
        .objects.filter(is_staff=True, is_active=True)
        .exclude(email="")
        .exclude(email__isnull=True)
        .order_by("email")
        .values_list("email", flat=True)
    )
    if not recipients:
        logger.warning("%d quota applications wait, and no staff member has an email", len(waiting))
        return len(waiting)
    lines = [
        f"- {application.created_at:%Y-%m-%d %H:%M} UTC, "
        f"{(now - application.created_at).total_seconds() / 3600:.0f} h: "
        f"{application.expected_daily_tokens:,} tokens/day ({application.contact})"
        for application in waiting
    ]
    subject = f"{settings.PLATFORM_NAME}: {len(waiting)} quota application(s) waiting"
    body = (
        f"These quota applications have waited more than "
        f"{settings.QUOTA_APPLICATION_DIGEST_AFTER_HOURS} hours for a decision:\n\n"
        + "\n".join(lines)
        + f"\n\nReview them at {settings.PUBLIC_BASE_URL}{reverse('review:queue')}\n"
    )
    send_mail(subject, body, None, recipients)
    return len(waiting)
