from allauth.account import app_settings as allauth_settings
from allauth.account import views as allauth_views
from allauth.account.internal.flows.login_by_code import LoginCodeVerificationProcess
from allauth.account.stages import LoginByCodeStage, LoginStageController
from allauth.account.utils import get_login_redirect_url
from allauth.core import ratelimit
from django.conf import settings
from django.contrib import messages
from django.contrib.auth import logout
from django.contrib.auth.decorators import login_not_required, login_required
from django.core.exceptions import ValidationError
from django.http import Http404, HttpResponseRedirect
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import translation
from django.utils.decorators import method_decorator
from django.utils.translation import gettext as _
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_POST

from accounts import codes, selectors, services, verification
from accounts.challenge import (
    CHALLENGE_ERROR,
    challenge_enabled,
    challenge_issue,
    challenge_passed,
)
from accounts.forms import (
    SMS_UNAVAILABLE,
    AddEmailForm,
    AddPhoneForm,
    ConfirmCodeForm,
    DeleteAccountForm,
    LanguageForm,
)
from accounts.mfa import staff_mfa_missing
from audit import selectors as audit_selectors
from audit.models import SecurityEvent
from audit.services import security_event_record


# --- sign-in code entry (allauth's view with clearer messages and a resend cooldown) -------
@method_decorator(login_not_required, name="dispatch")
class ConfirmLoginCodeView(allauth_views.ConfirmLoginCodeView):
    @method_decorator(never_cache)
    def dispatch(self, request, *args, **kwargs):
        if request.user.is_authenticated:
            return HttpResponseRedirect(get_login_redirect_url(request))
        stage = LoginStageController.enter(request, LoginByCodeStage.key)
        if not stage:
            # Nothing waiting: the code was used already, or the sign-in was abandoned.
            if request.method == "POST":
                messages.error(request, _("This code has been used already. Ask for a new one."))
            return redirect("account_login")
        request._login_stage = stage
        self.stage = stage
        self._process = LoginCodeVerificationProcess.resume(stage)
        if not self._process:
            messages.error(request, _("This code has expired. Ask for a new one."))
            return redirect("account_login")
        # Skip allauth's own dispatch: it would repeat the lookups above without messages.
        return super(allauth_views.ConfirmLoginCodeView, self).dispatch(request, *args, **kwargs)

    def post(self, request, *args, **kwargs):
        # Count this entry against the code before looking at it. The session's own count
        # cannot be trusted here: parallel requests each carry the same snapshot of it.
        if self._action == "verify" and not self._attempt_allowed():
            self._record_exhausted()
            self._process.abort()
            messages.error(request, _("Too many wrong codes. Ask for a new code to try again."))
            return redirect("account_login")
        return super().post(request, *args, **kwargs)

    def _code_identity(self) -> dict:
        state = self._process.state
        return {
            "purpose": "login",
            "user_id": state.get("user_id"),
            "issued_at": state.get("at"),
            "code": self._process.code,
        }

    def _attempt_allowed(self) -> bool:
        return codes.code_attempt_consume(**self._code_identity())

    def _record_exhausted(self) -> None:
        if codes.code_exhausted_first_time(**self._code_identity()):
            security_event_record(
                action=SecurityEvent.Action.CODE_ATTEMPTS_EXHAUSTED, user=self._process.user
            )

    def _resend_form_valid(self, form):
        state = self._process.state
        address = (state.get("email") or state.get("phone") or "").lower()
        if not challenge_passed(self.request.POST):
            messages.error(self.request, CHALLENGE_ERROR)
            return HttpResponseRedirect(
                self.passthrough_next_url(reverse("account_confirm_login_code"))
            )
        if not (
            ratelimit.consume(self.request, action="resend_login_code", key=address)
            and codes.code_send_allowed(self.request, address=address)
        ):
            messages.error(self.request, _("Please wait a minute before asking for another code."))
            return HttpResponseRedirect(
                self.passthrough_next_url(reverse("account_confirm_login_code"))
            )
        return super()._resend_form_valid(form)

    def form_invalid(self, form):
        # The account is named only when the address has one; the log is staff-only.
        security_event_record(action=SecurityEvent.Action.SIGN_IN_FAILED, user=self._process.user)
        if self._process.record_invalid_attempt():
            self.attempts_left = (
                allauth_settings.LOGIN_BY_CODE_MAX_ATTEMPTS - self._process.state["failed_attempts"]
            )
            return super(allauth_views.ConfirmLoginCodeView, self).form_invalid(form)
        self._record_exhausted()
        messages.error(
            self.request,
            _("Too many wrong codes. Ask for a new code to try again."),
        )
        # The same page whether the sign-in began as a sign-up or a sign-in.
        return redirect("account_login")

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        context["attempts_left"] = getattr(self, "attempts_left", None)
        context["resend_challenge"] = challenge_issue() if challenge_enabled() else ""
        return context


