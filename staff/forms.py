from django import forms
from django.utils.translation import gettext_lazy as _

from usage.services import MAX_EXPECTED_DAILY_TOKENS

# Common reasons for a rejection, one click away; the reviewer may add to them. The applicant
# reads the text in the reviewer's language at the time of the decision.
REJECTION_REASONS = {
    "detail": _(
        "Please tell us more about what you are building and how many tokens a day it needs."
    ),
    "usage": _(
        "Your recent usage does not come close to the free quota yet. Apply again when it does."
    ),
    "contact": _(
        "We could not reach you at the contact you gave. Apply again with a working email "
        "address or phone number."
    ),
    "terms": _("We cannot support this use under our terms of service."),
}


def _reason_choices():
    return [("", _("— write your own —")), *REJECTION_REASONS.items()]


def _combined_reason(data) -> str:
    parts = [str(REJECTION_REASONS.get(data.get("reason_template") or "", "")).strip()]
    parts.append((data.get("reason") or "").strip())
    return " ".join(p for p in parts if p)


class ReviewDecisionForm(forms.Form):
    decision = forms.ChoiceField(choices=[("approve", _("Approve")), ("reject", _("Reject"))])
    # Empty: the standard INCREASED_DAILY_QUOTA.
    custom_quota = forms.IntegerField(
        label=_("Custom quota (tokens a day)"),
        required=False,
        min_value=1,
        max_value=MAX_EXPECTED_DAILY_TOKENS,
    )
    reason_template = forms.ChoiceField(
        label=_("Common reason"), choices=_reason_choices, required=False
    )
    reason = forms.CharField(
        label=_("Note to the applicant"),
        required=False,
        max_length=2000,
        widget=forms.Textarea(attrs={"rows": 2}),
    )

    def clean(self):
        data = super().clean()
        data["reason"] = _combined_reason(data)
        if data.get("decision") == "reject" and not data["reason"]:
            self.add_error("reason", _("A rejection needs a reason for the applicant."))
        data["quota"] = data.get("custom_quota") if data.get("decision") == "approve" else None
        return data


class BulkDecisionForm(forms.Form):
    decision = forms.ChoiceField(
        choices=[("approve", _("Approve selected")), ("reject", _("Reject selected"))]
    )
    applications = forms.TypedMultipleChoiceField(coerce=str, choices=[])
    reason_template = forms.ChoiceField(
        label=_("Common reason"), choices=_reason_choices, required=False
    )
    reason = forms.CharField(
        label=_("Reason for all of them"),
        required=False,
        max_length=2000,
        widget=forms.Textarea(attrs={"rows": 2}),
    )

    def __init__(self, *args, pending_ids=(), **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["applications"].choices = [(str(p), str(p)) for p in pending_ids]
        self.fields["applications"].error_messages["required"] = _(
            "Select at least one application."
        )
        self.fields["applications"].error_messages["invalid_choice"] = _(
            "An application you selected is no longer waiting."
        )

    def clean(self):
        data = super().clean()
        data["reason"] = _combined_reason(data)
        if data.get("decision") == "reject" and not data["reason"]:
            self.add_error("reason", _("A rejection needs a reason for the applicant."))
        return data


class ReasonForm(forms.Form):
    reason = forms.CharField(
        label=_("Reason (for the security log)"),
        max_length=500,
        widget=forms.TextInput(attrs={"size": 40}),
    )


class QuotaForm(ReasonForm):
    new_quota = forms.IntegerField(
        label=_("Daily quota (tokens)"),
        required=False,
        min_value=0,
        max_value=MAX_EXPECTED_DAILY_TOKENS,
        help_text=_("Empty: the platform default."),
    )

    field_order = ["new_quota", "reason"]


class AccountSearchForm(forms.Form):
    q = forms.CharField(
        label=_("Email, phone number, key prefix or account id"),
        required=False,
        max_length=200,
    )
