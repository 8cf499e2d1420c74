import datetime as dt

from django.db.models import Q

from alerts.detection import DEFAULT_THRESHOLDS
from alerts.models import Alert, AlertSettings


def alert_settings_of(*, user) -> AlertSettings:
    """The account's settings, or the defaults (unsaved) when it never changed them."""
    found = AlertSettings.objects.filter(user=user).first()
    return found or AlertSettings(user=user, thresholds=list(DEFAULT_THRESHOLDS))


def alerts_of_day(*, user, day: dt.date) -> list[Alert]:
    """The thresholds crossed on ``day``, highest first (the Usage page's banner)."""
    return list(
        Alert.objects.filter(user=user, day=day)
        .select_related("api_key")
        .order_by("-threshold", "api_key_id")
    )


def alerts_pending(*, created_before: dt.datetime, since: dt.datetime) -> list[int]:
    """Alerts with a channel still to deliver, created in (``since``, ``created_before``)."""
    return list(
        Alert.objects.filter(pending=True, created_at__lt=created_before, created_at__gt=since)
        .order_by("created_at")
        .values_list("pk", flat=True)
    )


def alert_ids_for(*, slots: set[tuple[int, dt.date]]) -> list[int]:
    """Pending alerts of these (account, day) pairs: what a writer just inserted (or a
    concurrent writer did; delivery is idempotent, so queuing one twice is harmless)."""
    query = Q()
    for user_id, day in slots:
        query |= Q(user_id=user_id, day=day)
    return list(Alert.objects.filter(query, pending=True).values_list("pk", flat=True))
