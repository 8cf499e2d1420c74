from django import forms
from django.contrib import admin, messages
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext

from keys import services
from keys.controls import split_list
from keys.models import ApiKey, ApiKeyChange


class _ListField(forms.CharField):
    """A list edited as text, one entry per line (the JSON widget would ask staff for JSON)."""

    widget = forms.Textarea(attrs={"rows": 3})

    def prepare_value(self, value):
        return "\n".join(value) if isinstance(value, list) else value

    def to_python(self, value):
        return split_list(super().to_python(value) or "")

    def has_changed(self, initial, data):
        return list(initial or []) != self.to_python(data)


class ApiKeyAdminForm(forms.ModelForm):
    allowed_models = _ListField(
        required=False, label=_("allowed models"), help_text=_("One per line; empty: all.")
    )
    allowed_ips = _ListField(
        required=False,
        label=_("allowed IP addresses"),
        help_text=_("Addresses or CIDR ranges, one per line; empty: any."),
    )

    class Meta:
        model = ApiKey
        fields = [
            "name",
            "is_active",
            "rate_limit_rpm",
            "rate_limit_tpm",
            *services.CONTROL_FIELDS,
        ]

    def clean(self):
        cleaned = super().clean()
        if "name" in self.changed_data and "name" in cleaned:
            cleaned["name"] = services.api_key_validate_name(
                user_id=self.instance.user_id, name=cleaned["name"], exclude_pk=self.instance.pk
            )
        controls = {
            field: cleaned[field]
            for field in services.CONTROL_FIELDS
            if field in self.changed_data and field in cleaned
        }
        if controls:
            # The service's own rules, so the error lands on the field instead of a 500.
            cleaned.update(services.api_key_validate_controls(api_key=self.instance, **controls))
        return cleaned


class ApiKeyChangeInline(admin.TabularInline):
    """Who changed the key's limits, when, from what to what (read only)."""

    model = ApiKeyChange
    fields = ["created_at", "actor", "before", "after"]
    readonly_fields = fields
    extra = 0
    can_delete = False
    ordering = ["-created_at", "-id"]

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    """Staff see who owns a key and when it was used, and tune its rate limits.

    The digest and the encrypted copy are never shown. Keys are made by their owners (or by
    ``account_create``), never here, because only the services can produce key material.
    Every change goes through a service so that the authentication cache forgets the key;
    changes of its limits are listed below the form (``ApiKeyChange``).
    """

    form = ApiKeyAdminForm
    inlines = [ApiKeyChangeInline]
    list_display = [
        "name",
        "user",
        "masked_key",
        "is_active",
        "expires_at",
        "daily_token_cap",
        "last_used_at",
        "created_at",
    ]
    list_filter = ["is_active"]
    list_select_related = ["user"]
    search_fields = ["name", "prefix", "user__email", "user__phone"]
    ordering = ["-created_at"]
    fields = [
        "user",
        "name",
        "masked_key",
        "public_id",
        "is_active",
        "rate_limit_rpm",
        "rate_limit_tpm",
        *services.CONTROL_FIELDS,
        "created_at",
        "updated_at",
        "last_used_at",
    ]
    readonly_fields = [
        "user",
        "masked_key",
        "public_id",
        "created_at",
        "updated_at",
        "last_used_at",
    ]
    actions = ["disable_keys", "enable_keys"]

    @admin.display(description=_("key"), ordering="prefix")
    def masked_key(self, obj):
        return obj.masked

    def has_add_permission(self, request):
        return False

    def save_model(self, request, obj, form, change):
        changed = set(form.changed_data)
        # Re-read the stored row: the services compare against it and save their own fields.
        stored = ApiKey.objects.get(pk=obj.pk)
        if "name" in changed:
            services.api_key_rename(api_key=stored, name=obj.name)
        if "is_active" in changed:
            services.api_key_set_active(api_key=stored, is_active=obj.is_active)
        if changed & {"rate_limit_rpm", "rate_limit_tpm"}:
            services.api_key_set_rate_limits(
                api_key=stored,
                rate_limit_rpm=obj.rate_limit_rpm,
                rate_limit_tpm=obj.rate_limit_tpm,
            )
        controls = {field: getattr(obj, field) for field in services.CONTROL_FIELDS}
        if changed & set(controls):
            services.api_key_set_controls(api_key=stored, actor=request.user, **controls)

    def delete_model(self, request, obj):
        services.api_key_delete(api_key=obj)

    def delete_queryset(self, request, queryset):
        for key in queryset:
            services.api_key_delete(api_key=key)

    @admin.action(description=_("Disable the selected keys"), permissions=["change"])
    def disable_keys(self, request, queryset):
        self._set_active(request, queryset, is_active=False)

    @admin.action(description=_("Enable the selected keys"), permissions=["change"])
    def enable_keys(self, request, queryset):
        self._set_active(request, queryset, is_active=True)

    def _set_active(self, request, queryset, *, is_active):
        count = 0
        for key in queryset.exclude(is_active=is_active):
            services.api_key_set_active(api_key=key, is_active=is_active)
            count += 1
        if is_active:
            text = ngettext("%(count)d key enabled.", "%(count)d keys enabled.", count)
        else:
            text = ngettext("%(count)d key disabled.", "%(count)d keys disabled.", count)
        self.message_user(request, text % {"count": count}, messages.SUCCESS)
