from audit.models import SecurityEvent

ACCOUNT_PAGE_EVENTS = 20


def security_events_for_account(*, user, limit: int = ACCOUNT_PAGE_EVENTS):
    """The latest security-log entries of ``user``'s account, newest first."""
    return list(
        SecurityEvent.objects.filter(user=user)
        .select_related("actor")
        .order_by("-created_at", "-id")[:limit]
    )
