from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class AccountsConfig(AppConfig):
    name = "accounts"
    verbose_name = _("Accounts")

    def ready(self):
        from accounts import (
            checks,  # noqa: F401  (registers the system checks)
            mfa,  # noqa: F401  (records 2FA changes in the security log)
        )
