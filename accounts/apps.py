from django.apps import AppConfig


class AccountsConfig(AppConfig):
    name = "accounts"

    def ready(self):
        from accounts import (
            checks,  # noqa: F401  (registers the system checks)
            mfa,  # noqa: F401  (records 2FA changes in the security log)
        )
