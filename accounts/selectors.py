from accounts.models import User


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
