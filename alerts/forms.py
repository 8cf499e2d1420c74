from django import forms
from django.utils.translation import gettext_lazy as _

from alerts.detection import THRESHOLD_MAX, THRESHOLD_MIN
from alerts.webhooks import webhook_port, webhook_url_problem

MAX_THRESHOLDS = 5


def _parse_thresholds(value: str) -> list[int]:
    """``80, 100`` -> [80, 100]; empty -> [] (alerts off)."""
    parts = [
        part.strip().rstrip("%").strip()
        for part in value.replace("\uff0c", ",").split(",")  # a Chinese keyboard's comma
    ]
    parts = [part for part in parts if part]
    try:
        numbers = sorted({int(part) for part in parts})
    except ValueError:
        raise forms.ValidationError(
            _("Enter whole percentages separated by commas, for example 80, 100.")
        ) from None
    if any(not THRESHOLD_MIN <= n <= THRESHOLD_MAX for n in numbers):
        raise forms.ValidationError(
            _("Each threshold must be between %(min)d and %(max)d.")
            % {"min": THRESHOLD_MIN, "max": THRESHOLD_MAX}
        )
    if len(numbers) > MAX_THRESHOLDS:
        raise forms.ValidationError(_("At most %(n)d thresholds.") % {"n": MAX_THRESHOLDS})
    return numbers


class AlertSettingsForm(forms.Form):
    thresholds = forms.CharField(
        label=_("Alert me at these percentages of my daily quota"),
        required=False,
        max_length=64,
        help_text=_("Comma-separated, for example 80, 100. Leave empty to switch alerts off."),
    )
    key_thresholds = forms.CharField(
        label=_("…and of a key's daily cap"),
        required=False,
        max_length=64,
        help_text=_("Applies to every key that has a daily cap."),
    )
    webhook_url = forms.URLField(
        label=_("Webhook URL (optional)"),
        required=False,
        max_length=500,
        assume_scheme="https",
        help_text=_("We POST a signed JSON message here too. HTTPS only."),
    )

    def clean_thresholds(self):
        return _parse_thresholds(self.cleaned_data["thresholds"])

    def clean_key_thresholds(self):
        return _parse_thresholds(self.cleaned_data["key_thresholds"])

    def clean_webhook_url(self):
        url = self.cleaned_data["webhook_url"].strip()
        if url and webhook_url_problem(url):
            if webhook_port(url) is None:
                raise forms.ValidationError(_("The port must be a number from 1 to 65535."))
            raise forms.ValidationError(_("Enter an https:// URL without a user name or password."))
        return url

    @classmethod
    def for_settings(cls, row):
        return cls(
            initial={
                "thresholds": ", ".join(str(n) for n in row.thresholds),
                "key_thresholds": ", ".join(str(n) for n in row.key_thresholds),
                "webhook_url": row.webhook_url,
            }
        )
