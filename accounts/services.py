import logging

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils.translation import gettext as _

from accounts.models import User
from audit.models import SecurityEvent
from audit.services import security_event_record
from keys.services import DEFAULT_KEY_NAME, api_key_create, api_keys_deactivate_for_user

logger = logging.getLogger(__name__)

# RFC 2606 reserves .invalid: a deleted account's placeholder address can never receive mail.
DELETED_EMAIL_DOMAIN = "deleted.invalid"


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
    user = User(email=normalize_email(email), phone=phone or None, **fields)
    if password:
        user.set_password(password)
    else:
        user.set_unusable_password()
    user.full_clean(exclude=["password"])
    user.save()
    security_event_record(action=SecurityEvent.Action.SIGN_UP, user=user)
    _key, raw = api_key_create(user=user, name=DEFAULT_KEY_NAME)
    return user, raw


def account_set_phone(*, user: User, phone: str, verified: bool) -> User:
    """Attach ``phone`` (E.164) to ``user``; ``verified`` once its owner entered a code."""
    if user.phone == phone:
        if verified and not user.phone_verified:
            user.phone_verified = True
            user.save(update_fields=["phone_verified", "updated_at"])
        return user
    user.phone = phone
    user.phone_verified = verified
    user.save(update_fields=["phone", "phone_verified", "updated_at"])
    logger.info("account phone set: user=%s verified=%s", user.public_id, verified)
    return user


@transaction.atomic
def account_add_email(*, user: User, email: str) -> User:
    """Give ``user`` a verified email address (its owner has just entered a code sent to it).

    Keeps allauth's EmailAddress table (which allauth reads at sign-in) in step with
    ``User.email``.
    """
    from allauth.account.models import EmailAddress

    email = normalize_email(email)
    user.email = email
    user.full_clean(exclude=["password"])
    user.save(update_fields=["email", "updated_at"])
    EmailAddress.objects.filter(user=user).exclude(email=email).delete()
    EmailAddress.objects.update_or_create(
        user=user, email=email, defaults={"verified": True, "primary": True}
    )
    security_event_record(
        action=SecurityEvent.Action.IDENTIFIER_ADDED, user=user, detail={"kind": "email"}
    )
    logger.info("account email added: user=%s", user.public_id)
    return user


@transaction.atomic
def account_add_phone(*, user: User, phone: str) -> User:
    """Give ``user`` a verified phone number (its owner has just entered a code sent to it)."""
    user.phone = phone
    user.phone_verified = True
    user.full_clean(exclude=["password"])
    user.save(update_fields=["phone", "phone_verified", "updated_at"])
    security_event_record(
        action=SecurityEvent.Action.IDENTIFIER_ADDED, user=user, detail={"kind": "phone"}
    )
    logger.info("account phone added: user=%s", user.public_id)
    return user


def account_set_language(*, user: User, language: str) -> User:
    if language not in {code for code, _name in settings.LANGUAGES}:
        raise ValidationError({"language": _("Choose one of the offered languages.")})
    user.language = language
    user.save(update_fields=["language", "updated_at"])
    return user


@transaction.atomic
def account_delete(*, user: User) -> User:
    """Close an account at once, keeping the rows that usage history points to.

    The row stays (usage records, rollups, quota applications and audit entries refer to it)
    but: the account and all its keys are disabled immediately, it can no longer sign in,
    and its email address and phone number are released — replaced by a placeholder on the
    reserved ``.invalid`` domain — so the person may sign up again later with a fresh
    account, and no personal contact detail is left behind.
    """
    from allauth.account.models import EmailAddress

    user = User.objects.select_for_update().get(pk=user.pk)
    api_keys_deactivate_for_user(user=user)
    user.is_active = False
    user.email = f"deleted-{user.public_id.hex}@{DELETED_EMAIL_DOMAIN}"
    user.phone = None
    user.phone_verified = False
    user.set_unusable_password()
    user.save()
    EmailAddress.objects.filter(user=user).delete()
    security_event_record(action=SecurityEvent.Action.ACCOUNT_CLOSED, user=user)
    logger.info("account deleted: user=%s", user.public_id)
    return user
