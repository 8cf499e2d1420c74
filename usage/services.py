"""Writes for quota administration: quota changes and quota-increase applications.

The gateway's hot path (reserve, settle, record) lives in ``usage.ledger``, the upkeep behind
it (the stale-reservation sweeper, the daily reset) in ``usage.ledger.upkeep``.
"""

import logging

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import F, Sum
from django.utils import timezone
from django.utils.translation import gettext as _

from audit.models import SecurityEvent
from audit.services import security_event_record
from usage import notifications, tasks
from usage.models import DailyRollup, KeyDailyUsage, QuotaApplication, QuotaChange
from usage.quota import quota_day

logger = logging.getLogger(__name__)

MAX_EXPECTED_DAILY_TOKENS = 10**12


# --- key daily caps ---------------------------------------------------------------------------


def key_cap_counter_catch_up(*, api_key_id: int, day=None) -> None:
    """Raise the key's daily-cap counter for ``day`` (today by default) to at least what its
    rollups say it spent that day.

    The counter is seeded from the rollups only when the day's first capped reservation
    creates it; while the key has no cap, nothing moves it. So a cap removed and set again
    the same day would find the counter where the cap left it (cap 1,000, 600 spent, cap
    removed, 5,000 more, cap back: still 600). Run in the transaction that sets the cap
    (``keys.signals.daily_cap_set``). A missing counter is left to that first reservation.
    """
    day = day or quota_day()
    spent = DailyRollup.objects.filter(api_key_id=api_key_id, day=day).aggregate(
        total=Sum(F("input_tokens") + F("output_tokens"))
    )["total"]
    if spent:
        KeyDailyUsage.objects.filter(api_key_id=api_key_id, day=day, used_tokens__lt=spent).update(
            used_tokens=spent, updated_at=timezone.now()
        )


def on_key_daily_cap_set(sender, *, api_key, **kwargs) -> None:
    """Receiver of ``keys.signals.daily_cap_set`` (connected in ``UsageConfig.ready``)."""
    key_cap_counter_catch_up(api_key_id=api_key.pk)


# --- quota changes -------------------------------------------------------------------------


def quota_set(*, user, new_quota: int | None, reason: str, actor=None) -> QuotaChange | None:
    """Set an account's daily quota (``None`` = the platform default) and audit the change.

    Every quota change in the project goes through here, so ``QuotaChange`` is complete.
    The gateway reads ``User.daily_quota`` on every reservation, so the change applies to the
    current quota day at once. Returns ``None`` when the quota already had that value.
    """
    reason = (reason or "").strip()
    if not reason:
        raise ValidationError({"reason": _("Give a reason for the quota change.")})
    if new_quota is not None and new_quota < 0:
        raise ValidationError({"new_quota": _("A quota cannot be negative.")})
    User = get_user_model()
    with transaction.atomic():
        locked = User.objects.select_for_update().only("id", "daily_quota").get(pk=user.pk)
        old_quota = locked.daily_quota
        if old_quota == new_quota:
            user.daily_quota = new_quota
            return None
        User.objects.filter(pk=user.pk).update(daily_quota=new_quota, updated_at=timezone.now())
        change = QuotaChange.objects.create(
            user_id=user.pk, old_quota=old_quota, new_quota=new_quota, reason=reason, actor=actor
        )
        security_event_record(
            action=SecurityEvent.Action.QUOTA_CHANGED,
            user_id=user.pk,
            actor=actor,
            detail={"old_quota": old_quota, "new_quota": new_quota, "reason": reason},
        )
    user.daily_quota = new_quota
    logger.info(
        "quota of account %s changed from %s to %s by %s",
        user.pk,
        old_quota,
        new_quota,
        getattr(actor, "pk", None),
    )
    return change


# --- quota-increase applications -----------------------------------------------------------


def quota_application_create(
    *,
    user,
    intended_use: str,
    expected_daily_tokens: int,
    contact: str,
    company: str = "",
) -> QuotaApplication:
    """File an application for the increased quota. At most one may be pending per account."""
    intended_use = (intended_use or "").strip()
    contact = (contact or "").strip()
    errors = {}
    if not intended_use:
        errors["intended_use"] = _("Tell us what you will use the tokens for.")
    if not contact:
        errors["contact"] = _("Tell us how to reach you.")
    if not expected_daily_tokens or expected_daily_tokens < 1:
        errors["expected_daily_tokens"] = _("Enter how many tokens a day you expect to use.")
    elif expected_daily_tokens > MAX_EXPECTED_DAILY_TOKENS:
        errors["expected_daily_tokens"] = _("That number is too large.")
    if errors:
        raise ValidationError(errors)
    if QuotaApplication.objects.filter(user=user, status=QuotaApplication.Status.PENDING).exists():
        raise ValidationError(_("You already have an application waiting for review."))
    try:
        with transaction.atomic():
            application = QuotaApplication.objects.create(
                user=user,
                intended_use=intended_use,
                company=(company or "").strip(),
                expected_daily_tokens=expected_daily_tokens,
                contact=contact,
            )
    except IntegrityError:
        # Two submissions raced past the check above; the partial unique index decided.
        raise ValidationError(_("You already have an application waiting for review.")) from None
    return application


