"""Admin for quota and usage. Decisions and quota changes go through ``usage.services`` so
that every one is audited and notified; the ledger tables are read-only here.
"""

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.core.exceptions import ValidationError
from django.template.response import TemplateResponse
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext

from usage import services
from usage.models import (
    DailyRollup,
    DailyUsage,
    QuotaApplication,
    QuotaChange,
    QuotaReset,
    Reservation,
    UsageRecord,
)


class _ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


class RejectForm(forms.Form):
    reason = forms.CharField(
        label=_("Reason shown to the applicants"),
        widget=forms.Textarea(attrs={"rows": 3, "cols": 60}),
    )


@admin.register(QuotaApplication)
class QuotaApplicationAdmin(admin.ModelAdmin):
    list_display = [
        "user",
        "status",
        "expected_daily_tokens",
        "company",
        "created_at",
        "decided_at",
        "reviewer",
    ]
    list_filter = ["status", "created_at"]
    search_fields = ["user__email", "user__phone", "company", "contact", "public_id"]
    list_select_related = ["user", "reviewer"]
    ordering = ["status", "-created_at"]
    actions = ["approve_selected", "reject_selected"]
    readonly_fields = [
        "public_id",
        "user",
        "intended_use",
        "company",
        "expected_daily_tokens",
        "contact",
        "status",
        "reviewer",
        "review_reason",
        "created_at",
        "decided_at",
    ]

    def has_add_permission(self, request):
        return False  # applicants apply on the Usage page

    def has_delete_permission(self, request, obj=None):
        return False  # the history is part of the account's record

    @admin.action(description=_("Approve selected applications"), permissions=["change"])
    def approve_selected(self, request, queryset):
        done = 0
        for application in queryset.filter(status=QuotaApplication.Status.PENDING):
            try:
                services.quota_application_approve(application=application, reviewer=request.user)
            except ValidationError:
                continue  # decided by someone else meanwhile
            done += 1
        self._report(request, done, queryset.count(), _("approved"))

    @admin.action(description=_("Reject selected applications…"), permissions=["change"])
    def reject_selected(self, request, queryset):
        form = RejectForm(request.POST if "apply" in request.POST else None)
        if form.is_valid():
            done = 0
            for application in queryset.filter(status=QuotaApplication.Status.PENDING):
                try:
                    services.quota_application_reject(
                        application=application,
                        reviewer=request.user,
                        reason=form.cleaned_data["reason"],
                    )
                except ValidationError:
                    continue
                done += 1
            self._report(request, done, queryset.count(), _("rejected"))
            return None
        # An intermediate page: a rejection is not allowed without a reason.
        return TemplateResponse(
            request,
            "admin/usage/reject_applications.html",
            {
                **self.admin_site.each_context(request),
                "title": _("Reject applications"),
                "opts": self.model._meta,
                "applications": queryset.select_related("user"),
                "form": form,
                "action_checkbox_name": ACTION_CHECKBOX_NAME,
            },
        )

    def _report(self, request, done, selected, verb):
        message = ngettext(
            "%(done)d application %(verb)s.", "%(done)d applications %(verb)s.", done
        ) % {"done": done, "verb": verb}
        if done < selected:
            message += " " + str(_("The others were not pending."))
        self.message_user(request, message, messages.SUCCESS if done else messages.WARNING)


class QuotaChangeForm(forms.ModelForm):
    new_quota = forms.IntegerField(
        label=_("New daily quota (tokens)"),
        required=False,
        min_value=0,
        help_text=_("Leave empty to return the account to the platform default."),
    )

    class Meta:
        model = QuotaChange
        fields = ["user", "new_quota", "reason"]

    def clean(self):
        data = super().clean()
        user = data.get("user")
        if user is not None and user.daily_quota == data.get("new_quota"):
            raise ValidationError(_("The account already has this quota."))
        return data


@admin.register(QuotaChange)
class QuotaChangeAdmin(admin.ModelAdmin):
    """The audit trail, and the place where staff set a custom quota ("add quota change")."""

    form = QuotaChangeForm
    list_display = ["user", "old_quota", "new_quota", "actor", "created_at", "reason"]
    list_select_related = ["user", "actor"]
    search_fields = ["user__email", "user__phone", "reason"]
    raw_id_fields = ["user"]
    date_hierarchy = "created_at"

    def has_change_permission(self, request, obj=None):
        return obj is None and super().has_change_permission(request, obj)

    def has_delete_permission(self, request, obj=None):
        return False

    def get_readonly_fields(self, request, obj=None):
        if obj is not None:
            return ["user", "old_quota", "new_quota", "reason", "actor", "created_at"]
        return []

    def save_model(self, request, obj, form, change):
        change_row = services.quota_set(
            user=form.cleaned_data["user"],
            new_quota=form.cleaned_data["new_quota"],
            reason=form.cleaned_data["reason"],
            actor=request.user,
        )
        # The service wrote the audit row; the admin's log and redirect point at it.
        obj.pk = change_row.pk
        obj.old_quota = change_row.old_quota
        obj.created_at = change_row.created_at


@admin.register(QuotaReset)
class QuotaResetAdmin(_ReadOnlyAdmin):
    list_display = [
        "day",
        "days_closed",
        "started_at",
        "finished_at",
        "reservations_released",
        "tokens_released",
        "rollups_written",
        "records_pruned",
    ]


@admin.register(DailyUsage)
class DailyUsageAdmin(_ReadOnlyAdmin):
    list_display = [
        "user",
        "day",
        "input_tokens",
        "output_tokens",
        "reserved_tokens",
        "requests",
        "updated_at",
    ]
    list_select_related = ["user"]
    search_fields = ["user__email", "user__phone"]
    date_hierarchy = "day"
    show_full_result_count = False


@admin.register(Reservation)
class ReservationAdmin(_ReadOnlyAdmin):
    list_display = ["user", "day", "tokens", "created_at"]
    list_select_related = ["user"]


@admin.register(DailyRollup)
class DailyRollupAdmin(_ReadOnlyAdmin):
    list_display = [
        "user",
        "day",
        "key_name",
        "model",
        "requests",
        "errors",
        "input_tokens",
        "output_tokens",
    ]
    list_select_related = ["user"]
    search_fields = ["user__email", "user__phone", "key_name", "model"]
    show_full_result_count = False


@admin.register(UsageRecord)
class UsageRecordAdmin(_ReadOnlyAdmin):
    list_display = [
        "created_at",
        "user",
        "key_name",
        "model",
        "endpoint",
        "stream",
        "input_tokens",
        "output_tokens",
        "status_code",
        "latency_ms",
    ]
    list_select_related = ["user"]
    search_fields = ["user__email", "user__phone", "public_id"]
    show_full_result_count = False
