from django import forms
from django.contrib import admin, messages
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext

from keys import services
from keys.models import ApiKey


class ApiKeyAdminForm(forms.ModelForm):
    class Meta:
        model = ApiKey
        fields = ["name", "is_active", "rate_limit_rpm", "rate_limit_tpm"]

    def clean(self):
        cleaned = super().clean()
        if "name" in self.changed_data and "name" in cleaned:
            cleaned["name"] = services.api_key_validate_name(
                user_id=self.instance.user_id, name=cleaned["name"], exclude_pk=self.instance.pk
            )
        return cleaned


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    """Staff see who owns a key and when it was used, and tune its rate limits.

    The digest and the encrypted copy are never shown. Keys are made by their owners (or by
    ``account_create``), never here, because only the services can produce key material.
    Every change goes through a service so that the authentication cache forgets the key.
    """

    form = ApiKeyAdminForm
    list_display = ["name", "user", "masked_key", "is_active", "last_used_at", "created_at"]
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
