"""allauth, fitted to our accounts: phone or email, codes only, one service creates users."""

import logging
import time

from allauth.account import app_settings as account_settings
from allauth.account.adapter import DefaultAccountAdapter
from allauth.account.internal.flows.login import get_authentication_records
from allauth.core import context as allauth_context
from django.conf import settings
from django.utils import translation
from django.utils.translation import gettext_lazy as _

from accounts import codes, delivery, selectors, services, sms
from accounts.identifiers import phone_mask
from accounts.models import Region
from audit.models import SecurityEvent
from audit.services import security_event_record

logger = logging.getLogger(__name__)


class AccountAdapter(DefaultAccountAdapter):
    error_messages = {
        **DefaultAccountAdapter.error_messages,
        "incorrect_code": _("That code is not right. Check the latest message and try again."),
        "too_many_login_attempts": _(
            "Too many attempts. Wait a few minutes, then ask for a new code."
        ),
        "rate_limited": _("Please wait a minute before asking for another code."),
        "select_only_one": _("Enter a phone number or an email address, not both."),
        "phone_taken": _("This phone number cannot be used."),
        "email_taken": _("This email address cannot be used."),
        "account_inactive": _("This account is closed or disabled."),
    }

    # --- accounts are created by accounts.services, nowhere else --------------------------
    def save_user(self, request, user, form, commit=True):
        """Create the account (and its ``default`` key) through ``account_create``.

        ``user`` is the unsaved instance from ``new_user``; it is replaced by the saved one
        (allauth uses the returned user since 65.19.4).
        """
        data = form.cleaned_data
        return services.account_create(
            email=data.get("email") or None,
            phone=data.get("phone") or None,
            region=data.get("region") or Region.OTHER,
            language=_supported_language(translation.get_language()),
        )

    # --- email: our templates name the platform and the support address -------------------
    def send_mail(self, template_prefix: str, email: str, context: dict) -> None:
        context = {
            "PLATFORM_NAME": settings.PLATFORM_NAME,
            "SUPPORT_EMAIL": settings.SUPPORT_EMAIL,
            "SUPPORT_PHONE": settings.SUPPORT_PHONE,
            **context,
        }
        # Rendered here (the request's language, its URLs); only the sending waits.
        message = self.render_mail(template_prefix, email, context)
        delivery.deliver(message.send)

    # --- phone numbers live on the User row ----------------------------------------------
    def phone_form_field(self, **kwargs):
        from accounts.forms import PhoneField

        return PhoneField(**kwargs)

    def clean_phone(self, phone: str) -> str:
        return phone

    def set_phone(self, user, phone: str, verified: bool) -> None:
        services.account_set_phone(user=user, phone=phone, verified=verified)

    def get_phone(self, user):
        if not user.phone:
            return None
        return user.phone, user.phone_verified

    def set_phone_verified(self, user, phone: str) -> None:
        services.account_set_phone(user=user, phone=phone, verified=True)

    def get_user_by_phone(self, phone: str):
        return selectors.account_get_by_phone(phone=phone)

    def send_verification_code_sms(self, user, phone: str, code: str, **kwargs) -> None:
        delivery.deliver(_send_sms, phone=phone, code=code)

    def send_unknown_account_sms(self, phone: str, **kwargs) -> None:
        # Providers only carry our approved code template, so an unknown number gets no
        # text at all; the page looks exactly as for a known one.
        logger.info("sign-in code asked for an unknown number %s", phone_mask(phone))

    def send_account_already_exists_sms(self, phone: str) -> None:
        logger.info("sign-up asked for a number that has an account %s", phone_mask(phone))

    # --- reauthentication: a fresh code sign-in counts -----------------------------------
    def is_reauthentication_required(self, *, app: str, **kwargs) -> bool:
        """allauth asks for the password again before 2FA changes; accounts here sign in by
        code, so a sign-in finished within ACCOUNT_REAUTHENTICATION_TIMEOUT is as fresh as
        reauthenticating (allauth would otherwise send staff to a password they never use)."""
        if not super().is_reauthentication_required(app=app, **kwargs):
            return False
        request = allauth_context.request
        if request is None or not request.user.is_authenticated:
            return True
        records = get_authentication_records(request, request.user)
        return not records or (
            time.time() - records[-1]["at"] >= account_settings.REAUTHENTICATION_TIMEOUT
        )

    # --- after sign-in: the account's language preference wins ---------------------------
    def post_login(self, request, user, **kwargs):
        response = super().post_login(request, user, **kwargs)
        # Staff sign-ins are logged apart: since /admin/login/ comes here, they are admin logins.
        action = (
            SecurityEvent.Action.STAFF_SIGN_IN if user.is_staff else SecurityEvent.Action.SIGN_IN
        )
        security_event_record(action=action, user=user, request=request)
        if user.language:
            translation.activate(user.language)
            response.set_cookie(
                settings.LANGUAGE_COOKIE_NAME,
                user.language,
                max_age=settings.LANGUAGE_COOKIE_AGE,
                samesite=settings.LANGUAGE_COOKIE_SAMESITE,
                secure=settings.LANGUAGE_COOKIE_SECURE,
            )
        return response


def _supported_language(code: str | None) -> str:
    supported = {language for language, _name in settings.LANGUAGES}
    return code if code in supported else ""


def _send_sms(*, phone: str, code: str) -> None:
    """One code by text message, if today's SMS budget allows (on the delivery threads)."""
    if not codes.sms_budget_consume(phone=phone):
        # Today's budget is spent (staff have been emailed): the page read as usual.
        logger.warning("SMS budget spent, no code sent to %s", phone_mask(phone))
        return
    try:
        sms.send_code(phone=phone, code=code)
    except sms.SmsDeliveryError as exc:
        # The page still said "sent" (the same as for an unknown number); the help text
        # offers the other channel and support. The reason goes to the log, never the code.
        logger.error("could not send a code to %s: %s", phone_mask(phone), exc)
