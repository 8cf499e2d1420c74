from allauth.account.decorators import secure_admin_login
from django.contrib import admin, messages
from django.contrib.auth.admin import UserAdmin as DjangoUserAdmin
from django.contrib.auth.forms import UserChangeForm
from django.utils.translation import gettext_lazy as _

from accounts.forms import AdminAccountCreationForm
from accounts.models import User
from accounts.services import account_delete

# /admin/login/ would take passwords without any rate limit (150 wrong ones, then the right
# one worked). Signed-out visitors go to the sign-in page instead: by code, rate-limited, and
# with two-factor authentication when the account has it.
admin.site.login = secure_admin_login(admin.site.login)


class AccountChangeForm(UserChangeForm):
    class Meta(UserChangeForm.Meta):
        model = User
        fields = "__all__"


@admin.register(User)
class AccountAdmin(DjangoUserAdmin):
    """Accounts in the admin. "Add" goes through ``account_create`` (so the account gets its
    ``default`` key); closing an account is done from the Account page or ``account_delete``."""

    form = AccountChangeForm
    add_form = AdminAccountCreationForm
    list_display = ["__str__", "email", "phone", "region", "is_active", "is_staff", "date_joined"]
    list_filter = ["is_active", "is_staff", "is_superuser", "region", "date_joined"]
    # An API key's public prefix finds its owner (exact: the prefix column is unique).
    search_fields = ["email", "phone", "public_id", "=api_keys__prefix"]
    ordering = ["-date_joined"]
    # The quota is changed only through the audited quota service (usage: "Add quota change" or
    # `manage.py set_quota`), never edited here without a record of who and why.
    readonly_fields = ["public_id", "daily_quota", "date_joined", "last_login", "updated_at"]
    fieldsets = [
        (None, {"fields": ["public_id", "email", "phone", "phone_verified", "password"]}),
        (
            _("Profile"),
            {
                "fields": ["region", "language", "daily_quota"],
                "description": _(
                    "The daily quota is changed with “Add quota change” under Usage or the "
                    "set_quota command, so that every change is recorded with its reason."
                ),
            },
        ),
        (
            _("Permissions"),
            {"fields": ["is_active", "is_staff", "is_superuser", "groups", "user_permissions"]},
        ),
        (_("Dates"), {"fields": ["date_joined", "last_login", "updated_at"]}),
    ]
    add_fieldsets = [
        (
            None,
            {"classes": ["wide"], "fields": ["email", "phone", "region", "is_staff", "password"]},
        ),
    ]
    filter_horizontal = ["groups", "user_permissions"]
    actions = ["close_accounts"]

    def has_delete_permission(self, request, obj=None):
        # Usage records, rollups and quota history point at accounts: close, never delete.
        return False

    @admin.action(description=_("Close the selected accounts (keys disabled, history kept)"))
    def close_accounts(self, request, queryset):
        closed = 0
        for user in queryset.filter(is_active=True).exclude(pk=request.user.pk):
            account_delete(user=user)
            closed += 1
        self.message_user(
            request, _("%(count)d accounts closed.") % {"count": closed}, messages.SUCCESS
        )

    def save_model(self, request, obj, form, change):
        if not change:
            # AdminAccountCreationForm.save() already created it through account_create.
            return
        super().save_model(request, obj, form, change)
