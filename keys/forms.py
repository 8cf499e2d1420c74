from django import forms
from django.utils.translation import gettext_lazy as _

from keys.controls import (
    DAILY_TOKEN_CAP_MAX,
    MAX_ALLOWED_IPS,
    MAX_ALLOWED_MODELS,
    MAX_CONCURRENT_REQUESTS_MAX,
    MODEL_NAME_MAX_LENGTH,
    split_list,
)
from keys.services import NAME_MAX_LENGTH

# Room for the longest allowed lists (an IPv6 range is at most 43 characters), with their
# line breaks and some spaces; a longer text is refused before it is split and parsed.
ALLOWED_IPS_TEXT_MAX_LENGTH = MAX_ALLOWED_IPS * 64
ALLOWED_MODELS_TEXT_MAX_LENGTH = MAX_ALLOWED_MODELS * (MODEL_NAME_MAX_LENGTH + 8)


class ApiKeyNameForm(forms.Form):
    """The name of a key, for create and rename; the service has the final word on it."""

    name = forms.CharField(
        label=_("Name"),
        max_length=NAME_MAX_LENGTH,
        help_text=_("For example the application or machine that will use the key."),
        widget=forms.TextInput(attrs={"autocomplete": "off", "spellcheck": "false"}),
    )


class ApiKeyStatusForm(forms.Form):
    is_active = forms.TypedChoiceField(
        choices=[("1", _("Enabled")), ("0", _("Disabled"))],
        coerce=lambda value: value == "1",
    )


class ApiKeyControlsForm(forms.Form):
    """A key's own limits, for the create form and the key's page; all optional. The service
    (``api_key_set_controls``) validates and normalises them and has the final word."""

    daily_token_cap = forms.IntegerField(
        label=_("Daily token cap"),
        required=False,
        min_value=1,
        max_value=DAILY_TOKEN_CAP_MAX,
        help_text=_("Tokens this key may use per quota day, inside your account's quota."),
    )
    allowed_models = forms.CharField(
        label=_("Allowed models"),
        required=False,
        max_length=ALLOWED_MODELS_TEXT_MAX_LENGTH,
        widget=forms.Textarea(attrs={"rows": 2, "spellcheck": "false"}),
        help_text=_("Model names, one per line or separated by commas. Empty: every model."),
    )
    expires_at = forms.DateTimeField(
        label=_("Expires at"),
        required=False,
        input_formats=["%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M", "%Y-%m-%d"],
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}, format="%Y-%m-%dT%H:%M"),
    )
    allowed_ips = forms.CharField(
        label=_("Allowed IP addresses"),
        required=False,
        max_length=ALLOWED_IPS_TEXT_MAX_LENGTH,
        widget=forms.Textarea(attrs={"rows": 2, "spellcheck": "false"}),
        help_text=_(
            "Addresses or CIDR ranges, IPv4 or IPv6 (203.0.113.7, 203.0.113.0/24, "
            "2001:db8::/32), one per line. Empty: any address."
        ),
    )
    max_concurrent_requests = forms.IntegerField(
        label=_("Concurrent requests"),
        required=False,
        min_value=1,
        max_value=MAX_CONCURRENT_REQUESTS_MAX,
        help_text=_("At most this many requests with this key at the same time."),
    )

    def __init__(self, *args, zone, stored_expires_at=None, **kwargs):
        # The expiry is entered in the platform's quota time zone, the clock of its days.
        self.zone = zone
        self.stored_expires_at = stored_expires_at
        super().__init__(*args, **kwargs)
        self.fields["expires_at"].help_text = _(
            "In %(zone)s time. Empty: the key never expires."
        ) % {"zone": zone.key}

    @classmethod
    def for_key(cls, api_key, *, zone, data=None):
        initial = {
            "daily_token_cap": api_key.daily_token_cap,
            "allowed_models": "\n".join(api_key.allowed_models),
            "expires_at": api_key.expires_at.astimezone(zone).replace(tzinfo=None)
            if api_key.expires_at
            else None,
            "allowed_ips": "\n".join(api_key.allowed_ips),
            "max_concurrent_requests": api_key.max_concurrent_requests,
        }
        return cls(data, zone=zone, initial=initial, stored_expires_at=api_key.expires_at)

    def clean_expires_at(self):
        value = self.cleaned_data["expires_at"]
        if value is None:
            return None
        value = value.replace(tzinfo=None).replace(tzinfo=self.zone)
        stored = self.stored_expires_at
        if stored is not None and value == stored.astimezone(self.zone).replace(
            second=0, microsecond=0
        ):
            # The field shows minutes only: the key's own expiry, sent back unchanged, keeps
            # its seconds (set through the REST API) instead of becoming a new, earlier time.
            return stored
        return value

    def controls(self) -> dict:
        """The cleaned values as ``api_key_set_controls`` keywords."""
        data = self.cleaned_data
        return {
            "daily_token_cap": data["daily_token_cap"],
            "allowed_models": split_list(data["allowed_models"]),
            "expires_at": data["expires_at"],
            "allowed_ips": split_list(data["allowed_ips"]),
            "max_concurrent_requests": data["max_concurrent_requests"],
        }
