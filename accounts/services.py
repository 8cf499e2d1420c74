from django.db import transaction

from accounts.models import User


def normalize_email(email: str | None) -> str | None:
    email = (email or "").strip().lower()
    return email or None


@transaction.atomic
def account_create(
    *, email: str | None = None, phone: str | None = None, password: str | None = None, **fields
) -> User:
    """Create an account. The one way accounts come to exist."""
    user = User(email=normalize_email(email), phone=phone or None, **fields)
    if password:
        user.set_password(password)
    else:
        user.set_unusable_password()
    user.full_clean(exclude=["password"])
    user.save()
    return user
