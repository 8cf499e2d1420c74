"""Sign-up and sign-in forms (allauth's, narrowed to phone-or-email) and the Account page forms."""

from allauth.account import forms as allauth_forms
from allauth.account.internal.flows.login_by_code import LoginCodeVerificationProcess
from allauth.account.utils import filter_users_by_email
from allauth.core import context as allauth_context
from allauth.core import ratelimit
from django import forms
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.shortcuts import redirect
from django.utils import translation
from django.utils.translation import gettext_lazy as _

from accounts import codes, selectors
from accounts.challenge import ChallengeFormMixin
from accounts.identifiers import email_normalize, identifier_parse, phone_normalize
from accounts.models import Region

REGION_HELP = _(
    "Mainland China accounts use a mainland mobile number. Outside mainland China, use a "
    "mobile number with its country code or an email address."
)


class PhoneField(forms.CharField):
    """A phone number typed by a person, cleaned to E.164.

    Without a region it accepts ``+<country code>…`` or a bare 11-digit mainland mobile
    number; forms that know the region re-check it with ``phone_normalize(…, region=…)``.
    """

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("label", _("Mobile number"))
        kwargs.setdefault("max_length", 32)
        kwargs.setdefault(
            "widget",
            forms.TextInput(
                attrs={
                    "type": "tel",
                    "autocomplete": "tel",
                    "inputmode": "tel",
                    "placeholder": _("e.g. 138 0013 8000 or +44 7911 123456"),
                }
            ),
        )
        super().__init__(*args, **kwargs)

    def clean(self, value):
        value = super().clean(value)
        if not value:
            return value
        return phone_normalize(value)


def region_field() -> forms.ChoiceField:
    return forms.ChoiceField(
        label=_("Where are you?"),
        choices=Region.choices,
        widget=forms.RadioSelect,
        help_text=REGION_HELP,
    )


def default_region() -> str:
    language = translation.get_language() or ""
    return Region.MAINLAND_CHINA if language.startswith("zh") else Region.OTHER


class LoginForm(ChallengeFormMixin, allauth_forms.LoginForm):
    """Sign in: a region and one box for a phone number or an email address; a code follows."""

    field_order = ["region", "login"]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["region"] = region_field()
        self.fields["region"].initial = default_region()
        self.fields["login"] = forms.CharField(
            label=_("Mobile number or email address"),
            max_length=254,
            widget=forms.TextInput(
                attrs={"autocomplete": "username", "autofocus": True, "spellcheck": "false"}
            ),
        )
        self.order_fields(self.field_order)
        self._credentials = {}

    def clean(self):
        cleaned = forms.Form.clean(self)
        if self._errors:
            return cleaned
        try:
            kind, value = identifier_parse(cleaned["login"], region=cleaned["region"])
        except ValidationError as error:
            self.add_error("login", error)
            return cleaned
        self._credentials = {kind: value}
        if not code_send_checks(self, address=value):
            return cleaned
        return self._clean_without_password(
            self._credentials.get("email"), self._credentials.get("phone")
        )

    def user_credentials(self) -> dict:
        return dict(self._credentials)


class ConfirmLoginCodeForm(allauth_forms.ConfirmLoginCodeForm):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["code"].label = _("6-digit code")
        self.fields["code"].widget.attrs.update(
            {"inputmode": "numeric", "autofocus": True, "placeholder": "", "maxlength": "16"}
        )


