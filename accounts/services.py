from django.db import transaction

from accounts.models import User


def normalize_email(email: str | None) -> str | None:
    email = (email or "").strip().lower()
    return email or None


def account_create(
    *, email: str | None = None, phone: str | None = None, password: str | None = None, **fields
) -> User:
    """Create an account and its ``default`` API key, in one transaction.

    Every path that makes an account (sign-up, ``createsuperuser``, the admin, the
    ``create_account`` command) comes through here, so no account lacks its default key.
    """
    return account_create_with_key(email=email, phone=phone, password=password, **fields)[0]


@transaction.atomic
def account_create_with_key(
    *, email: str | None = None, phone: str | None = None, password: str | None = None, **fields
) -> tuple[User, str]:
    """Like ``account_create``; also returns the default key's secret (for one-time display)."""
    from keys.services import DEFAULT_KEY_NAME, api_key_create

    user = User(email=normalize_email(email), phone=phone or None, **fields)
    if password:
        user.set_password(password)
    else:
        user.set_unusable_password()
    user.full_clean(exclude=["password"])
    user.save()
    _key, raw = api_key_create(user=user, name=DEFAULT_KEY_NAME)
    return user, raw
