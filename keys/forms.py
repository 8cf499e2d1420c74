from django import forms
from django.utils.translation import gettext_lazy as _

from keys.services import NAME_MAX_LENGTH


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
