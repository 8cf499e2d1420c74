from django.contrib import admin

from audit.models import SecurityEvent


@admin.register(SecurityEvent)
class SecurityEventAdmin(admin.ModelAdmin):
    """The security log, read-only: entries are written by the services that act."""

    list_display = ["created_at", "action", "user", "actor", "ip_address"]
    list_filter = ["action", "created_at"]
    search_fields = ["user__email", "user__phone", "actor__email", "ip_address"]
    date_hierarchy = "created_at"
    list_select_related = ["user", "actor"]
    readonly_fields = [
        "created_at",
        "action",
        "user",
        "actor",
        "ip_address",
        "user_agent",
        "detail",
    ]
    # Searching by account or address must not scan the whole table for a count.
    show_full_result_count = False

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
