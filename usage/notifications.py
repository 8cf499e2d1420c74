"""Telling an applicant about the decision on a quota application (email and/or SMS).

Sent by the Celery worker once the decision has committed. A failure is logged; the decision
stands and the Usage page shows it either way.
"""

import logging

from django.conf import settings
from django.core.mail import send_mail
from django.utils import translation
from django.utils.translation import gettext as _

from usage.models import QuotaApplication

logger = logging.getLogger(__name__)


def _message(application: QuotaApplication) -> tuple[str, str]:
    platform = settings.PLATFORM_NAME
    if application.status == QuotaApplication.Status.APPROVED:
        subject = _("%(platform)s: your quota application was approved") % {"platform": platform}
        body = _(
            "Good news: your application for more daily tokens was approved. Your account can "
            "now use %(quota)s tokens a day, starting today."
        ) % {"quota": f"{max(application.user.daily_quota or 0, 0):,}"}
    else:
        subject = _("%(platform)s: your quota application was not approved") % {
            "platform": platform
        }
        body = _(
            "Your application for more daily tokens was not approved. The reviewer wrote: "
            "%(reason)s"
        ) % {"reason": application.review_reason}
    return subject, body


def application_decided(application: QuotaApplication) -> None:
    user = application.user
    with translation.override(user.language or settings.LANGUAGE_CODE):
        subject, body = _message(application)
        footer = _("See the details on the Usage page.")
    text = f"{body}\n\n{footer}"
    if user.email:
        try:
            send_mail(subject, text, None, [user.email])
        except Exception:
            logger.exception("could not email the decision on application %s", application.pk)
    elif user.phone:
        # The SMS providers deliver pre-approved templates and accounts.sms has one, for
        # verification codes: a phone-only applicant reads the decision on the Usage page.
        logger.info("application %s decided; no email address to tell", application.pk)
