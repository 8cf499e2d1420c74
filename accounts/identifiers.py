"""How people type their phone number or email, and how we store it.

Phone numbers are stored in E.164 (``+8613800138000``); email addresses lower-cased.
A mainland China user may type a bare 11-digit mobile number: it gets +86. Everyone
else types the country code.
"""

import re

import phonenumbers
from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.utils.translation import gettext_lazy as _

from accounts.models import Region

MAINLAND_COUNTRY_CODE = 86
_SEPARATORS = re.compile(r"[\s\-().]")
_BARE_MAINLAND_MOBILE = re.compile(r"^1\d{10}$")
# Text messages need a number that can receive them.
_SMS_CAPABLE_TYPES = {
    phonenumbers.PhoneNumberType.MOBILE,
    phonenumbers.PhoneNumberType.FIXED_LINE_OR_MOBILE,
}


def phone_normalize(value: str, *, region: str | None = None) -> str:
    """Return ``value`` as an E.164 mobile number or raise ``ValidationError``.

    ``region`` is ``Region.MAINLAND_CHINA``, ``Region.OTHER`` or ``None`` (unknown: then a
    bare 11-digit number starting with 1 is still taken as a mainland mobile number).
    """
    raw = _SEPARATORS.sub("", value or "")
    if raw.startswith("00"):
        raw = "+" + raw[2:]
    if not raw:
        raise ValidationError(_("Enter a phone number."), code="required")
    if raw.startswith("+"):
        default_region = None
    elif region == Region.MAINLAND_CHINA or (region is None and _BARE_MAINLAND_MOBILE.match(raw)):
        default_region = "CN"
    else:
        raise ValidationError(
            _("Start the number with its country code, for example +44 7911 123456."),
            code="country_code",
        )
    try:
        number = phonenumbers.parse(raw, default_region)
    except phonenumbers.NumberParseException:
        raise ValidationError(
            _("This is not a phone number we can read."), code="invalid"
        ) from None
    if not phonenumbers.is_valid_number(number):
        raise ValidationError(_("This is not a valid phone number."), code="invalid")
    if region == Region.MAINLAND_CHINA and number.country_code != MAINLAND_COUNTRY_CODE:
        raise ValidationError(
            _(
                "Mainland China accounts use a +86 mobile number. For other numbers choose "
                "“Outside mainland China”."
            ),
            code="not_mainland",
        )
    if phonenumbers.number_type(number) not in _SMS_CAPABLE_TYPES:
        raise ValidationError(
            _("Enter a mobile number: the code is sent by text message."), code="not_mobile"
        )
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def email_normalize(value: str) -> str:
    email = (value or "").strip().lower()
    validate_email(email)
    return email


def identifier_parse(value: str, *, region: str) -> tuple[str, str]:
    """Read one identifier typed into a single box: ``("email", …)`` or ``("phone", …)``."""
    value = (value or "").strip()
    if "@" in value:
        if region == Region.MAINLAND_CHINA:
            raise ValidationError(
                _(
                    "Mainland China accounts sign in with a phone number. To use an email "
                    "address choose “Outside mainland China”."
                ),
                code="email_in_mainland",
            )
        try:
            return "email", email_normalize(value)
        except ValidationError:
            raise ValidationError(_("This is not a valid email address."), code="invalid") from None
    return "phone", phone_normalize(value, region=region)


def phone_mask(phone: str) -> str:
    """``+8613800138000`` → ``+86 138****8000``: enough to recognise, not to copy."""
    try:
        number = phonenumbers.parse(phone, None)
    except phonenumbers.NumberParseException:
        return phone
    national = str(number.national_number)
    if len(national) <= 6:
        return f"+{number.country_code} {national}"
    return f"+{number.country_code} {national[:3]}{'*' * (len(national) - 7)}{national[-4:]}"