confirm_login_code = ConfirmLoginCodeView.as_view()


# --- the Account page ----------------------------------------------------------------------
def _account_context(request, *, add_email_form=None, add_phone_form=None) -> dict:
    user = request.user
    pending = verification.pending_get(request)
    language = user.language or translation.get_language()
    return {
        "account": user,
        "email_verified": selectors.account_email_verified(user=user),
        "language_form": LanguageForm(initial={"language": language}),
        "add_email_form": None if user.email else (add_email_form or AddEmailForm()),
        "add_phone_form": None if user.phone else (add_phone_form or AddPhoneForm()),
        "pending": pending if pending and not pending.expired else None,
        "security_events": audit_selectors.security_events_for_account(user=user),
        "security_log_days": settings.SECURITY_LOG_RETENTION_DAYS,
        "mfa_enabled": user.is_staff and not staff_mfa_missing(user),
    }


@login_required
def account(request):
    return render(request, "accounts/account.html", _account_context(request))


@login_required
@require_POST
def language_set(request):
    form = LanguageForm(request.POST)
    if not form.is_valid():
        messages.error(request, _("Choose one of the offered languages."))
        return redirect("account")
    language = form.cleaned_data["language"]
    services.account_set_language(user=request.user, language=language)
    translation.activate(language)
    messages.success(request, _("Language saved."))
    response = redirect("account")
    response.set_cookie(
        settings.LANGUAGE_COOKIE_NAME,
        language,
        max_age=settings.LANGUAGE_COOKIE_AGE,
        samesite=settings.LANGUAGE_COOKIE_SAMESITE,
        secure=settings.LANGUAGE_COOKIE_SECURE,
    )
    return response


@login_required
@require_POST
def identifier_add(request, kind):
    if kind not in ("email", "phone"):
        raise Http404
    user = request.user
    form_class = AddEmailForm if kind == "email" else AddPhoneForm
    if getattr(user, kind):
        messages.error(request, _("Your account already has one."))
        return redirect("account")
    form = form_class(request.POST)
    if not form.is_valid():
        context = _account_context(request, **{f"add_{kind}_form": form})
        return render(request, "accounts/account.html", context, status=400)
    value = form.cleaned_data[kind]
    if not form.challenge_check():
        context = _account_context(request, **{f"add_{kind}_form": form})
        return render(request, "accounts/account.html", context, status=400)
    if not (
        ratelimit.consume(request, action="add_identifier", key=value.lower(), user=user)
        and codes.code_send_allowed(request, address=value)
    ):
        messages.error(request, _("Please wait a minute before asking for another code."))
        return redirect("account")
    if kind == "phone" and not codes.sms_budget_available(phone=value):
        messages.error(request, SMS_UNAVAILABLE)
        return redirect("account")
    verification.identifier_start(request, kind=kind, value=value)
    return redirect("account_identifier_confirm")


@login_required
@never_cache
def identifier_confirm(request):
    pending = verification.pending_get(request)
    if pending is None:
        messages.error(request, _("Nothing is waiting for a code. Start again below."))
        return redirect("account")
    if pending.expired:
        verification.pending_clear(request)
        messages.error(request, _("This code has expired. Ask for a new one."))
        return redirect("account")
    form = ConfirmCodeForm(request.POST or None)
    if request.method == "POST":
        if request.POST.get("action") == "cancel":
            verification.pending_clear(request)
            return redirect("account")
        if form.is_valid():
            if verification.identifier_check(request, pending, form.cleaned_data["code"]):
                return _identifier_save(request, pending)
            if pending.attempts_left == 0:
                messages.error(request, _("Too many wrong codes. Ask for a new code to try again."))
                return redirect("account")
            form.add_error(
                "code", _("That code is not right. Check the latest message and try again.")
            )
    return render(request, "accounts/identifier_confirm.html", {"form": form, "pending": pending})


def _identifier_save(request, pending):
    try:
        if pending.kind == "email":
            services.account_add_email(user=request.user, email=pending.value)
        else:
            services.account_add_phone(user=request.user, phone=pending.value)
    except ValidationError:
        # Taken by another account between sending the code and entering it.
        messages.error(request, _("This address cannot be added to your account."))
        return redirect("account")
    messages.success(request, _("Added and verified."))
    return redirect("account")


@login_required
def account_delete(request):
    form = DeleteAccountForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        services.account_delete(user=request.user)
        logout(request)
        messages.success(
            request,
            _("Your account is closed and its API keys no longer work."),
        )
        return redirect("home")
    return render(request, "accounts/delete.html", {"form": form})