class SignupForm(ChallengeFormMixin, allauth_forms.SignupForm):
    """Sign up with exactly one of: a mainland mobile number, another mobile number, an email.

    An address that already has an account gets a sign-in code for that account instead: the
    page that follows is the same either way, so sign-up reveals nothing about who is
    registered, and the owner simply signs in.
    """

    field_order = ["region", "phone", "email"]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["region"] = region_field()
        self.fields["region"].initial = default_region()
        self.fields["phone"].label = _("Mobile number")
        self.fields["email"].label = _("Email address")
        self.fields["email"].help_text = _(
            "Outside mainland China only. Leave empty to use a phone."
        )
        self.order_fields(self.field_order)

    def clean(self):
        cleaned = super().clean()
        region = cleaned.get("region")
        phone, email = cleaned.get("phone"), cleaned.get("email")
        if not region or "phone" in self._errors or "email" in self._errors:
            return cleaned
        if region == Region.MAINLAND_CHINA:
            if email:
                self.add_error(
                    "email",
                    _("Mainland China accounts sign up with a mobile number; leave this empty."),
                )
            elif not phone:
                self.add_error("phone", _("Enter your mobile number."))
        elif phone and email:
            self.add_error(None, _("Enter a mobile number or an email address, not both."))
        elif not phone and not email:
            self.add_error(None, _("Enter a mobile number or an email address."))
        if phone and region and not self._errors:
            try:
                cleaned["phone"] = phone_normalize(self.data.get("phone", ""), region=region)
            except ValidationError as error:
                self.add_error("phone", error)
        if not self._errors:
            # Same per-address limit as asking for a sign-in code, for new and known
            # addresses alike (a limit hit only by known ones would give them away).
            address = cleaned.get("phone") or cleaned.get("email")
            if not ratelimit.consume(
                allauth_context.request, action="request_login_code", key=address.lower()
            ):
                self.add_error(None, _("Please wait a few minutes before trying again."))
            else:
                code_send_checks(self, address=address)
        return cleaned

    def validate_unique_email(self, value):
        # allauth would refuse a known address outright unless email verification is
        # "mandatory"; here every sign-up is followed by a code anyway, so a known address
        # takes the sign-in path in try_save() and the page reads the same.
        self.account_already_exists = bool(filter_users_by_email(value))
        return value

    def try_save(self, request):
        if not self.account_already_exists:
            return super().try_save(request)
        phone, email = self.cleaned_data.get("phone"), self.cleaned_data.get("email")
        if phone:
            user = selectors.account_get_by_phone(phone=phone)
        else:
            user = selectors.account_get_by_email(email=email)
        LoginCodeVerificationProcess.initiate(request=request, user=user, email=email, phone=phone)
        return None, redirect("account_confirm_login_code")


def code_send_checks(form, *, address: str) -> bool:
    """What every form that sends a code checks first, the same for known and unknown
    addresses: the proof-of-work challenge (when on), the per-IP and per-address limits,
    and, for a phone number, that today's SMS budget is not spent."""
    if not form.challenge_check():
        return False
    if not codes.code_send_allowed(allauth_context.request, address=address):
        form.add_error(None, _("Please wait a few minutes before trying again."))
        return False
    if address.startswith("+") and not codes.sms_budget_available(phone=address):
        form.add_error(None, SMS_UNAVAILABLE)
        return False
    return True


SMS_UNAVAILABLE = _(
    "We cannot send text messages to this number right now. Try again tomorrow, use an "
    "email address, or contact support."
)


# --- Account page -----------------------------------------------------------------------
class LanguageForm(forms.Form):
    language = forms.ChoiceField(label=_("Language"), choices=settings.LANGUAGES)


class AddEmailForm(ChallengeFormMixin, forms.Form):
    email = forms.EmailField(
        label=_("Email address"),
        max_length=254,
        widget=forms.EmailInput(attrs={"autocomplete": "email"}),
    )

    def clean_email(self):
        return email_normalize(self.cleaned_data["email"])


class AddPhoneForm(ChallengeFormMixin, forms.Form):
    phone = PhoneField()


class ConfirmCodeForm(forms.Form):
    code = forms.CharField(
        label=_("Code"),
        max_length=16,
        widget=forms.TextInput(
            attrs={"autocomplete": "one-time-code", "inputmode": "numeric", "autofocus": True}
        ),
    )


class DeleteAccountForm(forms.Form):
    confirm = forms.CharField(
        label=_("Type DELETE to confirm"),
        max_length=16,
        widget=forms.TextInput(attrs={"autocomplete": "off"}),
    )

    def clean_confirm(self):
        value = self.cleaned_data["confirm"].strip()
        if value.upper() != "DELETE":
            raise ValidationError(_("Type DELETE (in capitals or not) to confirm."))
        return value


class AdminAccountCreationForm(forms.ModelForm):
    """The admin's "add account" form: one of email or phone; saved through ``account_create``."""

    password = forms.CharField(
        label=_("Password (staff only, optional)"),
        required=False,
        strip=False,
        widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}),
    )

    class Meta:
        model = get_user_model()
        fields = ["email", "phone", "region", "is_staff"]

    def clean_email(self):
        email = self.cleaned_data.get("email")
        return email_normalize(email) if email else None

    def clean_phone(self):
        phone = self.cleaned_data.get("phone")
        return phone_normalize(phone) if phone else None

    def clean(self):
        cleaned = super().clean()
        if not cleaned.get("email") and not cleaned.get("phone"):
            raise ValidationError(_("Give an email address or a phone number."))
        return cleaned

    def save(self, commit=True):
        from accounts.services import account_create

        data = self.cleaned_data
        self.instance = account_create(
            email=data.get("email"),
            phone=data.get("phone"),
            password=data.get("password") or None,
            region=data.get("region") or Region.OTHER,
            is_staff=bool(data.get("is_staff")),
        )
        return self.instance

    def save_m2m(self):
        pass
