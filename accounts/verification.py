"""Proving ownership of a second identifier (the Account page's "add a phone / an email").

A pending check lives in the session: the address, the expected code, when it was sent and
how many wrong codes were typed. Codes are allauth's (its adapter makes them) and are compared
the way allauth compares sign-in codes (``codes_match``: constant time, punctuation, spaces and
case ignored), and expire and run out of attempts like sign-in codes. An address that belongs
to another account gets no code at all, yet the page reads the same: the check simply never
succeeds, so the Account page cannot be used to find out who is registered.
"""

import secrets
import string
import time
from dataclasses import asdict, dataclass

from allauth.account.adapter import get_adapter
from django.conf import settings

from accounts import codes, selectors

SESSION_KEY = "accounts_pending_identifier"

# What a person may type around a code ("123 456", "123-456"): ignored, as allauth does.
_IGNORED = str.maketrans("", "", string.punctuation + string.whitespace)


def codes_match(*, actual: str, expected: str) -> bool:
    """Whether ``actual`` (as typed) is ``expected``, in constant time."""
    actual = actual.translate(_IGNORED).lower()
    expected = expected.translate(_IGNORED).lower()
    try:
        return bool(expected) and secrets.compare_digest(actual, expected)
    except TypeError:  # compare_digest refuses non-ASCII text: such a code is wrong anyway
        return False


@dataclass
class PendingIdentifier:
    kind: str  # "email" or "phone"
    value: str
    code: str  # empty when the address is taken: nothing can match it
    sent_at: float
    failed_attempts: int = 0

    @property
    def expired(self) -> bool:
        return time.time() - self.sent_at > settings.ACCOUNT_LOGIN_BY_CODE_TIMEOUT

    @property
    def attempts_left(self) -> int:
        return max(0, settings.ACCOUNT_LOGIN_BY_CODE_MAX_ATTEMPTS - self.failed_attempts)


def pending_get(request) -> PendingIdentifier | None:
    data = request.session.get(SESSION_KEY)
    return PendingIdentifier(**data) if data else None


def pending_clear(request) -> None:
    request.session.pop(SESSION_KEY, None)


def _save(request, pending: PendingIdentifier) -> None:
    request.session[SESSION_KEY] = asdict(pending)


def identifier_start(request, *, kind: str, value: str) -> PendingIdentifier:
    """Send a code to ``value`` (unless it is taken) and remember what we expect back."""
    user = request.user
    if kind == "email":
        owner = selectors.account_get_by_email(email=value)
    else:
        owner = selectors.account_get_by_phone(phone=value)
    free = owner is None or owner.pk == user.pk
    code = get_adapter(request).generate_login_code() if free else ""
    if code:
        if kind == "email":
            get_adapter(request).send_mail(
                "accounts/email/add_identifier", value, {"code": code, "request": request}
            )
        else:
            get_adapter(request).send_verification_code_sms(user=user, phone=value, code=code)
    pending = PendingIdentifier(kind=kind, value=value, code=code, sent_at=time.time())
    _save(request, pending)
    return pending


def identifier_check(request, pending: PendingIdentifier, code: str) -> bool:
    """True when ``code`` is right. A wrong code uses up one attempt (and may end the check).

    Every entry is first counted against the code in the database: the session's count is a
    snapshot that parallel requests would each see unchanged.
    """
    allowed = codes.code_attempt_consume(
        purpose=f"identifier-{pending.kind}",
        user_id=request.user.pk,
        issued_at=pending.sent_at,
        code=pending.code,
    )
    if not allowed:
        pending.failed_attempts = settings.ACCOUNT_LOGIN_BY_CODE_MAX_ATTEMPTS
        pending_clear(request)
        return False
    if pending.code and codes_match(actual=code, expected=pending.code):
        pending_clear(request)
        return True
    pending.failed_attempts += 1
    if pending.attempts_left == 0:
        pending_clear(request)
    else:
        _save(request, pending)
    return False
