import logging

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone
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


# --- staff actions on an account -----------------------------------------------------------
#
# Suspension blocks through the account flag alone: ``User.is_active`` is re-checked by the
# gateway's reservation statement on every request (and by its fresh key check), so a
# suspended account's keys stop at once in every process, and its sessions stop too (Django
# refuses inactive users). Key flags are left as they were, so reactivating restores exactly
# the keys the owner had enabled — a key the owner disabled stays disabled, and a key staff
# revoked (``account_keys_revoke``) stays revoked until its owner enables it again.


def _is_closed(user: User) -> bool:
    return bool(user.email) and user.email.endswith("@" + DELETED_EMAIL_DOMAIN)


def _staff_reason(reason: str) -> str:
    reason = (reason or "").strip()
    if not reason:
        raise ValidationError({"reason": _("Give a reason: it goes into the security log.")})
    return reason


@transaction.atomic
def account_suspend(*, user: User, actor: User, reason: str) -> User:
    """Suspend ``user``: it can neither sign in nor use its keys until reactivated."""
    reason = _staff_reason(reason)
    locked = User.objects.select_for_update().get(pk=user.pk)
    if locked.pk == actor.pk:
        raise ValidationError(_("You cannot suspend your own account."))
    if not locked.is_active:
        raise ValidationError(_("This account is already inactive."))
    User.objects.filter(pk=locked.pk).update(is_active=False, updated_at=timezone.now())
    security_event_record(
        action=SecurityEvent.Action.ACCOUNT_SUSPENDED,
        user=locked,
        actor=actor,
        detail={"reason": reason},
    )
    user.is_active = False
    logger.info("account suspended: user=%s by=%s", user.public_id, actor.pk)
    return user


@transaction.atomic
def account_reactivate(*, user: User, actor: User, reason: str) -> User:
    """Lift a suspension. Keys keep their own flags (see above). Closed accounts stay closed."""
    reason = _staff_reason(reason)
    locked = User.objects.select_for_update().get(pk=user.pk)
    if _is_closed(locked):
        raise ValidationError(_("A closed account cannot be reactivated."))
    if locked.is_active:
        raise ValidationError(_("This account is not suspended."))
    User.objects.filter(pk=locked.pk).update(is_active=True, updated_at=timezone.now())
    security_event_record(
        action=SecurityEvent.Action.ACCOUNT_REACTIVATED,
        user=locked,
        actor=actor,
        detail={"reason": reason},
    )
    user.is_active = True
    logger.info("account reactivated: user=%s by=%s", user.public_id, actor.pk)
    return user


@transaction.atomic
def account_keys_revoke(*, user: User, actor: User, reason: str) -> int:
    """Disable every enabled key of ``user`` at once; one security-log entry. Returns how many.

    The owner can enable or regenerate them again on the API Keys page (suspend the account
    to stop that too).
    """
    reason = _staff_reason(reason)
    User.objects.select_for_update().filter(pk=user.pk).values_list("pk").first()
    count = api_keys_deactivate_for_user(user=user)
    security_event_record(
        action=SecurityEvent.Action.KEYS_REVOKED,
        user=user,
        actor=actor,
        detail={"reason": reason, "keys": count},
    )
    return count
