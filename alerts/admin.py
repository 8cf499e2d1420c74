from django.contrib import admin

from alerts.models import Alert, AlertSettings


@admin.register(AlertSettings)
class AlertSettingsAdmin(admin.ModelAdmin):
    list_display = ["user", "thresholds", "key_thresholds", "webhook_url", "updated_at"]
    search_fields = ["user__email", "user__phone"]
    raw_id_fields = ["user"]
    # The signing secret is the owner's: never shown or edited here.
    exclude = ["webhook_secret_encrypted"]


@admin.register(Alert)
class AlertAdmin(admin.ModelAdmin):
    list_display = [
        "user",
        "api_key",
        "day",
        "threshold",
        "email_state",
        "sms_state",
        "webhook_state",
        "created_at",
    ]
    list_filter = ["day", "threshold", "email_state", "sms_state", "webhook_state"]
    search_fields = ["user__email", "user__phone"]
    raw_id_fields = ["user", "api_key"]
    readonly_fields = [f.name for f in Alert._meta.fields]

    def has_add_permission(self, request):
        return False
