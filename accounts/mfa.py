"""Two-factor authentication for staff: required before the staff pages when
``STAFF_REQUIRE_MFA`` is on.

A staff account reaches the admin (every account, every key) and the quota review. With the
setting on, a staff member without an authenticator app is sent to set one up first; once it
is on, allauth asks for its code at every sign-in.
"""

from allauth.mfa.adapter import DefaultMFAAdapter
from allauth.mfa.models import Authenticator
from allauth.mfa.signals import authenticator_added, authenticator_removed
from django.conf import settings
from django.contrib import messages
from django.dispatch import receiver
from django.shortcuts import redirect
from django.utils.translation import gettext as _

from audit.models import SecurityEvent
from audit.services import security_event_record

STAFF_PREFIXES = ("/admin/", "/review/", "/staff/")


def staff_mfa_missing(user) -> bool:
    return (
        user.is_authenticated
        and user.is_staff
        and not Authenticator.objects.filter(user=user, type=Authenticator.Type.TOTP).exists()
    )


def staff_mfa_middleware(get_response):
    def middleware(request):
        if (
            settings.STAFF_REQUIRE_MFA
            and request.path.startswith(STAFF_PREFIXES)
            and staff_mfa_missing(request.user)
        ):
            messages.warning(
                request,
                _("Staff pages need two-factor authentication. Set up an authenticator app first."),
            )
            return redirect("mfa_activate_totp")
        return get_response(request)

    return middleware


class MfaAdapter(DefaultMFAAdapter):
    def get_totp_label(self, user) -> str:
        # Accounts may have only a phone number: label the app's entry with whichever it has.
        return user.identifier

    def get_totp_issuer(self) -> str:
        return settings.PLATFORM_NAME

    def can_delete_authenticator(self, authenticator) -> bool:
        # Turning it off would only send the staff member straight back to set it up.
        if settings.STAFF_REQUIRE_MFA and authenticator.user.is_staff:
            return authenticator.type != Authenticator.Type.TOTP
        return super().can_delete_authenticator(authenticator)


@receiver(authenticator_added)
def _mfa_added(sender, request, user, authenticator, **kwargs):
    if authenticator.type == Authenticator.Type.TOTP:
        security_event_record(action=SecurityEvent.Action.MFA_ENABLED, user=user, request=request)


@receiver(authenticator_removed)
def _mfa_removed(sender, request, user, authenticator, **kwargs):
    if authenticator.type == Authenticator.Type.TOTP:
        security_event_record(action=SecurityEvent.Action.MFA_DISABLED, user=user, request=request)