def _lock_pending(application: QuotaApplication) -> QuotaApplication:
    locked = (
        QuotaApplication.objects.select_for_update().select_related("user").get(pk=application.pk)
    )
    if locked.status != QuotaApplication.Status.PENDING:
        raise ValidationError(_("This application has already been decided."))
    return locked


def quota_application_approve(
    *, application: QuotaApplication, reviewer, reason: str = "", quota: int | None = None
) -> QuotaApplication:
    """Approve: the account gets ``quota`` tokens a day (by default ``INCREASED_DAILY_QUOTA``)
    from this moment, today included.

    An account whose quota staff already set higher keeps it; approval never lowers a quota.
    The applicant is notified after the commit.
    """
    target = settings.INCREASED_DAILY_QUOTA if quota is None else quota
    if target < 1 or target > MAX_EXPECTED_DAILY_TOKENS:
        raise ValidationError({"quota": _("Enter a quota between 1 and 10¹² tokens a day.")})
    with transaction.atomic():
        locked = _lock_pending(application)
        locked.status = QuotaApplication.Status.APPROVED
        locked.reviewer = reviewer
        locked.review_reason = (reason or "").strip()
        locked.decided_at = timezone.now()
        locked.save(update_fields=["status", "reviewer", "review_reason", "decided_at"])
        _log_decision(locked, quota=target)
        current = locked.user.daily_quota
        if current is None or current < target:
            quota_set(
                user=locked.user,
                new_quota=target,
                reason=f"Quota application {locked.public_id} approved",
                actor=reviewer,
            )
        _notify_after_commit(locked)
    _refresh(application, locked)
    return locked


def quota_application_reject(
    *, application: QuotaApplication, reviewer, reason: str
) -> QuotaApplication:
    """Reject with a reason the applicant will read. The quota does not change."""
    reason = (reason or "").strip()
    if not reason:
        raise ValidationError({"reason": _("A rejection needs a reason for the applicant.")})
    with transaction.atomic():
        locked = _lock_pending(application)
        locked.status = QuotaApplication.Status.REJECTED
        locked.reviewer = reviewer
        locked.review_reason = reason
        locked.decided_at = timezone.now()
        locked.save(update_fields=["status", "reviewer", "review_reason", "decided_at"])
        _log_decision(locked)
        _notify_after_commit(locked)
    _refresh(application, locked)
    return locked


def _log_decision(application: QuotaApplication, *, quota: int | None = None) -> None:
    approved = application.status == QuotaApplication.Status.APPROVED
    detail = {"application": str(application.public_id), "reason": application.review_reason}
    if quota is not None:
        detail["quota"] = quota
    security_event_record(
        action=(
            SecurityEvent.Action.APPLICATION_APPROVED
            if approved
            else SecurityEvent.Action.APPLICATION_REJECTED
        ),
        user_id=application.user_id,
        actor=application.reviewer,
        detail=detail,
    )


def _notify_after_commit(application: QuotaApplication) -> None:
    # The worker sends it: a slow mail server or SMS gateway must not hold up the reviewer.
    pk = application.pk
    transaction.on_commit(lambda: tasks.quota_application_notify.delay(application_id=pk))


def _refresh(application: QuotaApplication, decided: QuotaApplication) -> None:
    for field in ("status", "reviewer", "review_reason", "decided_at"):
        setattr(application, field, getattr(decided, field))


def quota_application_notify(*, application_id: int) -> None:
    """Tell the applicant about the decision, by email and/or SMS. The worker runs this
    (``usage.tasks.quota_application_notify``) once the decision has committed.

    A failing channel is logged and does not undo the decision: the page shows it anyway.
    """
    application = QuotaApplication.objects.select_related("user").get(pk=application_id)
    notifications.application_decided(application)


# --- bulk decisions (the review queue) ------------------------------------------------------


def quota_applications_approve_bulk(
    *, applications, reviewer, reason: str = ""
) -> list[QuotaApplication]:
    """Approve each of ``applications`` with the standard ``INCREASED_DAILY_QUOTA``.

    Each is decided in its own transaction by ``quota_application_approve`` (so each is
    audited and notified on its own); one decided meanwhile by someone else is skipped.
    Returns the applications this call approved.
    """
    decided = []
    for application in applications:
        try:
            decided.append(
                quota_application_approve(application=application, reviewer=reviewer, reason=reason)
            )
        except ValidationError:
            continue
    return decided


def quota_applications_reject_bulk(
    *, applications, reviewer, reason: str
) -> list[QuotaApplication]:
    """Reject each of ``applications`` with one ``reason`` for all (the applicants read it).

    Like the bulk approval: one transaction each, already decided ones skipped.
    """
    if not (reason or "").strip():
        raise ValidationError({"reason": _("A rejection needs a reason for the applicant.")})
    decided = []
    for application in applications:
        try:
            decided.append(
                quota_application_reject(application=application, reviewer=reviewer, reason=reason)
            )
        except ValidationError:
            continue
    return decided
