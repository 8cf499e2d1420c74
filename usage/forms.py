import datetime as dt

from django import forms
from django.utils.translation import gettext_lazy as _

from usage.models import QuotaApplication
from usage.selectors import MAX_RANGE_DAYS


class QuotaApplicationForm(forms.ModelForm):
    class Meta:
        model = QuotaApplication
        fields = ["intended_use", "company", "expected_daily_tokens", "contact"]
        widgets = {
            "intended_use": forms.Textarea(attrs={"rows": 3, "maxlength": 2000}),
            "expected_daily_tokens": forms.NumberInput(attrs={"min": 1, "step": 1000}),
        }
        help_texts = {
            "intended_use": _("What you are building and why the free allowance is not enough."),
            "company": _("Optional."),
            "expected_daily_tokens": _("Input and output tokens together, per day."),
            "contact": _("An email address or phone number where we can reach you."),
        }

    def clean_intended_use(self):
        value = self.cleaned_data["intended_use"].strip()
        if len(value) > 2000:
            raise forms.ValidationError(_("Please keep it under 2,000 characters."))
        return value


class ExportForm(forms.Form):
    KIND_DAILY = "daily"
    KIND_REQUESTS = "requests"

    start = forms.DateField(label=_("From"), widget=forms.DateInput(attrs={"type": "date"}))
    end = forms.DateField(label=_("To"), widget=forms.DateInput(attrs={"type": "date"}))
    kind = forms.ChoiceField(
        label=_("Rows"),
        choices=[
            (KIND_DAILY, _("One row per day, key and model")),
            (KIND_REQUESTS, _("One row per request")),
        ],
        initial=KIND_DAILY,
    )

    def clean(self):
        data = super().clean()
        start, end = data.get("start"), data.get("end")
        if start and end:
            if end < start:
                raise forms.ValidationError(_("The end date is before the start date."))
            if (end - start) > dt.timedelta(days=MAX_RANGE_DAYS):
                raise forms.ValidationError(
                    _("Export at most %(days)d days at a time.") % {"days": MAX_RANGE_DAYS}
                )
        return data
