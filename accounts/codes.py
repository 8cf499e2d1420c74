"""Guards around one-time codes: how often a code may be tried, and how many may be sent.

- ``code_attempt_consume``: every entry of a code counts against that code, in the database,
  so that parallel requests cannot each see "attempts left" (the session they carry is a
  snapshot). Past the limit the code is dead, even the right one.
- ``code_send_allowed``: the per-IP and per-address limits every path that sends a code
  goes through (sign-in, sign-up, resend, adding a phone or an email), consumed the same
  way for known and unknown addresses so that a limit gives nobody away.
- ``sms_budget_available`` / ``sms_budget_consume``: daily budgets for text messages,
  overall and per country, with one email to staff per spent budget per day.
"""

import logging
from datetime import timedelta

import phonenumbers
from allauth.core import ratelimit
from django.conf import settings
from django.core.mail import mail_admins, send_mail
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone
from django.utils.crypto import salted_hmac

from accounts.models import SmsBudgetDay, UseCounter, User
from audit.models import SecurityEvent
from audit.services import security_event_record

logger = logging.getLogger(__name__)

ALL_COUNTRIES = "ALL"


# --- using a code: counted per code, across processes ------------------------------------
def code_key(*, purpose: str, user_id, issued_at, code: str) -> str:
    """A name for one issued code that does not reveal it (HMAC with SECRET_KEY)."""
    value = f"{purpose}:{user_id}:{issued_at}:{code}"
    return salted_hmac("accounts.codes.code_key", value, algorithm="sha256").hexdigest()


def use_counter_consume(*, key: str, limit: int, ttl_seconds: int) -> bool:
    """Count one use of ``key``; False (and nothing counted) once it was used ``limit`` times.

    The conditional UPDATE is atomic in every database: of any number of concurrent calls
    exactly ``limit`` succeed.
    """
    now = timezone.now()
    try:
        with transaction.atomic():
            UseCounter.objects.get_or_create(
                key=key, defaults={"expires_at": now + timedelta(seconds=ttl_seconds)}
            )
    except IntegrityError:
        pass  # created by a concurrent request in the meantime: count on its row
    used = UseCounter.objects.filter(key=key, uses__lt=limit).update(uses=F("uses") + 1)
    if used and UseCounter.objects.filter(expires_at__lt=now).exists():
        # Finished codes are only useful until they expire; a cheap sweep on the way.
        UseCounter.objects.filter(expires_at__lt=now).delete()
    return bool(used)


def code_attempt_consume(*, purpose: str, user_id, issued_at, code: str) -> bool:
    """Count one entry of the code ``code`` (issued at ``issued_at``): right or wrong alike.

    False once the code has been tried ``ACCOUNT_LOGIN_BY_CODE_MAX_ATTEMPTS`` times: then
    the code is spent and must not be accepted, however right.
    """
    # An unknown address has no code ("") yet is counted the same way: running out after
    # the same number of tries as a known one gives nothing away.
    return use_counter_consume(
        key=code_key(purpose=purpose, user_id=user_id, issued_at=issued_at, code=code),
        limit=settings.ACCOUNT_LOGIN_BY_CODE_MAX_ATTEMPTS,
        # The code expires after the timeout; the counter outlives it a little for clock skew.
        ttl_seconds=settings.ACCOUNT_LOGIN_BY_CODE_TIMEOUT + 60,
    )


# --- sending a code: per IP and per address, on every path ---------------------------------
def code_send_allowed(request, *, address: str) -> bool:
    """Consume one "send a code" from ``request``'s IP and for ``address`` (phone or email).

    Called before anything is looked up, for every address, so known and unknown addresses
    run out at the same moment. Phone numbers also count towards the tighter SMS limits.
    """
    address = address.lower()
    if not ratelimit.consume(request, action="send_code", key=address):
        return False
    if address.startswith("+"):
        return ratelimit.consume(request, action="send_sms_code", key=address)
    return True


# --- SMS budgets ---------------------------------------------------------------------------
def phone_country(*, phone: str) -> str:
    try:
        number = phonenumbers.parse(phone, None)
    except phonenumbers.NumberParseException:
        return "ZZ"
    return phonenumbers.region_code_for_number(number) or "ZZ"


