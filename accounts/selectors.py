from accounts.models import SecurityEvent, User


def account_get_by_phone(*, phone: str) -> User | None:
    """The account holding ``phone`` (E.164), active or not: a number belongs to one account."""
    return User.objects.filter(phone=phone).first()


def account_get_by_email(*, email: str) -> User | None:
    return User.objects.filter(email=(email or "").strip().lower()).first()


def account_email_verified(*, user: User) -> bool:
    from allauth.account.models import EmailAddress

    if not user.email:
        return False
    return EmailAddress.objects.filter(user=user, email=user.email, verified=True).exists()


ACCOUNT_PAGE_EVENTS = 20


def security_events_for_account(*, user: User, limit: int = ACCOUNT_PAGE_EVENTS):
    """The latest security-log entries of ``user``'s account, newest first."""
    return list(
        SecurityEvent.objects.filter(user=user)
        .select_related("actor")
        .order_by("-created_at", "-id")[:limit]
    )