def _budgets(*, phone: str) -> list[tuple[str, int]]:
    country = phone_country(phone=phone)
    country_budget = settings.SMS_COUNTRY_DAILY_BUDGETS.get(
        country, settings.SMS_OTHER_COUNTRY_DAILY_BUDGET
    )
    return [(ALL_COUNTRIES, settings.SMS_DAILY_BUDGET), (country, country_budget)]


def _today():
    return timezone.localdate()


def sms_budget_available(*, phone: str) -> bool:
    """True when today's budgets still allow a text to ``phone`` (reads, consumes nothing)."""
    rows = dict(
        SmsBudgetDay.objects.filter(
            day=_today(), scope__in=[scope for scope, _budget in _budgets(phone=phone)]
        ).values_list("scope", "sent")
    )
    return all(rows.get(scope, 0) < budget for scope, budget in _budgets(phone=phone))


def sms_budget_consume(*, phone: str) -> bool:
    """Count one text to ``phone`` against today's budgets; False (nothing sent) when spent.

    The overall budget is taken first and given back if the country's is spent, so both
    counters only ever count messages that were actually sent.
    """
    day = _today()
    taken = []
    for scope, budget in _budgets(phone=phone):
        try:
            with transaction.atomic():
                SmsBudgetDay.objects.get_or_create(day=day, scope=scope)
        except IntegrityError:
            pass
        if SmsBudgetDay.objects.filter(day=day, scope=scope, sent__lt=budget).update(
            sent=F("sent") + 1
        ):
            taken.append(scope)
            # Staff hear when the budget is reached, not only when a message is refused:
            # the sign-in forms stop asking for texts from that moment on.
            if SmsBudgetDay.objects.filter(day=day, scope=scope, sent__gte=budget).exists():
                _budget_spent(day=day, scope=scope, budget=budget)
            continue
        for earlier in taken:
            SmsBudgetDay.objects.filter(day=day, scope=earlier).update(sent=F("sent") - 1)
        _budget_spent(day=day, scope=scope, budget=budget)
        return False
    return True


def _budget_spent(*, day, scope: str, budget: int) -> None:
    logger.warning("SMS budget spent: scope=%s budget=%s day=%s", scope, budget, day)
    # Exactly one process wins this UPDATE, so staff get one email per budget per day.
    if not SmsBudgetDay.objects.filter(day=day, scope=scope, alerted=False).update(alerted=True):
        return
    _security_event(scope=scope, budget=budget)
    what = "all countries" if scope == ALL_COUNTRIES else f"numbers in {scope}"
    subject = f"[{settings.PLATFORM_NAME}] SMS budget reached: {what}"
    body = (
        f"Today's ({day}) budget of {budget} verification text messages to {what} is spent.\n"
        "No more codes go out by SMS to these numbers until tomorrow. If this is real demand, "
        "raise SMS_DAILY_BUDGET or SMS_COUNTRY_DAILY_BUDGETS; if it is not, someone is "
        "probably pumping SMS: look at the sign-up and sign-in logs.\n"
    )
    staff = list(
        User.objects.filter(is_staff=True, is_active=True, email__isnull=False)
        .exclude(email__endswith=".invalid")
        .values_list("email", flat=True)
    )
    try:
        if staff:
            send_mail(subject, body, settings.DEFAULT_FROM_EMAIL, staff)
        mail_admins(subject, body)
    except Exception:
        logger.exception("could not email staff about the SMS budget")


def _security_event(*, scope: str, budget: int) -> None:
    security_event_record(
        action=SecurityEvent.Action.SMS_BUDGET_REACHED,
        detail={"scope": scope, "budget": budget},
    )


def code_exhausted_first_time(*, purpose: str, user_id, issued_at, code: str) -> bool:
    """True for the first caller only: a code blocked by 60 parallel guesses is logged once."""
    key = code_key(purpose=f"exhausted-{purpose}", user_id=user_id, issued_at=issued_at, code=code)
    return use_counter_consume(
        key=key, limit=1, ttl_seconds=settings.ACCOUNT_LOGIN_BY_CODE_TIMEOUT + 60
    )
